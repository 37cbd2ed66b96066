"""evaluate.py --judge: the paper's pairwise judgement of every run against its SFT model.

Paper Sec. 4.2 (GPT-4o on AlpacaEval helpful-base prompts for helpfulness, Safe RLHF red-team
prompts for harmlessness). This file only wires evaluate.py's answers into evals/judge.py: the
answers each row cached (same prompts, same sampling seed for the run and its SFT model) become
(prompt, run answer, SFT answer) triples per run and criterion of --judge_sets
(evals/chat.judge_groups); the dry run's plan is printed; then evals/judge.py judges both orders,
caches every call under <out>/cache/judge, and writes judge.json, judge.csv and judge.png; the
summaries are added to results.json beside the table.

Run: python evaluate.py runs/smol --judge MODEL --judge_url URL [--judge_dry_run];
tests/test_evaluate_chat.py checks it against small in-process judges and a real llama.cpp server.
Left out on purpose: the protocol itself (evals/judge.py, evals/judge_client.py).
"""
import json
import os


def cached_answers(row):
    """(prompts, responses) of an evaluated row, from its cache file."""
    with open(row["cache"]) as f:
        result = json.load(f)
    return result["prompts"], result["responses"]


def judge_runs(ctx, per_run):
    """The paper's pairwise judgement (evals/judge.py) of every run against its SFT model on the
    --judge_sets, from the answers just evaluated; writes judge.json, judge.csv, judge.png and
    adds the summaries to results.json. ctx: evaluate.py's Context (args, and the real sets' rows
    in ctx.cache["rows", name]). Returns the summaries, or None for a dry run."""
    from evals.chat import judge_groups
    from evals.judge import format_plan, judge_and_write, plan_calls
    from evals.judge_client import JudgeClient, JudgeError
    from evals.prompt_sets import custom_set_name
    a = ctx.args
    set_of = {r.prompt: r.set for key, rows in ctx.cache.items() if key[0] == "rows"
              for r in rows}
    sft = {r["name"]: cached_answers(r) for r in per_run if not r["sft"]}
    runs = [(r["name"], r["sft"], *cached_answers(r)) for r in per_run if r["sft"] in sft]
    sets = {custom_set_name(k) if k.endswith(".jsonl") else k: v
            for k, v in a.judge_sets_parsed.items()}  # a .jsonl set is named after its file
    groups = judge_groups(runs, sft, sets, set_of)
    if not groups:
        raise ValueError(f"no answers to judge: the runs were not evaluated on any of the judge "
                         f"sets ({', '.join(a.judge_sets_parsed)}); add them with --eval_sets.")
    client = JudgeClient(a.judge, a.judge_url, max_tokens=a.judge_max_tokens)
    cache = os.path.join(a.out, "cache", "judge")
    print(format_plan([{"run": run, **plan_calls(client, criterion, items, cache)}
                       for (run, criterion), items in groups.items()]))
    if a.judge_dry_run:
        return None
    try:
        summaries = judge_and_write(client, groups, cache, a.out, a.judge_workers)
    except JudgeError as err:
        raise ValueError(str(err)) from None
    add_to_results(a.out, summaries)
    return summaries


def add_to_results(out, summaries):
    """results.json holds the judge's rows too, beside the table's (rewritten atomically)."""
    path = os.path.join(out, "results.json")
    with open(path) as f:
        results = json.load(f)
    with open(path + ".tmp", "w") as f:
        json.dump({**results, "judge": summaries}, f, indent=1)
    os.replace(path + ".tmp", path)
