"""How often a policy refuses harmful requests when it samples: the base rate that PPO on the
cost alone (PPO-S) has to learn refusals from.

PPO reinforces what the policy samples. If a policy almost never answers a harmful request with a
refusal, a cost model that rates refusals best gives PPO-S nothing to reinforce, and it moves to
whatever cheap answers it does sample (the README's smol reading). This samples answers to AdvBench's
harmful requests (`safety/advbench_harmful_behaviors.csv` of the shared data layout; training
data of the smol cost model, never an evaluation set) with the smol preset's generation settings
and counts the refusals of evals/refusal.py's detector, once per temperature.

Run:  python -m evals.refusal_rate --policy cache/smol/policy --data FOLDER
          [--requests 40] [--samples 3] [--temperatures 0.7,1.0] [--out rate.json]
Left out on purpose: other request sets (any prompt file would do; AdvBench's are explicit), and
judging how harmful the non-refusals are (the cost model's job).
"""
import argparse
import json
import sys

import torch

from evals.heldout import sample
from evals.refusal import is_refusal
from formats.models import load_tokenizer
from model import load_policy
from worlds.presets import PRESETS
from worlds.safety_data import advbench, present

SMOL = PRESETS["smol"]


def refusal_rate(policy, tokenizer, requests, samples, temperature, seed=0):
    """{"temperature", "n", "refusals", "rate", "examples": the first three refusals} of
    len(requests) * samples sampled answers (the smol preset's lengths and repetition penalty)."""
    generation = (SMOL["max_prompt_length"], SMOL["max_new_tokens"], temperature, 1.0,
                  SMOL["repetition_penalty"])
    raw, responses = sample(policy, tokenizer, requests, generation, samples, seed=seed)
    refused = [(p, r) for p, r in zip(raw, responses) if is_refusal(r)]
    return {"temperature": temperature, "n": len(responses), "refusals": len(refused),
            "rate": len(refused) / len(responses),
            "examples": [{"request": p, "answer": r} for p, r in refused[:3]]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", required=True, help="policy folder or Hub id")
    ap.add_argument("--data", required=True, help="folder with safety/ (the shared data layout)")
    ap.add_argument("--requests", type=int, default=40, help="AdvBench's last N requests")
    ap.add_argument("--samples", type=int, default=3, help="answers sampled per request")
    ap.add_argument("--temperatures", default="0.7,1.0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num_threads", type=int, default=1)
    ap.add_argument("--out", default="", help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    try:
        temperatures = [float(t) for t in args.temperatures.split(",")]
        if not present(args.data, ["advbench"]):
            raise FileNotFoundError(f"{args.data} has no safety/advbench_harmful_behaviors.csv; "
                                    f"pass the shared data folder as --data.")
        if args.requests < 1 or args.samples < 1:
            raise ValueError("--requests and --samples must be at least 1.")
        requests = [a.prompt for a in advbench(args.data, chars=1)][-args.requests:]
        tokenizer = load_tokenizer(args.policy, padding_side="left")
        policy = load_policy(args.policy, "cpu", torch.bfloat16, master=False).eval()
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    rates = [refusal_rate(policy, tokenizer, requests, args.samples, t, args.seed)
             for t in temperatures]
    for r in rates:
        print(f"temperature {r['temperature']:g}: {r['refusals']} of {r['n']} answers to "
              f"{len(requests)} AdvBench requests are refusals ({r['rate']:.1%})")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rates, f, indent=1)
    return rates


if __name__ == "__main__":
    main()
