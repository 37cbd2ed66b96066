"""The smol study: SmolLM2-135M-Instruct trained by six methods (one seed), then evaluate.py:
the paper's comparison (Sec. 4, Table 1) with a real chat model on a CPU.

    python -m experiments.smol_study --jobs 2 --smol_data DATA   # prepare, train, evaluate
    python -m experiments.smol_study --resume                    # continue interrupted runs
    python -m experiments.smol_study --dry_run                   # the plan and each run's state

Runs (train.py --preset smol, one shared set of hyper-parameters, seed 0): PPO-H, PPO-S, Safe
RLHF, MGDA, GAPO p=1 and GAPO p=2, in runs/smol/<method>-s0; then `python evaluate.py` on all of
them beside the SFT model (the real prompt sets: red-team, AlpacaEval, XSTest), into
runs/smol/eval. The smol world (policy folder, reward and cost models, prompts) is prepared
first, once (python -m worlds.smol). Any other flag goes to every train.py call. Training reuses
experiments/study.py's scheduler: a finished run is skipped, a stale one (other settings) is
trained again.

Left out on purpose: more seeds (each run takes minutes to tens of minutes on a 2-core CPU; one
seed gives the picture, not confidence intervals), Fast RL, P-GAPO, MORLHF and soups (the toy
study has them).
"""
import argparse
import os
import subprocess
import sys
import time

from experiments import study
from worlds import toyworld

METHODS = [("ppo-h", ["--method", "ppo-h"]), ("ppo-s", ["--method", "ppo-s"]),
           ("safe-rlhf", ["--method", "safe-rlhf"]), ("mgda", ["--method", "mgda"]),
           ("gapo-p1", ["--method", "gapo", "--p", "1"]),
           ("gapo-p2", ["--method", "gapo", "--p", "2"])]


def paired_vs_sft(eval_dir):
    """Lines of a table: each run's mean change from the SFT model in reward, -cost and answer
    length, per prompt (same prompts, same sampling seed), with 95% t intervals over prompts."""
    import json
    from experiments.claims import paired_interval
    with open(os.path.join(eval_dir, "results.json")) as f:
        rows = json.load(f)["runs"]
    load = lambda r: json.load(open(r["cache"]))
    sft = {r["sft"] for r in rows if r["sft"]}
    lines = [f"{'change from SFT, per prompt':28s} {'Helpful':>24s} {'Harmless':>24s} "
             f"{'words':>20s}"]
    for r in rows:
        if not r["sft"] or len(sft) != 1:
            continue
        base, run = load(next(x for x in rows if x["name"] == r["sft"])), load(r)
        assert base["prompts"] == run["prompts"], "runs were evaluated on different prompts"
        cells = []
        for get in (lambda c, i: c["reward"][i], lambda c, i: -c["cost"][i],
                    lambda c, i: len(c["responses"][i].split())):
            mean, low, high = paired_interval([get(run, i) - get(base, i)
                                               for i in range(len(run["prompts"]))])
            cells.append(f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]")
        lines.append(f"{r['group']:28s} {cells[0]:>24s} {cells[1]:>24s} {cells[2]:>20s}")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=40, help="PPO iterations per run")
    ap.add_argument("--out_root", default="runs/smol")
    ap.add_argument("--smol_data", default="data", help="HH-RLHF folder (or Anthropic/hh-rlhf); "
                    "its eval/ subfolder holds the evaluation sets")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once (2 fills 2 cores)")
    ap.add_argument("--resume", action="store_true", help="continue interrupted runs")
    ap.add_argument("--dry_run", action="store_true", help="print the plan; train nothing")
    ap.add_argument("--skip_eval", action="store_true", help="train only")
    ap.add_argument("--eval_args", default="", help="extra flags for evaluate.py")
    args, train_args = ap.parse_known_args(argv)
    # what study.train_all reads: no alpha probe, the toy flags are unused by the smol preset
    args.train_args = ["--preset", "smol", "--smol_data", args.smol_data, *train_args]
    args.seeds, args.skip_alpha, args.eval_every = [args.seed], True, 0  # no held-out curve
    args.toy_dir, args.toy_size = toyworld.SHIPPED, "default"
    args.out_root = os.path.abspath(args.out_root)
    t0 = time.time()
    if not args.dry_run:
        print("smol study: preparing the smol world (once; minutes the first time)", flush=True)
        code = subprocess.run([sys.executable, "-m", "worlds.smol", "--data", args.smol_data],
                              cwd=study.ROOT).returncode
        if code != 0:
            raise SystemExit("error: preparing the smol world failed (see above).")
    plan = [(f"{name}-s{args.seed}", flags + ["--seed", str(args.seed)])
            for name, flags in METHODS]
    finished, failed = study.train_all(plan, args)
    code = 1 if failed else 0
    if finished and not args.skip_eval and not args.dry_run:
        out = os.path.join(args.out_root, "eval")
        print(f"smol study: evaluating {len(finished)} runs and the SFT model into {out}",
              flush=True)
        cmd = [sys.executable, os.path.join(study.ROOT, "evaluate.py"), *finished, "--out", out,
               *args.eval_args.split()]
        code = max(code, subprocess.run(cmd, cwd=study.ROOT).returncode)
        if code == 0:
            print("\n".join(paired_vs_sft(out)))
    print(f"smol study: finished in {(time.time() - t0) / 60:.1f} min"
          + (f"; failed runs: {', '.join(failed)}" if failed else ""))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
