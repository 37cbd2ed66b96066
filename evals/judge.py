"""Pairwise LLM-judge evaluation: each run's answers against the SFT model's, both orders, cached.

    python -m evals.judge --pairs pairs.jsonl --judge_url http://localhost:8000/v1 \\
        --judge_model gpt-4o --dry_run            # count the calls and tokens still needed
    python -m evals.judge --pairs pairs.jsonl --judge_url https://api.openai.com/v1 \\
        --judge_model gpt-4o --out_dir judge_out  # judge, then judge.json, judge.csv, judge.png

pairs.jsonl holds one object a line: {"run", "criterion", "prompt", "run_answer", "sft_answer"}.
From Python: judge_client.JudgeClient(...), plan_calls(...) for the dry run, judge_pairs(...) per
run and criterion, then format_results / plot_win_rates on the summaries.

The paper's GPT-4o evaluation (Sec. 4.2): a trained model's answer and the SFT model's answer to
the same prompt (129 AlpacaEval helpful-base prompts for helpfulness, 83 Safe RLHF red-team
prompts for harmlessness) go to a judge that scores both; the result is win / tie / lose against
SFT. Safe RLHF's script shows the answers in one order only (judges favour a position) and turns an
unreadable reply into a 0-0 tie. Here:

- Every pair is judged twice: the run's answer as assistant A ("run_first"), then the SFT answer
  as A ("sft_first"). The judge ends each reply with one line `Scores: A=<1-10> B=<1-10>`.
- RULE: a pair is a WIN only if both orders score the run's answer higher, a LOSS only if both
  score the SFT answer higher, and a TIE otherwise (the orders disagree, or either gives equal
  scores). A reply the parser cannot read is asked again with a reminder of the format
  (parse_retries times); if still unreadable that order is UNPARSED and so is its pair: never a tie.
- Rates and 95% Wilson intervals are over the PARSED pairs (win + tie + lose); the unparsed count
  stands beside them, so a judge that often fails the format is visible rather than hidden.
- The judge itself (evals/judge_client.py): any OpenAI-compatible chat-completions server at
  temperature 0, transient failures retried with backoff, the key never printed or stored, and a
  disk cache of one file per request (judge model, criterion, prompt, both answers, order,
  max_tokens, judge prompt version), so an interrupted evaluation resumes and a rerun makes no
  call; the final UNPARSED verdict is cached too (retry_unparsed=True asks again).

This file: both orders of every pair sent concurrently (judge_pairs) or only counted (plan_calls,
the dry run), the verdicts, their rates and intervals, the table, the chart, judge.json / judge.csv
/ judge.png, and the command line above. tests/test_judge.py checks it.
Left out: loading the paper's two prompt sets and sampling the answers (the caller passes
(prompt, run answer, SFT answer) triples), and the judge's cost in money (the dry run counts
tokens; prices change).
"""
import argparse
import concurrent.futures
import csv
import json
import math
import os
import sys
import textwrap
import threading
import time
from dataclasses import dataclass

from evals.judge_client import (CRITERIA, PROMPT_VERSION, JudgeClient, JudgeError, cache_key,
                                judge_once, read_entry, render_messages, write_entry)

ORDERS = ("run_first", "sft_first")  # which answer is shown as assistant A
VERDICTS = ("win", "tie", "lose", "unparsed")
RULE = ("win = both orders score the run above SFT; lose = both score SFT above the run; "
        "tie = otherwise; unparsed = a reply unreadable after retries (never a tie); "
        "rates and 95% Wilson intervals over parsed pairs (win + tie + lose)")
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


# ----------------------------------------------------------------------------- verdicts and rates

def preference(scores, order):
    """+1 when one order's (score A, score B) favours the run's answer, -1 SFT's, 0 equal."""
    a, b = scores
    run, sft = (a, b) if order == "run_first" else (b, a)
    return (run > sft) - (run < sft)


def pair_verdict(run_first, sft_first):
    """'win', 'tie', 'lose' or 'unparsed' from the two orders' (score A, score B) or None (RULE)."""
    if run_first is None or sft_first is None:
        return "unparsed"
    first, second = preference(run_first, "run_first"), preference(sft_first, "sft_first")
    if first > 0 and second > 0:
        return "win"
    if first < 0 and second < 0:
        return "lose"
    return "tie"


def wilson_interval(k, n, z=Z95):
    """Wilson score interval for k successes in n trials: (low, high), or (None, None) when n = 0.
    Unlike the normal approximation p +- z sqrt(p (1 - p) / n) it stays inside [0, 1] and is not
    empty at k = 0 or k = n."""
    if n == 0:
        return None, None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # It always holds p; the clamps keep rounding (low = 1e-17 at k = 0) from saying otherwise.
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def summarize(verdicts, run="", criterion="", judge=""):
    """Per-pair verdicts -> one plain dict (JSON/CSV ready): counts, rates over parsed pairs,
    95% Wilson intervals of the win and lose rates, the unparsed share of all pairs, the rule."""
    counts = {v: sum(1 for x in verdicts if x == v) for v in VERDICTS}
    bad = [x for x in verdicts if x not in VERDICTS]
    assert not bad, bad
    parsed = counts["win"] + counts["tie"] + counts["lose"]
    out = {"run": run, "criterion": criterion, "judge": judge, "pairs": len(verdicts),
           **counts, "parsed": parsed}
    for v in ("win", "tie", "lose"):
        out[f"{v}_rate"] = counts[v] / parsed if parsed else None
    for v in ("win", "lose"):
        out[f"{v}_ci_low"], out[f"{v}_ci_high"] = wilson_interval(counts[v], parsed)
    out["unparsed_rate"] = counts["unparsed"] / len(verdicts) if verdicts else None
    out["denominator"] = "parsed pairs"
    out["rule"] = RULE
    return out


# ----------------------------------------------------------------------------- judging

def order_answers(run_answer, sft_answer, order):
    """(answer A, answer B) for one order."""
    return (run_answer, sft_answer) if order == "run_first" else (sft_answer, run_answer)


def check_items(criterion, items):
    """One sentence (ValueError) for an unknown criterion or items that are not text triples."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}.")
    if not items:
        raise ValueError(f"no pairs to judge for {criterion}; pass at least one "
                         "(prompt, run_answer, sft_answer).")
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 3
                and all(isinstance(x, str) for x in item)):
            raise ValueError(f"pair {i} is not a (prompt, run_answer, sft_answer) triple of "
                             f"strings (got {type(item).__name__}); pass text triples.")


@dataclass
class JudgeResult:
    """One run on one criterion: per-pair verdicts and scores, and their summary."""
    run: str
    criterion: str
    judge: str
    pairs: list  # per pair: {'index', 'verdict', 'run_first', 'sft_first'} (scores or None)
    calls: int  # requests this call of judge_pairs sent (0 when all came from the cache)

    def summary(self):
        return summarize([p["verdict"] for p in self.pairs], self.run, self.criterion,
                         self.judge)


def _requests(client, criterion, items):
    """(pair index, order, cache key) of every request the pairs need."""
    return [(i, order, cache_key(client.model, criterion, prompt, run_answer, sft_answer, order,
                                 client.max_tokens))
            for i, (prompt, run_answer, sft_answer) in enumerate(items) for order in ORDERS]


def _cached(entry, retry_unparsed):
    return entry is not None and not (retry_unparsed and entry["status"] == "unparsed")


def plan_calls(client, criterion, items, cache_dir, retry_unparsed=False):
    """The dry run: how many requests are not cached yet, and an estimate of their tokens
    (prompt: characters / 4 of the rendered messages; output: max_tokens each, an upper bound).
    A format reminder adds a request and resends the conversation: not counted. No network."""
    check_items(criterion, items)
    needed, prompt_chars = 0, 0
    for i, order, key in _requests(client, criterion, items):
        if _cached(read_entry(cache_dir, key), retry_unparsed):
            continue
        prompt, run_answer, sft_answer = items[i]
        messages = render_messages(criterion, prompt, *order_answers(run_answer, sft_answer, order))
        needed += 1
        prompt_chars += sum(len(m["content"]) for m in messages)
    total = 2 * len(items)
    return {"criterion": criterion, "judge": client.model, "pairs": len(items),
            "requests": total, "cached": total - needed, "needed": needed,
            "prompt_tokens": prompt_chars // 4, "output_tokens": needed * client.max_tokens}


def format_plan(plans):
    """The dry run's lines, with totals."""
    lines = []
    for p in plans:
        run = p.get("run", "")
        lines.append(f"{run + ' ' if run else ''}{p['criterion']}: {p['pairs']} pairs, "
                     f"{p['requests']} requests, {p['cached']} cached, {p['needed']} to send "
                     f"(~{p['prompt_tokens']} prompt + <= {p['output_tokens']} output tokens)")
    needed = sum(p["needed"] for p in plans)
    tokens = sum(p["prompt_tokens"] for p in plans), sum(p["output_tokens"] for p in plans)
    lines.append(f"total: {needed} requests to send, ~{tokens[0]} prompt + <= {tokens[1]} output "
                 "tokens (format reminders not counted)")
    return "\n".join(lines)


def judge_pairs(client, criterion, items, cache_dir, progress=True, run="", workers=4,
                retry_unparsed=False):
    """Judge (prompt, run answer, SFT answer) triples on one criterion, both orders each.

    Cached requests are read, the others sent (workers at a time) and cached as each finishes,
    so an interrupted call loses only the requests in flight. The server is probed first, and
    only when something is left to send: a fully cached rerun works with the judge offline."""
    check_items(criterion, items)
    requests = _requests(client, criterion, items)
    entries = {}
    for i, order, key in requests:
        entry = read_entry(cache_dir, key)
        if _cached(entry, retry_unparsed):
            entries[i, order] = entry
    todo = [(i, order, key) for i, order, key in requests if (i, order) not in entries]
    calls_before = client.calls
    if todo:
        client.check()

    failed = threading.Event()  # after one failure, queued requests are not sent

    def work(i, order, key):
        if failed.is_set():
            return None, None
        prompt, run_answer, sft_answer = items[i]
        answer_a, answer_b = order_answers(run_answer, sft_answer, order)
        try:
            entry = judge_once(client, criterion, prompt, answer_a, answer_b)
        except BaseException:
            failed.set()
            raise
        entry.update(key=key, model=client.model, criterion=criterion, order=order,
                     max_tokens=client.max_tokens, version=PROMPT_VERSION, prompt=prompt,
                     run_answer=run_answer, sft_answer=sft_answer, time=time.time())
        write_entry(cache_dir, key, entry)
        return (i, order), entry

    from tqdm import tqdm

    bar = tqdm(total=len(requests), initial=len(requests) - len(todo), unit="request",
               desc=f"judge {run + ' ' if run else ''}{criterion}",
               disable=None if progress else True)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        futures = [pool.submit(work, *request) for request in todo]
        for future in concurrent.futures.as_completed(futures):
            where, entry = future.result()
            if where is not None:
                entries[where] = entry
                bar.update(1)
    finally:  # on an error or Ctrl-C: drop the queued requests, let those in flight finish
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()

    pairs = []
    for i in range(len(items)):
        scores = [entries[i, order]["scores"] for order in ORDERS]
        scores = [tuple(s) if s is not None else None for s in scores]
        pairs.append({"index": i, "verdict": pair_verdict(*scores),
                      "run_first": scores[0], "sft_first": scores[1]})
    return JudgeResult(run=run, criterion=criterion, judge=client.model, pairs=pairs,
                       calls=client.calls - calls_before)


# ----------------------------------------------------------------------------- reporting

def _rate(summary, kind):
    rate = summary.get(f"{kind}_rate")
    if rate is None:
        return "-"
    if kind == "tie":
        return f"{100 * rate:.1f}"
    low, high = summary[f"{kind}_ci_low"], summary[f"{kind}_ci_high"]
    return f"{100 * rate:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def format_results(summaries):
    """A text table (at most 100 columns) of summaries, one row per run and criterion, and the
    rule under it."""
    head = (f"{'run':<20} {'criterion':<12} {'pairs':>5} {'win':>4} {'tie':>4} {'lose':>4} "
            f"{'unp.':>4}  {'win % [95% CI]':<19} {'lose % [95% CI]'}")
    lines = [head, "-" * len(head)]
    for s in summaries:
        run = s["run"] if len(s["run"]) <= 20 else s["run"][:19] + "~"
        lines.append(f"{run:<20} {s['criterion']:<12} {s['pairs']:>5} {s['win']:>4} "
                     f"{s['tie']:>4} {s['lose']:>4} {s['unparsed']:>4}  "
                     f"{_rate(s, 'win'):<19} {_rate(s, 'lose'):<19}".rstrip())
    judges = sorted({s["judge"] for s in summaries})
    lines.append(f"against SFT, judge {', '.join(judges)}, each pair judged in both orders; "
                 "unp. = unparsed.")
    words, line = RULE.split(" "), "rule:"
    for word in words:  # wrap the rule at 100 columns
        if len(line) + 1 + len(word) > 100:
            lines.append(line)
            line = "  "
        line += ("" if line == "  " else " ") + word
    lines.append(line + ".")
    return "\n".join(lines)


def plot_win_rates(summaries, path):
    """Bar chart to a PNG: one group per run, one bar per criterion, win rate against SFT with
    its 95% Wilson interval; runs with no parsed pair get no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(dict.fromkeys(s["run"] for s in summaries))
    criteria = list(dict.fromkeys(s["criterion"] for s in summaries))
    width = 0.8 / max(1, len(criteria))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(runs) + 2.5), 4.0))
    for j, criterion in enumerate(criteria):
        xs, heights, errors = [], [], [[], []]
        for x, run in enumerate(runs):
            s = next((s for s in summaries if s["run"] == run and s["criterion"] == criterion),
                     None)
            if s is None or s["win_rate"] is None:
                continue
            xs.append(x - 0.4 + width * (j + 0.5))
            heights.append(100 * s["win_rate"])
            errors[0].append(100 * (s["win_rate"] - s["win_ci_low"]))
            errors[1].append(100 * (s["win_ci_high"] - s["win_rate"]))
        ax.bar(xs, heights, width, yerr=errors, capsize=3, label=criterion)
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([textwrap.fill(run, 16) for run in runs], fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("win rate against SFT (%)")
    judges = ", ".join(sorted({s["judge"] for s in summaries}))
    ax.set_title(f"Win rate against SFT (judge {judges}; a win = preferred in both orders; "
                 "95% Wilson interval)", fontsize=8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line

def read_pairs(path):
    """pairs.jsonl -> {(run, criterion): [(prompt, run_answer, sft_answer), ...]}, in file order."""
    groups = {}
    names = ("run", "criterion", "prompt", "run_answer", "sft_answer")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise ValueError(f"{path} line {n} is not JSON; write one object a line with "
                                 f"keys {', '.join(names)}.") from None
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in names):
                raise ValueError(f"{path} line {n} lacks a text value for one of "
                                 f"{', '.join(names)}; give all five as strings.")
            groups.setdefault((row["run"], row["criterion"]), []).append(
                (row["prompt"], row["run_answer"], row["sft_answer"]))
    return groups


def judge_and_write(client, groups, cache_dir, out_dir, workers=4, retry_unparsed=False):
    """Judge every {(run, criterion): items} group, print the table, write judge.json, judge.csv
    and judge.png into out_dir; returns the summaries. evaluate.py --judge calls this too."""
    summaries, pairs = [], []
    for (run, criterion), items in groups.items():
        result = judge_pairs(client, criterion, items, cache_dir, run=run, workers=workers,
                             retry_unparsed=retry_unparsed)
        summaries.append(result.summary())
        pairs.append({"run": run, "criterion": criterion, "pairs": result.pairs})
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "judge.json"), "w", encoding="utf-8") as f:
        json.dump({"summaries": summaries, "pairs": pairs, "prompt_version": PROMPT_VERSION,
                   "calls": client.calls, "prompt_tokens": client.prompt_tokens,
                   "completion_tokens": client.completion_tokens}, f, indent=1)
    with open(os.path.join(out_dir, "judge.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(summaries[0]))
        writer.writeheader()
        writer.writerows(summaries)
    plot_win_rates(summaries, os.path.join(out_dir, "judge.png"))
    print(format_results(summaries))
    print(f"{client.calls} requests sent ({client.prompt_tokens} prompt, "
          f"{client.completion_tokens} completion tokens)")
    print(f"wrote {out_dir}/judge.json, judge.csv, judge.png")
    return summaries


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", required=True, help="JSONL: run, criterion, prompt, run_answer, "
                                                   "sft_answer per line")
    ap.add_argument("--judge_url", required=True, help="OpenAI-compatible base URL (.../v1)")
    ap.add_argument("--judge_model", required=True, help="model name sent to the judge")
    ap.add_argument("--judge_max_tokens", type=int, default=512, help="cap on each reply")
    ap.add_argument("--api_key_env", default="OPENAI_API_KEY", help="variable holding the key")
    ap.add_argument("--cache_dir", default="cache/judge")
    ap.add_argument("--out_dir", default="judge_out")
    ap.add_argument("--workers", type=int, default=4, help="requests in flight at once")
    ap.add_argument("--retry_unparsed", action="store_true", help="ask again where cached "
                                                                  "replies were unreadable")
    ap.add_argument("--dry_run", action="store_true", help="count calls and tokens, send none")
    args = ap.parse_args(argv)
    for flag in ("judge_max_tokens", "workers"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"error: --{flag} must be 1 or more (got {getattr(args, flag)}).")
    try:
        groups = read_pairs(args.pairs)
        client = JudgeClient(args.judge_model, args.judge_url, api_key_env=args.api_key_env,
                             max_tokens=args.judge_max_tokens)
        plans = [{"run": run, **plan_calls(client, criterion, items, args.cache_dir,
                                           args.retry_unparsed)}
                 for (run, criterion), items in groups.items()]
        print(format_plan(plans))
        if args.dry_run:
            return
        judge_and_write(client, groups, args.cache_dir, args.out_dir, args.workers,
                        args.retry_unparsed)
    except (OSError, ValueError, JudgeError) as err:
        raise SystemExit(f"error: {err}")


if __name__ == "__main__":
    sys.exit(main())
