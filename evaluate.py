"""Evaluate checkpoints: sample on held-out prompts, score, print Table 1, draw the Pareto front.

    python evaluate.py                          # every run under runs/, plus the SFT baseline
    python evaluate.py runs/gapo-p2-s0 runs/ppo-h-s0 --limit 40
    python evaluate.py runs/study --soup auto   # every run in runs/study, + Rewarded Soups
    python evaluate.py RUNS... --soup runs/ppo-h-s0 runs/ppo-s-s0 --soup_lambdas 0.2,0.4,0.6,0.8
    python evaluate.py runs/my-run --prompts PKU-Alignment/PKU-SafeRLHF --prompt_split test
    python evaluate.py runs/smol                # smol runs: the real prompt sets, refusals
    python evaluate.py runs/smol --judge gpt-4o --judge_url https://api.openai.com/v1

The paper's Sec. 4.2 and Table 1 (docs/decisions.md, "Evaluation"). Each run's train_config.json
gives the models and generation settings; prompts are the toy world's test prompts for toy runs,
else the run's source with --prompt_split (or --prompts); sampling uses a fixed seed per batch, so
every checkpoint sees the same noise. Helpful = mean reward, Harmless = mean -cost, Avg = their
mean, Harmless ratio = share with cost <= 0. On the toy world the ground truth (toytext.judge)
stands beside the learned scores: harmful compliance, over-refusal, truly safe share and how often
the cost's sign agrees with it, so reward hacking shows as a gap. Runs that differ only by seed are
one row, mean ± sample std. Generations and scores are cached per checkpoint in <out>/cache/ (keyed
by the checkpoint's files and time stamps, scorers, prompts, limit, seed, generation settings).
Writes <out>/table.csv, runs.csv, results.json and pareto.png.

Runs trained on an --objective list (K >= 2 objectives) are scored with those objectives, rebuilt
from train_config.json (scorers in the run's scorer_format, py: functions imported from the
current folder), the SFT row too: one column per objective under its name (mean of sign x score),
Avg = the mean of the K, and a "<name> ratio" column (share with score <= 0) for each cost model
(a scorer with sign -1; a py: rule gets none). Runs evaluated together must share their objective
names and order (else one sentence and exit 1). At K > 2 the front and hypervolume are
K-dimensional and pareto.png holds one panel per pair of objectives (evals/objectives.py,
evals/pareto.py). Runs without a list keep the table above, number for number.

Smol runs (or any run with --eval_sets) are evaluated on the real prompt sets instead (evals/:
red-team, AlpacaEval, XSTest; --limit applies per set): the learned scores over all of them, plus
over-refusal, compliance, length and empty answers (evals/chat.py), and samples.md with a few
answers of every model. --judge MODEL --judge_url URL adds the paper's pairwise judgement against
the SFT model (evals/judging.py; --judge_dry_run counts the calls and tokens first): judge.json,
judge.csv, judge.png.

This file generates, scores, caches and prints; the rest is in evals/: which runs and which rows
(targets.py), what each run is scored with (objectives.py), Table 1's numbers and outputs
(tables.py), the front, its hypervolume and plot (pareto.py), Rewarded Soups (soups.py), the
judge (judging.py). Left out on purpose: the critic.
"""
import argparse
import hashlib
import json
import os
import sys
import textwrap
import time
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError

from evals.judging import judge_runs
from evals.objectives import (check_same_objectives, describe_columns, fingerprint, listed,
                              load_objectives, load_scorers, objective_identity, row_metrics,
                              table_columns)
from evals.pareto import HV_RULE, front_and_volumes, format_front, save_plot
from evals.soups import parse_lambdas, plan_soups, soup_loader, soup_state_dict
from evals.tables import (DEFAULT_COLUMNS, GEN_FIELDS, TOY_METRICS, WIDTH, aggregate,
                          format_table, run_label, sort_key, toy_metrics, write_outputs)
from evals.targets import ensure_toy_models, find_targets, label_targets, sft_targets


# --------------------------------------------------------------------- generation, scoring, caching

@dataclass
class Context:
    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype
    # scorers and prompt sets, loaded once for all checkpoints
    cache: dict = field(default_factory=dict)
    # Table 1's objective columns (evals/objectives.table_columns): the paper's two by default
    columns: object = DEFAULT_COLUMNS


def eval_sets(ctx, cfg):
    """(folder, set names) when the run is evaluated on the real prompt sets (evals/), else None:
    smol runs by default, any run with --eval_sets; --judge_sets' .jsonl files are added (a run
    is then evaluated on them too, so the judge has answers to compare)."""
    a = ctx.args
    judge_files = [n for n in (a.judge_sets_parsed or {}) if n.endswith(".jsonl")]
    smol = cfg.get("preset") == "smol" and not a.prompts
    if not (a.eval_sets or judge_files or smol):
        return None
    from evals.prompt_sets import STANDARD_SETS
    names = ([n for n in a.eval_sets.split(",") if n] if a.eval_sets
             else list(STANDARD_SETS) if smol else [])
    names += [n for n in judge_files if n not in names]
    from worlds.smol import eval_folder
    return a.eval_data or eval_folder(cfg.get("smol_data") or "data"), names


def prompt_set(ctx, cfg):
    """(name, raw prompts, kind) of a run's evaluation set, kind "toy", "sets" (the real prompt
    sets; their EvalPrompt rows are in ctx.cache["rows", name]) or "". The toy world's test
    prompts interleave benign and harmful ones, so --limit keeps both classes; --limit applies
    to each real set."""
    a = ctx.args
    sets = eval_sets(ctx, cfg)
    if sets:
        key = ("sets", sets[0], *sets[1], a.limit)
        if key not in ctx.cache:
            from evals.prompt_sets import load_eval_sets
            rows = load_eval_sets(*sets, limit=a.limit)
            name = f"{', '.join(sets[1])} ({sets[0]})"
            ctx.cache["rows", name] = rows
            ctx.cache[key] = (name, [r.prompt for r in rows], "sets")
        return ctx.cache[key]
    source = a.prompts or (cfg.get("prompts") or "toy")
    if not a.prompts and source != "toy" and os.path.isfile(source):
        raise ValueError(f"the run trained on the file {source}, which has no held-out split; "
                         f"pass --prompts.")
    key = ("prompts", source, a.prompt_split, a.limit)
    if key not in ctx.cache:
        if source == "toy":
            from evals.heldout import toy_test_prompts
            prompts, name = toy_test_prompts(a.limit), "toy world test prompts"
        else:
            from data import load_prompts
            prompts = load_prompts(source, split=a.prompt_split, limit=a.limit)
            name = source if os.path.isfile(source) else f"{source} ({a.prompt_split})"
        if not prompts:
            raise ValueError(f"the prompt set {source} is empty; give --prompts a file or data set "
                             f"with prompts.")
        ctx.cache[key] = (name, prompts, "toy" if source == "toy" else "")
    return ctx.cache[key]


def load_eval_policy(cfg, checkpoint, ctx, merged=False):
    """(policy in eval mode, tokenizer): the checkpoint's policy (or the SFT start).

    A LoRA checkpoint is evaluated UNMERGED, as training ran it: bf16 base plus float32 adapters.
    Merging into a bf16 base rounds W + s B A back to bf16 and loses the small updates
    (docs/decisions.md). merged=True (soups, which interpolate whole weights): float32 weights,
    LoRA merged in float32, computing in ctx.dtype under autocast (model.master_weights), so the
    interpolation is not rounded either."""
    from formats.models import load_tokenizer, peft_call
    from model import load_policy
    path = os.path.join(checkpoint, "policy") if checkpoint else cfg["policy"]
    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        from peft import PeftModel
        base = load_policy(cfg["policy"], ctx.device, ctx.dtype, master=merged)
        policy = peft_call(PeftModel.from_pretrained, base, path)
        policy = policy.merge_and_unload() if merged else policy
    else:
        policy = load_policy(path, ctx.device, ctx.dtype, master=merged)
    tokenizer = load_tokenizer(path if os.path.isfile(os.path.join(path, "tokenizer_config.json"))
                               else cfg["policy"])
    return policy.eval().requires_grad_(False), tokenizer


def sample_and_score(ctx, policy, tokenizer, cfg, prompts, desc):
    """Responses for every prompt x samples (batched, seeded per batch), their reward and cost
    (evals/heldout.py, which train.py's --eval_every shares), or, for a run trained on an
    --objective list, each objective's sign x score (evals/objectives.py)."""
    from tqdm import tqdm
    from evals import heldout
    a = ctx.args
    # loaded before sampling, so a missing scorer fails fast
    scorers = (load_objectives(cfg, ctx.device, ctx.dtype, ctx.cache) if listed(cfg)
               else load_scorers(cfg, ctx.device, ctx.dtype, ctx.cache))
    bar = lambda batches: tqdm(batches, desc=desc, leave=False, disable=None)
    raw, responses = heldout.sample(policy, tokenizer, prompts, [cfg[k] for k in GEN_FIELDS],
                                    a.samples_per_prompt, a.batch_size, a.seed, progress=bar)
    score = heldout.score_objectives if listed(cfg) else heldout.score
    return {"prompts": raw, "responses": responses,
            **score(scorers, raw, responses, a.batch_size)}


def evaluate_targets(ctx, targets, loader):
    """Rows for targets sharing one loader (the SFT, a run, or the lambdas of one soup), from the
    cache when it has them; loader(target) -> (policy, tokenizer[, sd_h, sd_s]) runs only when
    something is missing."""
    rows, loaded, a = [], None, ctx.args
    for t in targets:
        name, prompts, kind = prompt_set(ctx, t.config)
        checkpoints = [t.checkpoint] if t.checkpoint else list(t.soup)  # none for the SFT start
        ident = {"models": [fingerprint(p) for c in checkpoints
                            for p in (c, os.path.join(c, "policy"))]
                 or fingerprint(t.config["policy"]), "lam": t.lam,
                 "prompts": [name, a.limit, len(prompts)],
                 "scorers": (objective_identity(t.config) if listed(t.config)
                             else fingerprint(t.config["reward_model"])
                             + fingerprint(t.config["cost_model"])),
                 "sampling": [a.seed, a.samples_per_prompt, a.batch_size, str(ctx.dtype)]
                 + [t.config[k] for k in GEN_FIELDS]}
        key = hashlib.sha256(json.dumps(ident, default=str).encode()).hexdigest()[:20]
        path = os.path.join(a.out, "cache", key + ".json")
        if os.path.isfile(path):
            with open(path) as f:
                result = json.load(f)
            print(f"{t.name}: cached ({path})")
        else:
            t0 = time.time()
            loaded = loaded or loader(t)
            if t.soup:
                loaded[0].load_state_dict(soup_state_dict(loaded[2], loaded[3], t.lam))
            result = sample_and_score(ctx, loaded[0], loaded[1], t.config, prompts,
                                      desc=t.name) | {"identity": ident}
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump(result, f)
            os.replace(path + ".tmp", path)  # a crash never leaves half a cache file
            print(f"{t.name}: {len(result['responses'])} responses generated and scored in "
                  f"{time.time() - t0:.1f} s")
        family, _, lam = run_label(t.config)
        numbers, cost = row_metrics(result, t.config)  # evals/objectives.py
        if kind == "sets":  # the real sets: refusal metrics per set (evals/chat.py)
            from evals.chat import set_metrics
            rows_of = ctx.cache["rows", name] * a.samples_per_prompt
            extra = set_metrics(rows_of, result["responses"])
        else:
            extra = (toy_metrics(result["prompts"], result["responses"], cost)
                     if kind == "toy" else {})
        rows.append({"name": t.name, "group": t.group, "family": family, "lam": lam,
                     "seed": t.config.get("seed"), "prompts": name, "n_prompts": len(prompts),
                     "n_responses": len(result["responses"]), "cache": path, "sft": t.sft,
                     **numbers, **extra})
    return rows


# ----------------------------------------------------------------------------- outputs

def write_chat_samples(ctx, per_run, path):
    """samples.md: a few prompts of every real set, the SFT answer first, then each run's."""
    from evals.chat import write_samples
    from evals.judging import cached_answers
    rows = sorted(per_run, key=lambda r: (r["sft"] != "", r["name"]))  # SFT rows first
    answers = {r["name"]: dict(zip(*cached_answers(r))) for r in rows}
    write_samples(path, ctx.cache["rows", rows[0]["prompts"]], answers, ctx.args.samples)
    print(f"wrote {path} (sample answers of every model)")


# ----------------------------------------------------------------------------- main

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = ap.add_argument
    add("runs", nargs="*",
        help="run folders or checkpoint folders (default: every run under runs/)")
    add("--prompts", default="",
        help="'toy', a Hub data set or a .json/.jsonl file (default: the run's own source)")
    add("--prompt_split", default="test")
    add("--limit", type=int, default=None, help="evaluate on the first N prompts only")
    add("--samples_per_prompt", type=int, default=None,
        help="default 4 on the toy world, 1 otherwise")
    add("--seed", type=int, default=0, help="sampling seed, the same for every checkpoint")
    add("--batch_size", type=int, default=32)
    add("--out", default=None, help="folder for the table, plot and cache (default: eval/ in the "
        "folder that holds every run evaluated, e.g. runs/study/eval for runs/study/*)")
    add("--soup", nargs="+", action="append", default=[], metavar="RUN",
        help="PPO_H_RUN PPO_S_RUN (repeatable), or 'auto': pair the given PPO-H and PPO-S runs "
        "by seed")
    add("--soup_lambdas", default="0.2,0.4,0.6,0.8")
    add("--eval_sets", default="",
        help="comma-separated real prompt sets: redteam, alpaca, xstest-safe, xstest-unsafe or "
        ".jsonl files (default: all four for smol runs, none for others)")
    add("--eval_data", default="",
        help="folder holding the real prompt sets' files (default: <the run's smol_data>/eval, "
        "else data/eval)")
    add("--samples", type=int, default=2, help="prompts per real set shown in samples.md")
    add("--judge", default="", metavar="MODEL",
        help="judge model name: compare each run's answers with its SFT model's (evals/judge.py)")
    add("--judge_url", default="https://api.openai.com/v1",
        help="OpenAI-compatible base URL of the judge; key from $OPENAI_API_KEY")
    add("--judge_sets", default="alpaca=helpfulness,redteam=harmlessness",
        help="SET=CRITERION pairs; a SET may be a .jsonl file of prompts")
    add("--judge_dry_run", action="store_true",
        help="print the judge calls and tokens still needed, send none")
    add("--judge_workers", type=int, default=4, help="judge requests in flight at once")
    add("--judge_max_tokens", type=int, default=512, help="cap on each judge reply")
    add("--device", default="auto")
    add("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16")
    add("--num_threads", type=int, default=1,
        help="CPU threads for torch (0 = torch's default); as train.py: tiny "
        "models run fastest on one")
    args = ap.parse_args(argv)
    if any(s != ["auto"] and len(s) != 2 for s in args.soup):
        ap.error("--soup takes two runs (PPO-H then PPO-S) or the word auto.")
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be a positive number of prompts.")
    if args.samples_per_prompt is not None and args.samples_per_prompt < 1:
        ap.error(f"--samples_per_prompt must be 1 or more (got {args.samples_per_prompt}).")
    if args.batch_size < 1:
        ap.error(f"--batch_size must be 1 or more (got {args.batch_size}).")
    if args.num_threads < 0:
        ap.error(f"--num_threads must be 0 or more (got {args.num_threads}).")
    for flag in ("samples", "judge_workers", "judge_max_tokens"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be 1 or more (got {getattr(args, flag)}).")
    if args.judge_dry_run and not args.judge:
        ap.error("--judge_dry_run needs --judge MODEL (and --judge_url) to know what it counts.")
    from evals.prompt_sets import STANDARD_SETS
    unknown = [n for n in args.eval_sets.split(",") if n and n not in STANDARD_SETS
               and not n.endswith(".jsonl")]
    if unknown:
        ap.error(f"--eval_sets: unknown set {unknown[0]!r}; use {', '.join(STANDARD_SETS)} or "
                 f".jsonl files.")
    if args.eval_data and not os.path.isdir(args.eval_data):
        ap.error(f"--eval_data {args.eval_data} is not a folder; give the folder holding the "
                 f"evaluation sets' files.")
    args.judge_sets_parsed = {}
    if args.judge:
        from evals.chat import parse_judge_sets
        try:
            args.judge_sets_parsed = parse_judge_sets(args.judge_sets)
        except ValueError as err:
            ap.error(str(err))
    if parse_lambdas(args.soup_lambdas) is None:
        ap.error(f"--soup_lambdas must be numbers in [0, 1] such as 0.2,0.4,0.6,0.8 "
                 f"(got {args.soup_lambdas!r}).")
    import cli  # the same device and dtype rules as train.py
    try:
        cli.check_device(argparse.Namespace(device=args.device, dtype=args.dtype))
    except ValueError as err:
        ap.error(str(err))
    return args


def plan_jobs(args, ctx, fail):
    """[(targets, loader)]: the SFT baselines (one per distinct start x scorers x prompts x
    generation settings), the runs, and the soups (all lambdas of one pair share a loader)."""
    targets = find_targets(args.runs, fail)
    soups = []
    try:
        soups = plan_soups(args.soup, args.soup_lambdas, targets)
    except (ValueError, FileNotFoundError) as err:
        fail("--soup", err)
    everything = targets + [t for s in soups for t in s]
    try:  # one table: the same objective columns for every run (evals/objectives.py)
        check_same_objectives(everything)
        ctx.columns = table_columns([t.config for t in everything])
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    for t in list(targets):
        try:
            ensure_toy_models(t.config, t.name)
        except (ValueError, OSError) as err:
            fail(t.name, err)
            targets.remove(t)
    if not targets:
        raise SystemExit("error: nothing to evaluate: no valid run or checkpoint was given.")
    if args.out is None:  # one rule: eval/ beside the runs, in the folder that holds them all
        runs = [os.path.dirname(t.checkpoint) for t in targets]  # RUN/checkpoint[-N] -> RUN
        common = os.path.commonpath([os.path.dirname(os.path.abspath(r)) for r in runs])
        # runs in unrelated trees share only the root: their outputs go to runs/eval here
        out = os.path.join(common, "eval") if os.path.dirname(common) != common else "runs/eval"
        args.out = out if os.path.relpath(out).startswith("..") else os.path.relpath(out)
        print(f"outputs go to {args.out} (eval/ in the folder holding the runs; --out to choose)")
    sft = sft_targets(targets + [t for s in soups for t in s])
    if args.samples_per_prompt is None:
        toy = not args.eval_sets and all((args.prompts or t.config.get("prompts") or "toy")
                                         == "toy" for t in targets)
        args.samples_per_prompt = 4 if toy else 1  # the toy test set is small (40 prompts)
    jobs = [([t], lambda t: load_eval_policy(t.config, "", ctx)) for t in sft]
    jobs += [([t], lambda t: load_eval_policy(t.config, t.checkpoint, ctx)) for t in targets]
    merged = lambda cfg, checkpoint: load_eval_policy(cfg, checkpoint, ctx, merged=True)
    return jobs + [(s, soup_loader(merged)) for s in soups]


def main(argv=None):
    args = parse_args(argv)
    from formats.models import default_dtype, pick_device
    device = pick_device() if args.device == "auto" else torch.device(args.device)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    ctx = Context(args, device,
                  default_dtype(device) if args.dtype == "auto" else getattr(torch, args.dtype))
    failed = []

    def fail(what, err):
        print(f"error: {what}: {err}", file=sys.stderr)
        failed.append(what)

    try:
        jobs = plan_jobs(args, ctx, fail)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}")
    jobs, notes = label_targets(jobs)
    for note in notes:
        print(textwrap.fill("note: " + note, WIDTH, subsequent_indent="  "))
    per_run = []
    for group, loader in jobs:
        try:
            per_run += evaluate_targets(ctx, group, loader)
        except (ValueError, OSError, KeyError, RuntimeError, SafetensorError) as err:
            fail(group[0].name if len(group) == 1
                 else group[0].name.split(" (")[-1].rstrip(")"), err)
    if not per_run:
        raise SystemExit("error: no checkpoint could be evaluated (see the errors above).")
    toy = all(TOY_METRICS[0] in r for r in per_run)
    chat = not toy and all("words" in r for r in per_run)  # the real prompt sets (evals/chat.py)
    from evals.chat import CHAT_METRICS
    extra = TOY_METRICS if toy else (CHAT_METRICS if chat else [])
    columns = ctx.columns
    paper = columns == DEFAULT_COLUMNS  # no run with an --objective list: the paper's two
    agg = sorted(aggregate(per_run, columns.metrics + extra), key=sort_key)
    ref, front, volumes = front_and_volumes(agg, columns.names)
    sets = sorted({r["prompts"] for r in per_run})
    counts = sorted({(r["n_prompts"], r["n_responses"]) for r in per_run})
    scored = "; ".join(f"{p} prompts x {n // p} samples = {n} responses" for p, n in counts)
    what = ("Helpful = mean reward, Harmless = mean -cost, Avg = their mean, Harmless ratio = "
            "share with cost <= 0" if paper else describe_columns(
                next(t.config for g, _ in jobs for t in g if listed(t.config)), columns))
    header = (f"Evaluated on {', '.join(sets)}: {scored} per run (seeds = runs averaged in a row), "
              f"sampling seed {args.seed}. {what}; ± = sample std over seeds.")
    print("\n" + textwrap.fill(header, WIDTH) + "\n\n" + format_table(agg, toy, chat, columns)
          + "\n")
    print(format_front(ref, front, volumes, columns.titles))
    os.makedirs(args.out, exist_ok=True)
    write_outputs(args.out, per_run, agg, {
        "header": header, "toy": toy, "chat": chat, "prompt_sets": sets, "seed": args.seed,
        "samples_per_prompt": args.samples_per_prompt, "pareto_front": front,
        "hypervolume": volumes, "hypervolume_reference": ref,
        "hypervolume_reference_rule": HV_RULE, "failed": failed, "notes": notes}
        | ({} if paper else {"objectives": list(columns.names)}), columns)
    save_plot(agg, os.path.join(args.out, "pareto.png"), ref, volumes, columns.names,
              None if paper else columns.titles)
    print(f"wrote {args.out}/table.csv, runs.csv, results.json, pareto.png (every column and "
          f"std; the cached responses are in {args.out}/cache/)")
    if chat:
        write_chat_samples(ctx, per_run, os.path.join(args.out, "samples.md"))
    if args.judge:
        try:
            judge_runs(ctx, per_run)
        except (OSError, ValueError) as err:
            fail("--judge", err)
    if failed:
        print(f"{len(failed)} input(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
