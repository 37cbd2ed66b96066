"""A three-objective study on the toy world: helpfulness, harmlessness and brevity (K = 3).

    python -m experiments.study_k3 --jobs 2     # 5 setups x 3 seeds at the toy budget, then the
                                                # Theorem 3.1 / 3.3 check, curves and evaluate.py
    python -m experiments.study_k3 --dry_run    # the plan and each run's state, train nothing

Every run trains with the toy world's reward and cost models and a Python rule,
`--objective helpful=worlds/toy/reward --objective harmless=-worlds/toy/cost
--objective brief=py:worlds.rules.brevity`, at the default hyper-parameters (one budget, one set
for every method): GAPO p = 1, GAPO p = 2, MGDA, MORLHF with lambda = (1/3, 1/3, 1/3), Fast RL.
Training goes through experiments/study.py's runner (resumable, one subprocess per run).

The check of Theorems 3.1 and 3.3 on the logs. At every optimizer step train.py logs each loss's
first-order decrease along the step, gain_i = g_i . d (`gains`), and `theorem_gap`, the relative
spread of gain_i / n_i^p over the objectives with alpha_i > 0 (the theorems say it is 0: MGDA gives
every active objective the same gain, GAPO gains in proportion to n_i^p). The log averages a
step's numbers over the iteration's steps, so the exact check is the per-step gap (its largest
value over every iteration is reported); the shares gain_i / sum_j gain_j next to
n_i^p / sum_j n_j^p (both from the iteration means, so close but not equal) show what the theorem
means for the three objectives: p = 2 hands most of the progress to the objective with the largest
gradient, p = 0 the same to each.

Writes <out_root>/k3_summary.json and experiments/results/study_k3.json, the training curves of the
three scores (mean over seeds) to experiments/results/curves_k3.png/.pdf, and evaluate.py's table of
the held-out scores to <out_root>/eval (its table.csv and pairwise Pareto plot are copied to
experiments/results/study_k3_table.csv and pareto_k3.png/.pdf).
Left out on purpose: Safe RLHF (a reward and one cost constraint, K = 2) and PPO on one objective.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

import runs
from experiments import study

ROOT = study.ROOT
OBJECTIVES = ["--objective", "helpful=worlds/toy/reward", "--objective",
              "harmless=-worlds/toy/cost", "--objective", "brief=py:worlds.rules.brevity"]
NAMES = ["helpful", "harmless", "brief"]
SETUPS = [("gapo-p1", ["--method", "gapo", "--p", "1"], 1.0),
          ("gapo-p2", ["--method", "gapo", "--p", "2"], 2.0),
          ("mgda", ["--method", "mgda"], 0.0),
          ("morlhf", ["--method", "morlhf", "--pref", "0.333334,0.333333,0.333333"], None),
          ("fast-rl", ["--method", "fast-rl"], None)]
RESULTS = os.path.join(ROOT, "experiments", "results")


def read_log(run_dir):
    return runs.read_log(os.path.join(run_dir, "log.jsonl"))


def theorem_check(log, p):
    """(largest per-step theorem_gap, mean gain shares (K,), mean n^p shares (K,)) of a run."""
    gaps = [r["theorem_gap"] for r in log if "theorem_gap" in r]
    gains = np.array([r["gains"] for r in log])  # (iterations, K)
    norms = np.array([r["grad_norms"] for r in log]) ** p
    share = lambda x: (x / x.sum(1, keepdims=True)).mean(0)  # noqa: E731
    return max(gaps), share(gains).tolist(), share(norms).tolist()


def summarise(out_root, seeds, window=50):
    """Per setup, over seeds: the training scores averaged over the last `window` iterations and
    the `window` before (the curves have flattened when they agree), response length, and the
    theorem check of the gradient methods."""
    summary = {}
    for name, _, p in SETUPS:
        logs = [read_log(os.path.join(out_root, f"{name}-s{s}")) for s in seeds]
        last = np.array([[np.mean([r[f"score_{n}"] for r in log[-window:]]) for n in NAMES]
                         for log in logs])  # (seeds, K)
        before = np.array([[np.mean([r[f"score_{n}"] for r in log[-2 * window:-window]])
                            for n in NAMES] for log in logs])
        length = [np.mean([r["response_length"] for r in log[-window:]]) for log in logs]
        row = {"seeds": len(logs), "score_mean": last.mean(0).tolist(),
               "score_std": last.std(0).tolist(), "change_over_last_window":
               (last - before).mean(0).tolist(), "response_length": float(np.mean(length))}
        if p is not None:
            checks = [theorem_check(log, p) for log in logs]
            row.update(max_theorem_gap=max(c[0] for c in checks),
                       gain_share=np.mean([c[1] for c in checks], 0).tolist(),
                       norm_p_share=np.mean([c[2] for c in checks], 0).tolist())
        summary[name] = row
    return summary


def plot_curves(out_root, seeds, path, smooth=10):
    """The three training scores against iterations, mean over seeds, one panel per objective."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(NAMES), figsize=(4 * len(NAMES), 3.2))
    for name, _, _ in SETUPS:
        logs = [read_log(os.path.join(out_root, f"{name}-s{s}")) for s in seeds]
        n = min(len(log) for log in logs)
        for ax, key in zip(axes, NAMES):
            y = np.mean([[r[f"score_{key}"] for r in log[:n]] for log in logs], 0)
            y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")  # moving mean
            ax.plot(np.arange(len(y)) + smooth, y, label=name)
    for ax, key in zip(axes, NAMES):
        ax.set_title(f"{key} (training batch score)")
        ax.set_xlabel("iteration")
    fig.suptitle(f"K = 3 on the toy world: mean of {len(seeds)} seeds, {smooth}-iteration moving "
                 f"mean", fontsize=10)
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(f"{path}.{ext}", dpi=130)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--iterations", type=int, default=300, help="the toy budget")
    ap.add_argument("--out_root", default="runs/study_k3", help="where the runs go")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once")
    ap.add_argument("--resume", action="store_true", help="continue interrupted runs")
    ap.add_argument("--dry_run", action="store_true", help="print the plan, train nothing")
    ap.add_argument("--skip_eval", action="store_true", help="no evaluate.py at the end")
    args = ap.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    # the fields experiments/study.py's runner reads
    args.skip_alpha, args.toy_dir, args.toy_size, args.eval_every = True, "", "default", 0
    args.train_args = OBJECTIVES
    runs = [(f"{name}-s{seed}", flags + ["--seed", str(seed)])
            for seed in args.seeds for name, flags, _ in SETUPS]
    finished, failed = study.train_all(runs, args)
    if args.dry_run:
        return
    if failed or len(finished) < len(runs):
        raise SystemExit(f"study_k3: {len(runs) - len(finished)} runs are not finished "
                         f"({', '.join(failed) or 'interrupted'}); rerun (with --resume).")
    summary = summarise(args.out_root, args.seeds)
    for name, row in summary.items():
        scores = ", ".join(f"{n} {m:+.2f} ± {s:.2f}" for n, m, s in
                           zip(NAMES, row["score_mean"], row["score_std"]))
        check = (f"; max theorem gap {row['max_theorem_gap']:.1e}, gain shares "
                 f"{np.round(row['gain_share'], 2).tolist()} vs n^p shares "
                 f"{np.round(row['norm_p_share'], 2).tolist()}" if "gain_share" in row else "")
        print(f"{name}: {scores}; length {row['response_length']:.1f}{check}")
    os.makedirs(RESULTS, exist_ok=True)
    for path in (os.path.join(args.out_root, "k3_summary.json"),
                 os.path.join(RESULTS, "study_k3.json")):
        with open(path, "w") as f:
            json.dump({"iterations": args.iterations, "seeds": args.seeds, "setups": summary},
                      f, indent=1)
    plot_curves(args.out_root, args.seeds, os.path.join(RESULTS, "curves_k3"))
    if not args.skip_eval:
        out = os.path.join(args.out_root, "eval")
        subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *finished,
                        "--out", out], cwd=ROOT, check=True)
        for src, dst in (("table.csv", "study_k3_table.csv"), ("pareto.png", "pareto_k3.png"),
                         ("pareto.pdf", "pareto_k3.pdf")):
            shutil.copyfile(os.path.join(out, src), os.path.join(RESULTS, dst))


if __name__ == "__main__":
    main(sys.argv[1:])
