"""Does doubling the training budget change the study? Two studies compared seed by seed.

    python -m experiments.budget runs/study runs/study600   # budget N, then the same setups at 2N

The toy study is judged at one budget (train.py's default iterations) for every method; that is
only sound where longer training would not change the verdicts. This script takes the final
held-out point of every run (train.py --eval_every logs it; it equals evaluate.py's row) in both
studies, pairs the runs of a setup by seed, and prints per setup and metric the mean at each budget
and the paired difference (longer - shorter) with its 95% Student-t interval over the seeds
(experiments/claims.paired_interval). An interval that holds 0 says "no change seen"; the width of
the interval says how large a change these seeds could have missed.

Left out on purpose: budgets other than the two given, and per-seed curves (evals/curves.py).
"""
import argparse
import os
import sys

from evals.curves import read_runs
from evals.tables import run_label
from experiments.claims import paired_interval

METRICS = ("helpful", "harmless", "avg", "harmful_compliance", "over_refusal", "benign_helpful")
SHARES = ("harmful_compliance", "over_refusal", "benign_helpful")  # printed in percentage points


def finals(root):
    """{setup: {seed: final eval point}} and the budget of the study under root."""
    runs = read_runs(root)
    if not runs:
        raise SystemExit(f"error: no finished run under {root} logged learning-curve points; "
                         f"train the study with --eval_every (python -m experiments.study does).")
    out, budgets = {}, set()
    for cfg, points in runs:
        # the method's own label: the two studies may hold different sets of setups, so a label
        # that names what tells setups apart inside one study would not match across the two
        label = run_label(cfg)[1] + (" whitened" if cfg.get("whiten_advantages") else "")
        out.setdefault(label, {})[cfg["seed"]] = points[-1]
        budgets.add(cfg["iterations"])
    return out, budgets


def compare(short, long):
    """Rows (setup, metric, n seeds, mean short, mean long, diff, low, high) over shared seeds."""
    rows = []
    for setup in short:
        if setup not in long:
            continue
        seeds = sorted(set(short[setup]) & set(long[setup]))
        for k in METRICS:
            a = [short[setup][s][k] for s in seeds]
            b = [long[setup][s][k] for s in seeds]
            mean, low, high = paired_interval([y - x for x, y in zip(a, b)])
            rows.append((setup, k, len(seeds), sum(a) / len(a), sum(b) / len(b), mean, low, high))
    return rows


def format_rows(rows, budgets):
    scale = lambda k: 100.0 if k in SHARES else 1.0
    lines = [f"{'setup':16s} {'metric':19s} seeds {'at ' + str(budgets[0]):>8s} "
             f"{'at ' + str(budgets[1]):>8s}  change [95% CI]   (shares in points)"]
    for setup, k, n, a, b, d, lo, hi in rows:
        f = scale(k)
        lines.append(f"{setup:16s} {k:19s} {n:5d} {a * f:+8.2f} {b * f:+8.2f}  {d * f:+.2f} "
                     f"[{lo * f:+.2f}, {hi * f:+.2f}]")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("short", help="the study at the budget in use (e.g. runs/study)")
    ap.add_argument("long", help="the same setups trained longer (e.g. runs/study600)")
    args = ap.parse_args(argv)
    for root in (args.short, args.long):
        if not os.path.isdir(root):
            raise SystemExit(f"error: {root} is not a folder; give two study folders.")
    (short, b1), (long, b2) = finals(args.short), finals(args.long)
    rows = compare(short, long)
    if not rows:
        raise SystemExit(f"error: {args.short} and {args.long} share no setup; train the same "
                         f"setups in both (python -m experiments.study --only ...).")
    print(format_rows(rows, (min(b1), max(b2))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
