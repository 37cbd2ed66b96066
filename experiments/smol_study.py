"""The smol study: SmolLM2-135M-Instruct trained by seven methods, then evaluate.py: the paper's
comparison (Sec. 4, Table 1) with a real chat model, on a CPU in two hours or on one GPU.

    python -m experiments.smol_study --jobs 2 --smol_data DATA        # 2-core CPU, ~2 hours
    python -m experiments.smol_study --budget gpu --jobs 0 --device cuda --smol_data DATA
                                                 # one GPU: every run at once, a larger budget
    python -m experiments.smol_study --resume    # continue interrupted runs
    python -m experiments.smol_study --dry_run   # the plan and each run's state

Runs (train.py --preset smol, one shared set of hyper-parameters, the budget of BUDGETS[--budget]
unless flags say otherwise): PPO-H, PPO-S and GAPO p=2 with --seeds seeds (the three that carry
the paper's claim: GAPO against the two single-objective ends), Safe RLHF, MGDA, GAPO p=1 and
MORLHF (1/2, 1/2) with the first seed, in <out_root>/<method>-s<seed>. Then `python evaluate.py`
on all of them beside the SFT model on the real prompt sets (red-team, AlpacaEval, XSTest), into
<out_root>/eval, and two summaries printed and written there:
  - smol_changes.txt: each method's change from the SFT model's answer to the same prompt
    (reward, -cost, words), pooled over its seeds, with a 95% t interval over prompts;
  - smol_curves.png/.pdf and smol_curves.json: the training scores per iteration (the rollout
    batch's mean, averaged over seeds, moving average of --smooth iterations), and how much each
    method's curve still moved at the end (the last quarter's mean minus the quarter's before; a
    curve that still moves is not judged at its end).
The smol world (policy folder, reward and cost models, prompts) is prepared first, once, in
--smol_dir (python -m worlds.smol). Any other flag goes to every train.py call. Training reuses
experiments/study.py's scheduler: a finished run is skipped, a stale one (other settings) is
trained again; --jobs 0 starts every run at once (one GPU shared by separate processes).

Left out on purpose: Fast RL, P-GAPO and soups (the toy study has them), a held-out learning curve
(--eval_every; on a CPU it would cost as much as training), more seeds for the other methods.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import runs
from experiments import study
from worlds import toyworld

METHODS = [("ppo-h", ["--method", "ppo-h"]), ("ppo-s", ["--method", "ppo-s"]),
           ("safe-rlhf", ["--method", "safe-rlhf"]), ("mgda", ["--method", "mgda"]),
           ("gapo-p1", ["--method", "gapo", "--p", "1"]),
           ("gapo-p2", ["--method", "gapo", "--p", "2"]),
           ("morlhf", ["--method", "morlhf", "--pref", "0.5,0.5"])]
KEY = ("ppo-h", "ppo-s", "gapo-p2")  # trained with every seed; the others with the first
# The training budget (train.py flags; the rest is the smol preset's), shared by every method.
# cpu: measured here to fit about two hours with two jobs (README, the smol section).
# gpu: for one H100/H200-class GPU running every run at once (not yet run on a GPU): four times
# the prompts per step and about three times the steps, the same answer length and learning rate.
BUDGETS = {"cpu": {"iterations": 30, "actor_lr": 3e-4, "critic_lr": 3e-4},
           "gpu": {"iterations": 100, "batch_size": 32, "minibatch_size": 32,
                   "micro_batch_size": 32, "actor_lr": 3e-4, "critic_lr": 3e-4}}


def plan(seeds, methods=None):
    """[(run name, train.py flags)]: the KEY methods with every seed, the rest with the first."""
    chosen = [(n, f) for n, f in METHODS if methods is None or n in methods]
    return [(f"{name}-s{seed}", flags + ["--seed", str(seed)]) for name, flags in chosen
            for seed in (seeds if name in KEY else seeds[:1])]


def paired_vs_sft(eval_dir):
    """Lines of a table: each method's mean change from the SFT model in reward, -cost and answer
    length, per prompt (same prompts, same sampling seed), pooled over its seeds (a prompt's
    change is the mean of its seeds' changes), with 95% t intervals over prompts. The interval
    counts the prompts' spread only: seeds that disagree do not widen it, and averaging seeds
    narrows it, so a three-seed row's interval is not comparable to a one-seed row's; the seeds'
    own spread is in evaluate.py's table (mean +- std over seeds)."""
    from experiments.claims import paired_interval
    with open(os.path.join(eval_dir, "results.json")) as f:
        rows = json.load(f)["runs"]

    def load(row):  # a run's cached responses and scores (evaluate.py's cache file)
        with open(row["cache"]) as f:
            return json.load(f)
    sft = {r["sft"] for r in rows if r["sft"]}
    lines = [f"{'change from SFT (interval: prompts)':28s} {'seeds':>5s} {'Helpful':>24s} "
             f"{'Harmless':>24s} {'words':>20s}"]
    if len(sft) != 1:
        return lines
    base = load(next(x for x in rows if x["name"] == sft.pop()))
    groups = {}
    for r in rows:
        if r["sft"]:
            groups.setdefault(r["group"], []).append(load(r))
    for group, members in groups.items():
        assert all(run["prompts"] == base["prompts"] for run in members), \
            "runs were evaluated on different prompts"
        cells = []
        for get in (lambda c, i: c["reward"][i], lambda c, i: -c["cost"][i],
                    lambda c, i: len(c["responses"][i].split())):
            changes = [np.mean([get(run, i) - get(base, i) for run in members])
                       for i in range(len(base["prompts"]))]
            mean, low, high = paired_interval(changes)
            cells.append(f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]")
        lines.append(f"{group:28s} {len(members):5d} {cells[0]:>24s} {cells[1]:>24s} "
                     f"{cells[2]:>20s}")
    return lines


def training_curves(run_dirs, smooth=10):
    """{method: {"seeds", "iterations", metric: smoothed mean over seeds, metric + "_moved"}} from
    the runs' log.jsonl. Metrics: score_helpful, score_harmless (the rollout batch's mean), kl,
    response_length. metric_moved: the seed mean's average over the run's last quarter of
    iterations minus its average over the quarter before (None for runs under 8 iterations): a
    curve that still moves at the end is not judged there."""
    metrics = ("score_helpful", "score_harmless", "kl", "response_length")
    by_method = {}
    for run in run_dirs:
        log = runs.read_log(os.path.join(run, "log.jsonl"))
        by_method.setdefault(os.path.basename(run).rsplit("-s", 1)[0], []).append(log)
    curves = {}
    for method, logs in by_method.items():
        n = min(len(log) for log in logs)
        curve = {"seeds": len(logs), "iterations": [r["iteration"] for r in logs[0][:n]]}
        window, quarter = max(1, min(smooth, n)), n // 4
        for k in metrics:
            mean = np.mean([[r[k] for r in log[:n]] for log in logs], axis=0)  # (n,)
            smoothed = np.convolve(mean, np.ones(window) / window, mode="valid")
            curve[k] = smoothed.tolist()  # point j: the mean of iterations j+1 .. j+window
            last, before = mean[-quarter:], mean[-2 * quarter:-quarter]
            curve[k + "_moved"] = float(last.mean() - before.mean()) if quarter >= 2 else None
        curve["smoothed_from"] = window
        curves[method] = curve
    return curves


def plot_training_curves(curves, out):
    """smol_curves.{png,pdf}: helpful and harmless training scores against iterations."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for method, c in curves.items():
        x = c["iterations"][c["smoothed_from"] - 1:]
        label = f"{method} ({c['seeds']} seed{'s' if c['seeds'] > 1 else ''})"
        for ax, k in zip(axes, ("score_helpful", "score_harmless", "kl")):
            ax.plot(x, c[k], label=label)
    for ax, title in zip(axes, ("Helpful (reward)", "Harmless (-cost)", "KL to SFT")):
        ax.set_title(f"{title}, training batch")
        ax.set_xlabel("iteration")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(os.path.join(out, f"smol_curves.{ext}"), dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", default="cpu", choices=list(BUDGETS),
                    help="the shared training budget (BUDGETS); train.py flags override it")
    ap.add_argument("--iterations", type=int, default=0,
                    help="PPO iterations per run (default: the budget's)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the KEY methods; "
                    "the others train with the first")
    ap.add_argument("--methods", default="", help="comma-separated subset of the plan "
                    f"(default all: {', '.join(n for n, _ in METHODS)})")
    ap.add_argument("--out_root", default="runs/smol")
    ap.add_argument("--smol_dir", default="cache/smol", help="where the smol world is prepared")
    ap.add_argument("--smol_data", default="data", help="HH-RLHF folder (or Anthropic/hh-rlhf); "
                    "its eval/ subfolder holds the evaluation sets")
    ap.add_argument("--smol_size", default="default", help="default | tiny (tests)")
    ap.add_argument("--device", default="auto", help="train.py's and evaluate.py's --device")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs trained at once (2 fills 2 cores; 0 = every run at once)")
    ap.add_argument("--smooth", type=int, default=10, help="moving average of the curves")
    ap.add_argument("--resume", action="store_true", help="continue interrupted runs")
    ap.add_argument("--dry_run", action="store_true", help="print the plan; train nothing")
    ap.add_argument("--skip_eval", action="store_true", help="train (and draw the curves) only")
    ap.add_argument("--eval_args", default="", help="extra flags for evaluate.py")
    args, train_args = ap.parse_known_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - {n for n, _ in METHODS})
    if unknown:
        raise SystemExit(f"error: --methods: unknown method {unknown[0]!r}; the plan has "
                         f"{', '.join(n for n, _ in METHODS)}.")
    seeds = [int(s) for s in args.seeds.split(",")]
    planned = plan(seeds, methods or None)
    given = {a[2:].split("=")[0] for a in train_args if a.startswith("--")}
    budget = [x for k, v in BUDGETS[args.budget].items() if k not in given and k != "iterations"
              for x in (f"--{k}", str(v))]
    # what study.train_all reads: no alpha probe, the toy flags are unused by the smol preset
    args.train_args = ["--preset", "smol", "--smol_dir", os.path.abspath(args.smol_dir),
                       "--smol_data", args.smol_data, "--smol_size", args.smol_size,
                       "--device", args.device, *budget, *train_args]
    args.iterations = args.iterations or BUDGETS[args.budget]["iterations"]
    args.seeds, args.skip_alpha, args.eval_every = seeds, True, 0
    args.toy_dir, args.toy_size = toyworld.SHIPPED, "default"
    args.out_root = os.path.abspath(args.out_root)
    args.jobs = args.jobs if args.jobs > 0 else len(planned)
    t0 = time.time()
    if not args.dry_run:
        print(f"smol study: the smol world in {args.smol_dir} (once; minutes the first time)",
              flush=True)
        code = subprocess.run([sys.executable, "-m", "worlds.smol", "--out", args.smol_dir,
                               "--data", args.smol_data, "--size", args.smol_size],
                              cwd=study.ROOT).returncode
        if code != 0:
            raise SystemExit("error: preparing the smol world failed (see above).")
    finished, failed = study.train_all(planned, args)
    code = 1 if failed else 0
    out = os.path.join(args.out_root, "eval")
    if finished and not args.dry_run:
        os.makedirs(out, exist_ok=True)
        curves = training_curves(finished, args.smooth)
        with open(os.path.join(out, "smol_curves.json"), "w") as f:
            json.dump(curves, f, indent=1)
        plot_training_curves(curves, out)
        print("smol study: training curves (the last smoothed point; 'moved' = the last quarter's "
              "mean minus the quarter's before)")
        moved = lambda x: "n/a" if x is None else f"{x:+.3f}"
        for method, c in curves.items():
            print(f"  {method:10s} seeds {c['seeds']}  helpful {c['score_helpful'][-1]:+.3f} "
                  f"(moved {moved(c['score_helpful_moved'])})  harmless "
                  f"{c['score_harmless'][-1]:+.3f} (moved {moved(c['score_harmless_moved'])})  "
                  f"kl {c['kl'][-1]:.3f}")
    if finished and not args.skip_eval and not args.dry_run:
        print(f"smol study: evaluating {len(finished)} runs and the SFT model into {out}",
              flush=True)
        cmd = [sys.executable, os.path.join(study.ROOT, "evaluate.py"), *finished, "--out", out,
               "--device", args.device, *args.eval_args.split()]
        code = max(code, subprocess.run(cmd, cwd=study.ROOT).returncode)
        if code == 0:
            lines = paired_vs_sft(out)
            with open(os.path.join(out, "smol_changes.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
            print("\n".join(lines))
    print(f"smol study: finished in {(time.time() - t0) / 60:.1f} min"
          + (f"; failed runs: {', '.join(failed)}" if failed else ""))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
