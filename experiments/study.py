"""The paper's study on the toy world in one command: every method x 5 seeds, soups, claims, alpha.

    python -m experiments.study --jobs 2   # seeds 0-4: 17 runs each, then evaluate.py (+ Rewarded
                                           # Soups), the claims (experiments/claims.py), then alpha
    python -m experiments.study --quick    # seed 0, 20 iterations: a few minutes
    python -m experiments.study --resume   # continue interrupted runs from their last checkpoint
    python -m experiments.study --dry_run  # print the plan and each run's state, train nothing

Runs (every method of the paper's Sec. 4 at one shared set of hyper-parameters; all through
`python train.py`, one subprocess each, log in <out_root>/logs/):
  PPO-H, PPO-S, Safe RLHF, Fast RL, MGDA, GAPO p=1, GAPO p=2, and P-GAPO and MORLHF at lam_h in
  {0.2, 0.4, 0.6, 0.8} (pref "lam_h,1-lam_h"), plus the whitening ablation (MGDA and GAPO p=2 with
  --whiten_advantages); then `python evaluate.py` on all of them with `--soup auto` (Rewarded
  Soups of each seed's PPO-H and PPO-S at the same lam), writing the table and the Pareto plot to
  <out_root>/eval. Every run logs a held-out learning-curve point every --eval_every (25)
  iterations; evals/curves.py then draws each setup's mean curve over seeds and says when it
  settles (<out_root>/eval/curves_*.png/.pdf, curves.json). A run whose checkpoint has reached the
  final iteration is skipped, so a second call only does what is missing; a run folder without
  any checkpoint is restarted.
  `--only fast-rl,gapo-p2 --iterations 600 --out_root runs/study600` trains a subset at another
  budget (experiments/budget.py compares two budgets).

Alpha agreement (the question the paper leaves open: which "last layer"; docs/decisions.md): the
GAPO p=2 run of the first seed trains exactly as the others (alpha from last-block gradients), but
at every minibatch it also takes the K gradients of the same losses (same forward graph, no extra
rollout) with respect to ALL trainable parameters and records both Gram matrices in
<run>/alpha_probe.jsonl. From them, offline: alpha for p = 0, 1, 2 from each parameter set, mean
|alpha_last - alpha_all|, how often both pick the same dominant objective, and the cosine, in the
full parameter space, between the update the last-block weights give and the exact all-parameter
GAPO update (<out_root>/alpha_agreement.json). A recorder stands in for gapo.loss_weights during
the run (`python -m experiments.study --alpha_probe <train.py flags>`); the extra gradients use
no randomness, so the run's trajectory is the one plain train.py gives. Design choice: both
estimates on the same minibatches of one trajectory compare directly; two runs (--mgda_params all
vs last_block) would mix the estimate's error with diverging trajectories.

Left out on purpose: multi-machine scheduling, and the paper's 7B setting (use train.py --preset
paper).
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

import cli

import train
from evals import curves
from experiments import claims
from worlds import toyworld

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
LAMBDAS = [0.2, 0.4, 0.6, 0.8]


# ----------------------------------------------------------------------------- the plan

def plan(seeds, lambdas=LAMBDAS, whitening=True):
    """[(run name, train.py flags)] in the order they train; names follow runs.default_out_dir."""
    runs = []
    for seed in seeds:
        specs = [("ppo-h", ["--method", "ppo-h"]), ("ppo-s", ["--method", "ppo-s"]),
                 ("safe-rlhf", ["--method", "safe-rlhf"]), ("fast-rl", ["--method", "fast-rl"]),
                 ("mgda", ["--method", "mgda"]), ("gapo-p1", ["--method", "gapo", "--p", "1"]),
                 ("gapo-p2", ["--method", "gapo", "--p", "2"])]
        for method in ("pgapo", "morlhf"):
            for lam in lambdas:
                pref = f"{lam:g},{1 - lam:g}"
                specs.append((f"{method}-pref{pref.replace(',', '_')}",
                              ["--method", method, "--pref", pref]))
        if whitening:  # the ablation: per-objective whitened advantages (raw is the default)
            specs += [("mgda-whiten", ["--method", "mgda", "--whiten_advantages"]),
                      ("gapo-p2-whiten", ["--method", "gapo", "--p", "2", "--whiten_advantages"])]
        runs += [(f"{name}-s{seed}", flags + ["--seed", str(seed)]) for name, flags in specs]
    return runs


def changed_settings(run_dir, train_argv):
    """Config fields whose saved value differs from what train.py would use now (say, after its
    defaults changed): such a run is stale and is trained again. Model paths, prompts the world
    chose and bookkeeping fields are not compared."""
    with open(os.path.join(run_dir, "train_config.json")) as f:
        saved = json.load(f)
    wanted = dataclasses.asdict(cli.parse_config(train.Config, train.PRESETS, train_argv,
                                                      lora_lr=train.LORA_LR))
    # the model paths, and the prompts when none are given, are what the world fills in
    skip = cli.VOLATILE | {"policy", "reward_model", "cost_model", "iterations", "toy_dir"}
    skip |= set() if wanted["prompts"] else {"prompts"}
    return [f"{k} {saved[k]} -> {v}" for k, v in wanted.items()
            if k not in skip and k in saved and saved[k] != v]


def run_state(run_dir, iterations, train_argv=None):
    """'done' (checkpoint at the final iteration), 'partial N' (checkpoint at iteration N),
    'stale: ...' (trained with other settings: train again), 'empty' (a folder without a
    checkpoint: restart it) or 'new'."""
    state_file = os.path.join(run_dir, "checkpoint", "trainer_state.pt")
    if train_argv is not None and os.path.isfile(os.path.join(run_dir, "train_config.json")):
        changed = changed_settings(run_dir, train_argv)
        if changed:
            return "stale: " + ", ".join(changed)
    if os.path.isfile(state_file):
        import torch
        done = torch.load(state_file, map_location="cpu", weights_only=False)["iteration"]
        return "done" if done >= iterations else f"partial {done}"
    return "empty" if os.path.isdir(run_dir) and os.listdir(run_dir) else "new"


def probe_name(args):
    return f"gapo-p2-s{args.seeds[0]}"  # the run that also records the alpha agreement


def train_command(name, run_dir, flags, args):
    probe = name == probe_name(args) and not args.skip_alpha
    entry = (["-m", "experiments.study", "--alpha_probe"] if probe
             else [os.path.join(ROOT, "train.py")])
    return [sys.executable, *entry, *flags, "--iterations", str(args.iterations),
            "--toy_dir", args.toy_dir, "--toy_size", args.toy_size,
            "--eval_every", str(args.eval_every),
            "--out_dir", run_dir, *args.train_args]


def run_logged(cmd, log_path, env=None):
    """Run cmd with its output appended to log_path; (return code, last lines of the log)."""
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env=env).returncode
    with open(log_path) as f:
        tail = [line.rstrip() for line in f.read().replace("\r", "\n").splitlines()
                if line.strip()][-6:]
    return code, tail


def last_log_line(run_dir):
    try:
        with open(os.path.join(run_dir, "log.jsonl")) as f:
            r = json.loads(f.read().strip().splitlines()[-1])
        return (f"iteration {r['iteration']}: helpful {r['score_helpful']:+.3f} "
                f"harmless {r['score_harmless']:+.3f} kl {r['kl']:.3f}")
    except (OSError, IndexError, KeyError, ValueError):
        return ""


def train_all(runs, args):
    """Train what is missing; returns (finished run folders, failed names)."""
    from concurrent.futures import ThreadPoolExecutor
    env = dict(os.environ)
    if args.jobs > 1:  # share the cores instead of every job grabbing all of them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // args.jobs))
    todo, finished, failed = [], [], []
    for name, flags in runs:
        run_dir = os.path.join(args.out_root, name)
        cmd = train_command(name, run_dir, flags, args)
        state = run_state(run_dir, args.iterations, cmd[cmd.index("--method"):])
        if state.startswith("stale"):
            print(f"{name}: trained with other settings ({state[7:]}); training it again.")
        if state == "done":
            finished.append(run_dir)
            continue
        if state.startswith("partial") and not args.resume:
            print(f"{name}: interrupted at {state.split()[1]} of {args.iterations} iterations; "
                  f"rerun with --resume to continue it (left out of this evaluation).")
            continue
        extra = (["--resume"] if state.startswith("partial")
                 else ["--overwrite"] if state != "new" else [])
        todo.append((name, run_dir, cmd + extra, state.split(":")[0]))
    print(f"study: {len(finished)} of {len(runs)} runs already done, {len(todo)} to train "
          f"({args.iterations} iterations each) in {args.out_root}")
    if args.dry_run:
        for name, _, cmd, state in todo:
            print(f"  [{state}] {' '.join(cmd[1:])}")
        return finished, failed

    def one(item):
        i, (name, run_dir, cmd, state) = item
        t0, tag, log = (time.time(), f"[{i + 1}/{len(todo)}] {name}:",
                        os.path.join(args.out_root, "logs", name + ".out"))
        print(f"{tag} {'resuming' if state.startswith('partial') else 'training'} ...", flush=True)
        code, tail = run_logged(cmd, log, env)
        if code == 0:
            print(f"{tag} done in {time.time() - t0:.0f} s; {last_log_line(run_dir)}", flush=True)
        else:
            print(f"{tag} FAILED (exit {code}); last lines of {log}:\n    " + "\n    ".join(tail),
                  flush=True)
        return run_dir, code == 0

    # outside the run folders: train.py owns those
    os.makedirs(os.path.join(args.out_root, "logs"), exist_ok=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for run_dir, ok in pool.map(one, enumerate(todo)):
            if ok:
                finished.append(run_dir)
            else:
                failed.append(os.path.basename(run_dir))
    return sorted(finished), failed


# ----------------------------------------------------------------------------- alpha agreement

def alpha_probe(train_argv):
    """train.main(train_argv), recording per minibatch the Gram matrices of the K objective
    gradients over the last block and over all trainable parameters in <out_dir>/alpha_probe.jsonl
    (appended on --resume; the summary keeps the last record of each (iteration, minibatch)). The
    recorder stands in for gapo.loss_weights while the run lasts and returns exactly what it
    returns."""
    import torch
    import gapo
    from formats import models as layouts
    from mgda import gram_matrix
    cfg = cli.parse_config(train.Config, train.PRESETS, train_argv)
    out_dir = cfg.out_dir or cli.default_out_dir(cfg)
    path = os.path.join(out_dir, "alpha_probe.jsonl")
    # weigh calls per iteration
    per_iteration = cfg.ppo_epochs * (cfg.batch_size // cfg.micro_batch_size)

    policies = []  # the policy, caught when train.py picks its MGDA parameters

    def mgda_parameters(policy, which):
        policies.append(policy)
        return pick(policy, which)

    def loss_weights(method, losses, params, p, preference, **kwargs):
        if not calls:  # the first step: train.py has checked the folder and cut the log by now
            log_path = os.path.join(out_dir, "log.jsonl")
            done = (sum(1 for line in open(log_path) if line.strip())
                    if os.path.isfile(log_path) else 0)
            calls.append(done * per_iteration)
            if done == 0 and os.path.isfile(path):  # a fresh start
                os.remove(path)
        chosen = {which: pick(policies[-1], which) for which in ("last_block", "all")}
        iteration, minibatch = divmod(calls[0], per_iteration)
        record = {"iteration": iteration + 1, "minibatch": minibatch}
        # the same losses and graph: both estimates see one minibatch
        for which, ps in chosen.items():
            grads = [torch.autograd.grad(loss, ps, retain_graph=True, allow_unused=True)
                     for loss in losses]
            grads = [[torch.zeros_like(q) if g is None else g for g, q in zip(gs, ps)]
                     for gs in grads]
            # (K, K) float64
            record[which] = gram_matrix(grads).tolist()
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
        calls[0] += 1
        return weigh(method, losses, params, p, preference, **kwargs)

    calls = []  # loss_weights calls so far, counted from the checkpoint's iteration
    # loading.py and train.py call layouts.mgda_parameters and gapo.loss_weights through their
    # modules: the recorder stands in for both while the run lasts, and returns exactly what they
    # return.
    pick, weigh = layouts.mgda_parameters, gapo.loss_weights
    layouts.mgda_parameters, gapo.loss_weights = mgda_parameters, loss_weights
    try:
        train.main(train_argv)
    finally:
        layouts.mgda_parameters, gapo.loss_weights = pick, weigh


def read_probe(path):
    """The probe's records, the last one of each (iteration, minibatch) kept (a resumed run repeats
    some)."""
    records = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                records[(r["iteration"], r["minibatch"])] = r
    return [records[k] for k in sorted(records)]


def alpha_agreement(records, ps=(0.0, 1.0, 2.0)):
    """records: [{'last_block': G (K, K), 'all': G (K, K)}] -> per p: mean |alpha_last -
    alpha_all| (max over objectives), share of minibatches with the same dominant objective (argmax
    alpha; a tie only agrees with a tie), and the cosine, in the all-parameter space, between
    sum_i w_last_i g_i and the exact GAPO direction sum_i w_all_i g_i (computed from G_all
    alone)."""
    import numpy as np
    from mgda import gapo_weights
    # The objective with the largest alpha, or -1 for a tie (p = 1 with K = 2 always gives
    # alpha = (1/2, 1/2)).
    # With K = 2 and an interior solution, alpha for p = 2 is alpha for p = 0 with the objectives
    # swapped (alpha_1 = (G22 - G12) / (G11 + G22 - 2 G12) becomes (G11 - G12) / (...)), so their
    # alpha differences agree; the update directions, and so the cosines, differ.
    dominant = lambda a: int(np.argmax(a)) if np.sort(a)[-1] - np.sort(a)[-2] > 1e-9 else -1
    out = {}
    for p in ps:
        diffs, same, cosines, a_last, a_all = [], [], [], [], []
        for r in records:
            G_all = np.asarray(r["all"])
            last, full = gapo_weights(r["last_block"], p), gapo_weights(G_all, p)
            al, af = last.alpha.numpy(), full.alpha.numpy()
            wl, wf = last.weights.numpy(), full.weights.numpy()
            diffs.append(np.abs(al - af).max())
            same.append(dominant(al) == dominant(af))
            denominator = np.sqrt(max(wl @ G_all @ wl, 0) * max(wf @ G_all @ wf, 0))
            cosines.append(wl @ G_all @ wf / denominator if denominator > 0 else np.nan)
            a_last.append(al[0])
            a_all.append(af[0])
        corr = (np.corrcoef(a_last, a_all)[0, 1] if np.std(a_last) > 0 and np.std(a_all) > 0
                else float("nan"))
        out[f"p={p:g}"] = {"mean_abs_alpha_diff": float(np.mean(diffs)),
                           "max_abs_alpha_diff": float(np.max(diffs)),
                           "same_dominant_objective": float(np.mean(same)),
                           "direction_cosine_mean": float(np.nanmean(cosines)),
                           "direction_cosine_min": float(np.nanmin(cosines)),
                           "alpha_helpful_correlation": float(corr),
                           "alpha_helpful_last": [float(a) for a in a_last],
                           "alpha_helpful_all": [float(a) for a in a_all]}
    cos = lambda G: (np.asarray(G)[0, 1]
                     / np.sqrt(np.asarray(G)[0, 0] * np.asarray(G)[1, 1] + 1e-300))
    out["objective_gradient_cosine_mean"] = {w: float(np.mean([cos(r[w]) for r in records]))
                                             for w in ("last_block", "all")}
    norm = lambda G: float(np.sqrt(np.trace(np.asarray(G))))  # length of the stacked K gradients
    out["last_block_share_of_gradient_norm"] = float(np.mean(
        [norm(r["last_block"]) / max(norm(r["all"]), 1e-300) for r in records]))
    out["minibatches"] = len(records)
    return out


def report_alpha(args):
    """Summarise the probe run's records into <out_root>/alpha_agreement.json and print it."""
    probe = os.path.join(args.out_root, probe_name(args), "alpha_probe.jsonl")
    if not os.path.isfile(probe):
        print(f"alpha agreement: no {probe}; the run was trained without the probe "
              f"(delete it and rerun to measure).")
        return 1
    records = read_probe(probe)
    if not records:
        print(f"alpha agreement: {probe} holds no records; delete the run and rerun to measure.")
        return 1
    s = alpha_agreement(records)
    summary_path = os.path.join(args.out_root, "alpha_agreement.json")
    with open(summary_path, "w") as f:
        json.dump(s, f, indent=1)
    print(f"alpha agreement over {s['minibatches']} minibatches of {probe_name(args)} "
          f"(last block vs all parameters):")
    for p in ("p=0", "p=1", "p=2"):
        r = s[p]
        print(f"  {p}: mean |alpha_last - alpha_all| {r['mean_abs_alpha_diff']:.3f} "
              f"(max {r['max_abs_alpha_diff']:.3f}), "
              f"same dominant objective {100 * r['same_dominant_objective']:.0f}%, cosine of the "
              f"update to the exact all-parameter one {r['direction_cosine_mean']:.3f} "
              f"(min {r['direction_cosine_min']:.3f})")
    g = s["objective_gradient_cosine_mean"]
    print(f"  mean cosine between the two objectives' gradients: last block "
          f"{g['last_block']:+.3f}, all {g['all']:+.3f}; the last block holds "
          f"{100 * s['last_block_share_of_gradient_norm']:.0f}% of the gradient norm. "
          f"Written to {summary_path}")
    return 0


# ----------------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="one seed, 20 iterations (unless --seeds / --iterations say otherwise)")
    ap.add_argument("--seeds", default=None,
                    help="comma-separated seeds (default 0,1,2,3,4; --quick: 0)")
    ap.add_argument("--iterations", type=int, default=None,
                    help="PPO iterations per run (default: train.py's, "
                    f"{train.Config.iterations}; --quick: 20)")
    ap.add_argument("--eval_every", type=int, default=25,
                    help="learning-curve points: held-out evaluation every N iterations of every "
                    "run (train.py --eval_every; 0 = none)")
    ap.add_argument("--out_root", default=None,
                    help="default runs/study (--quick: runs/study-quick)")
    ap.add_argument("--toy_dir", default="",
                    help="toy world folder (default: the shipped worlds/toy)")
    ap.add_argument("--toy_size", default="default",
                    help="default | tiny (a seconds-long smoke test of the pipeline)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs trained at once; train.py uses one thread by default, so --jobs 2 "
                    "fills a 2-core CPU")
    ap.add_argument("--resume", action="store_true",
                    help="continue interrupted runs from their checkpoints")
    ap.add_argument("--dry_run", action="store_true",
                    help="print the plan and run states; train nothing")
    ap.add_argument("--skip_eval", action="store_true", help="train only")
    ap.add_argument("--skip_ablation", action="store_true", help="no whitened-advantage runs")
    ap.add_argument("--only", default="",
                    help="comma-separated setups of the plan to train, e.g. fast-rl,gapo-p2 "
                    "(default: all; experiments/budget.py's doubling check uses it)")
    ap.add_argument("--skip_alpha", action="store_true",
                    help="train the GAPO p=2 run plainly, no alpha agreement")
    ap.add_argument("--eval_args", default="",
                    help="extra flags for evaluate.py, e.g. '--samples_per_prompt 8'")
    args, train_args = ap.parse_known_args(argv)
    args.train_args = train_args  # anything else goes to every train.py call, e.g. --batch_size 8
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2,3,4")).split(",")]
    args.iterations = args.iterations or (20 if args.quick else train.Config.iterations)
    args.out_root = args.out_root or os.path.join("runs", "study-quick" if args.quick else "study")
    args.out_root = os.path.abspath(args.out_root)
    args.toy_dir = os.path.abspath(args.toy_dir) if args.toy_dir else toyworld.SHIPPED
    t0 = time.time()
    if not args.dry_run:
        os.makedirs(args.out_root, exist_ok=True)
        print(f"study: toy world in {args.toy_dir} (checked; built only if it is missing)",
              flush=True)
        code = subprocess.run([sys.executable, "-m", "worlds.toyworld", "--out", args.toy_dir,
                               "--size", args.toy_size],
                              cwd=ROOT, stdout=subprocess.DEVNULL).returncode
        if code != 0:
            raise SystemExit(f"error: building the toy world in {args.toy_dir} failed; run "
                             f"python -m worlds.toyworld --out {args.toy_dir} to see why.")
    runs = plan(args.seeds, whitening=not args.skip_ablation)
    if args.only:
        wanted = set(args.only.split(","))
        setups = {name.rsplit("-s", 1)[0] for name, _ in runs}
        if wanted - setups:
            raise SystemExit(f"error: --only: unknown setup {sorted(wanted - setups)[0]!r}; "
                             f"the plan has {', '.join(sorted(setups))}.")
        runs = [(name, flags) for name, flags in runs if name.rsplit("-s", 1)[0] in wanted]
    finished, failed = train_all(runs, args)
    code = 1 if failed else 0
    if not args.skip_eval and finished and not args.dry_run:
        cmd = [sys.executable, os.path.join(ROOT, "evaluate.py"), *finished, "--soup", "auto",
               "--soup_lambdas", ",".join(f"{x:g}" for x in LAMBDAS),
               "--out", os.path.join(args.out_root, "eval"),
               *args.eval_args.split()]
        print(f"study: evaluating {len(finished)} runs and their soups into {args.out_root}/eval",
              flush=True)
        code = max(code, subprocess.run(cmd, cwd=ROOT).returncode)
    if not args.skip_eval and finished and not args.dry_run and code == 0:
        print("study: the paper's claims, with 95% confidence intervals over seeds", flush=True)
        claims.main([args.out_root])
    if finished and not args.dry_run and args.eval_every:
        print("study: learning curves (mean over seeds) and when each setup settles", flush=True)
        curves.main([args.out_root, "--out", os.path.join(args.out_root, "eval")])
    if (not args.skip_alpha and not args.dry_run
            and os.path.join(args.out_root, probe_name(args)) in finished):
        code = max(code, report_alpha(args))
    print(f"study: finished in {(time.time() - t0) / 60:.1f} min"
          + (f"; failed runs: {', '.join(failed)}" if failed else ""))
    return code


if __name__ == "__main__":
    if sys.argv[1:2] == ["--alpha_probe"]:
        alpha_probe(sys.argv[2:])
    else:
        sys.exit(main(sys.argv[1:]))
