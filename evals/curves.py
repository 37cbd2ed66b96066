"""Learning curves of a study: each setup's mean trajectory over seeds, when it settles, figures.

    python -m evals.curves runs/study --out experiments/results   # curves_*.png/.pdf, curves.json

Reads the held-out points that train.py --eval_every writes into every run's log.jsonl (evals/
heldout.py: fixed prompts and sampling seed, so the points of one run are comparable and the last
one is evaluate.py's row for the final checkpoint). Runs equal up to their seed are one setup
(evals/tables.group_labels); a curve is the mean over the setup's seeds at each logged iteration.
The start (iteration 0) is the SFT policy measured the same way.

When a setup settles (docs/decisions.md, "Budget"): the first logged iteration t from which the
mean curve stays within TOLERANCE of its final value on every metric (learned Helpful and
Harmless, and on the toy world the ground truth's harmful compliance, over-refusal and benign
help) up to the end of the run. Under the cosine schedule the learning rate falls to 0 at the
end, so a flat end is partly the schedule coming to rest: whether the budget is long enough is
tested by training longer (experiments/budget.py), not read off this rule alone.

Figures (PNG for the README, PDF for papers): the mean trajectory of the main setups in the
(Helpful, Harmless) plane, and the ground-truth rates against iterations; legends, not labels on
the points, so nothing overprints. Left out on purpose: per-seed curves in the figures (they are
in curves.json) and any smoothing.
"""
import argparse
import json
import os
import sys

import numpy as np

from evals.tables import group_labels, run_label

# Largest change from the final value that still counts as settled: learned scores (their seed
# std at the end is about 0.05-0.2) and ground-truth shares (5 points of 160 answers = 8 answers).
TOLERANCE = {"helpful": 0.1, "harmless": 0.1, "harmful_compliance": 0.05, "over_refusal": 0.05,
             "benign_helpful": 0.05}
GT = ("harmful_compliance", "over_refusal", "benign_helpful")
GT_TITLES = {"harmful_compliance": "GT harmful compliance", "over_refusal": "GT over-refusal",
             "benign_helpful": "GT benign prompts answered helpfully"}
# Setups drawn in the figures (every setup is in curves.json and the settle table).
MAIN = ("ppo-h", "ppo-s", "safe-rlhf", "fast-rl", "mgda", "gapo p=1", "gapo p=2",
        "morlhf λ_h=0.6", "pgapo λ_h=0.6")


def read_runs(root):
    """[(config, eval points)] of the finished runs under root; points: [{iteration, metric: v}]."""
    found = []
    for name in sorted(os.listdir(root)):
        run = os.path.join(root, name)
        try:
            with open(os.path.join(run, "train_config.json")) as f:
                cfg = json.load(f)
            with open(os.path.join(run, "log.jsonl")) as f:
                records = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError):
            continue  # not a run folder (logs/, eval/), or a damaged one
        points = [{"iteration": r["iteration"],
                   **{k[5:]: v for k, v in r.items() if k.startswith("eval_")}}
                  for r in records if "eval_helpful" in r]
        if points and points[-1]["iteration"] == cfg.get("iterations"):
            found.append((cfg, points))
    return found


def mean_curves(runs, start=None):
    """{setup: {"iterations": [t], "seeds": n, metric: [mean], metric + "_std": [std]}} over the
    iterations every seed logged; start (SFT metrics) becomes the point at iteration 0."""
    labels = group_labels([cfg for cfg, _ in runs])
    setups, method = {}, {}
    for label, (cfg, points) in zip(labels, runs):
        setups.setdefault(label, []).append({p["iteration"]: p for p in points})
        # the method's own label, and whether it is an ablation (drawn only in the tables)
        method[label] = (run_label(cfg)[1], bool(cfg.get("whiten_advantages")))
    curves = {}
    for label, members in setups.items():
        its = sorted(set.intersection(*(set(m) for m in members)))
        metrics = [k for k in members[0][its[0]] if k != "iteration"]
        curve = {"iterations": its, "seeds": len(members), "method": method[label][0],
                 "ablation": method[label][1]}
        for k in metrics:
            values = np.array([[m[t][k] for t in its] for m in members], dtype=np.float64)
            curve[k] = values.mean(0).tolist()
            curve[k + "_std"] = (values.std(0, ddof=1) if len(members) > 1
                                 else np.zeros(len(its))).tolist()
        if start is not None:
            curve["iterations"] = [0] + its
            for k in metrics:
                curve[k] = [start.get(k, np.nan)] + curve[k]
                curve[k + "_std"] = [0.0] + curve[k + "_std"]
        curves[label] = curve
    return curves


def settled_at(curve, tolerance=TOLERANCE):
    """(t, metric): the first iteration t from which every metric of the mean curve stays within
    its tolerance of the final value up to the end, and the metric that settled last."""
    its, when = curve["iterations"], {}
    for k, tol in tolerance.items():
        if k in curve:
            values = np.asarray(curve[k], dtype=np.float64)
            outside = np.nonzero(np.abs(values - values[-1]) > tol)[0]  # NaN counts as inside
            when[k] = its[outside[-1] + 1] if len(outside) else its[0]
    last = max(when, key=when.get)
    return when[last], last


def settle_table(curves):
    """Lines: each setup's settle iteration, the metric that settled last, seeds; the verdict."""
    rows = [(label, *settled_at(c), c["seeds"], c["iterations"][-1]) for label, c in curves.items()]
    width = max(len(r[0]) for r in rows)
    lines = [f"{'setup':{width}s}  settled at  last to settle        seeds  of iterations"]
    lines += [f"{label:{width}s}  {t:10d}  {str(k):20s}  {n:5d}  {total}"
              for label, t, k, n, total in rows]
    latest = max(rows, key=lambda r: r[1])
    lines.append(f"latest: {latest[0]} settles at iteration {latest[1]} of {latest[4]} "
                 f"(tolerances {', '.join(f'{k} {v:g}' for k, v in TOLERANCE.items())})")
    return "\n".join(lines), latest[1]


def plot_curves(curves, out, settle=None, title=""):
    """curves_plane.{png,pdf}, curves_scores.{png,pdf} (Helpful, Harmless against iterations) and,
    when the curves hold ground truth, curves_gt.{png,pdf}; settle: a dashed line there."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    main = {c.get("method", s): s for s, c in curves.items() if not c.get("ablation")}
    shown = [main[m] for m in MAIN if m in main] or list(curves)[:9]
    name = {s: curves[s].get("method", s) for s in shown}  # "mgda", not "mgda (whiten...=False)"
    colors = {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(shown)}
    written = []
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for s in shown:
        c = curves[s]
        ax.plot(c["helpful"], c["harmless"], color=colors[s], linewidth=1.2, alpha=0.8)
        ax.plot(c["helpful"][-1], c["harmless"][-1], marker="o", color=colors[s], label=name[s],
                linestyle="none", markersize=7)
    first = curves[shown[0]]
    ax.plot(first["helpful"][0], first["harmless"][0], marker="X", color="black", markersize=9,
            linestyle="none", label="SFT (start)")
    ax.set(xlabel="Helpful (mean reward)  → better", ylabel="Harmless (mean −cost)  → better")
    ax.set_title(title or "Mean trajectory over seeds, SFT to the end of training", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    written += _save(fig, out, "curves_plane")
    scores = {"helpful": "Helpful (mean reward)", "harmless": "Harmless (mean −cost)"}
    panels = [("scores", scores, 1.0, "mean ± std over seeds")]
    if all(k in first for k in GT):
        panels.append(("gt", GT_TITLES, 100.0, "% of held-out answers (mean ± std over seeds)"))
    for figure, titles, scale, ylabel in panels:
        fig, axes = plt.subplots(1, len(titles), figsize=(4 * len(titles), 3.6), sharex=True)
        for ax, (k, panel_title) in zip(axes, titles.items()):
            for s in shown:
                c = curves[s]
                mean, std = np.array(c[k]) * scale, np.array(c[k + "_std"]) * scale
                ax.plot(c["iterations"], mean, color=colors[s], label=name[s], linewidth=1.3)
                ax.fill_between(c["iterations"], mean - std, mean + std, color=colors[s],
                                alpha=0.12, linewidth=0)
            if settle is not None:
                ax.axvline(settle, color="grey", linestyle="--", linewidth=1,
                           label=f"last setup settled ({settle})")
            ax.set(title=panel_title, xlabel="iteration")
            if scale == 100.0:
                ax.set_ylim(-3, 103)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(ylabel)
        axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        written += _save(fig, out, f"curves_{figure}")
    plt.close("all")
    return written


def _save(fig, out, name):
    paths = [os.path.join(out, f"{name}.{ext}") for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=130, bbox_inches="tight")
    return paths


def sft_start(cfg):
    """The SFT policy's held-out metrics, measured as train.py --eval_every measures a run."""
    import torch
    from evals.heldout import heldout_metrics, toy_test_prompts
    from evals.tables import GEN_FIELDS
    from model import load_policy
    from formats.models import load_tokenizer
    from rewards import load_scorer
    if cfg.get("prompts"):
        return None  # a real prompt source: the curves start at the first logged point
    torch.set_num_threads(1)
    policy = load_policy(cfg["policy"], "cpu", None).eval()
    # the text the runs' scorers read in training ("auto" for runs saved before the flag)
    scorers = [load_scorer(cfg[k + "_model"], "cpu", None, k, cfg.get("scorer_format") or "auto")
               for k in ("reward", "cost")]
    return heldout_metrics(policy, load_tokenizer(cfg["policy"]), scorers, toy_test_prompts(),
                           [cfg[k] for k in GEN_FIELDS], True, cfg.get("eval_samples", 4))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", help="folder of finished runs that logged --eval_every points")
    ap.add_argument("--out", default=None, help="folder for the figures and curves.json "
                    "(default: <root>/eval)")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.root):
        raise SystemExit(f"error: {args.root} is not a folder; give the folder of a study's runs.")
    runs = read_runs(args.root)
    if not runs:
        raise SystemExit(f"error: no finished run under {args.root} logged learning-curve points; "
                         f"train with --eval_every N (python -m experiments.study does).")
    out = args.out or os.path.join(args.root, "eval")
    os.makedirs(out, exist_ok=True)
    curves = mean_curves(runs, sft_start(runs[0][0]))
    table, latest = settle_table(curves)
    print(table)
    figures = plot_curves(curves, out, settle=latest)
    with open(os.path.join(out, "curves.json"), "w") as f:
        json.dump({"tolerance": TOLERANCE, "latest_settle": latest,
                   "settled": {s: settled_at(c) for s, c in curves.items()},
                   "curves": curves}, f, indent=1)
    print("wrote " + ", ".join(figures + [os.path.join(out, "curves.json")]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
