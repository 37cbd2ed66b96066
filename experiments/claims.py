"""The paper's claims checked against a study: differences with 95% confidence intervals over seeds.

    python -m experiments.claims runs/study      # reads runs/study/eval/runs.csv and the run logs

For each claim of the paper's Sec. 4 that the toy study can test, a per-seed paired difference
d_s = metric(A, seed s) - metric(B, seed s), its mean and a 95% confidence interval (Student t over
the seeds), and a verdict:
  reproduces   the interval lies on the side the paper claims;
  does not     the interval lies on the other side;
  cannot tell  the interval contains 0 (or fewer than 2 seeds).
The claims (the paper's numbers are in the README beside ours):
  1. GAPO has the best Avg: the better GAPO (p = 1 or 2) minus the best of Safe RLHF, Fast RL, MGDA;
  2. GAPO p = 2 is more helpful than p = 1;
  3. GAPO is above MGDA on Avg (p = 1 and p = 2 separately);
  4. P-GAPO is above MORLHF at a balanced preference (lambda_h = 0.4 and 0.6, averaged per seed);
  5. Safe RLHF's multiplier collapses: its final lambda minus lambda_init (1) is negative;
  6. Rewarded Soups are dominated: per seed, the share of soup points that some trained
     multi-objective run of the same seed dominates, minus 1/2, is positive.
Beside the claims, the whitening ablation: Avg and ground-truth benign-helpful of MGDA and GAPO p=2
with raw minus with whitened advantages (no verdict: the paper does not whiten), and a summary of
alpha, gradient norms and the gradient cosine over training from each GAPO / MGDA run's log.jsonl.

Left out on purpose: multiple-comparison corrections (six claims, read them as six separate tests).
"""
import csv
import json
import math
import os
import sys

import numpy as np

# Two-sided 95% Student t quantiles by degrees of freedom (the normal 1.96 beyond 30).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}
# trained, K = 2
MULTI = ("safe-rlhf", "fast-rl", "mgda", "gapo p=1", "gapo p=2", "pgapo", "morlhf")


def t_quantile(df):
    """The 0.975 quantile of Student's t with df degrees of freedom (table, next lower df)."""
    if df > 30:
        return 1.96
    return T975[max(k for k in T975 if k <= df)]


def paired_interval(differences):
    """(mean, low, high) of the 95% t interval of per-seed differences; NaN bounds under 2 seeds."""
    d = np.asarray([x for x in differences if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(d) == 0:
        return float("nan"), float("nan"), float("nan")
    if len(d) < 2:
        return float(d.mean()), float("nan"), float("nan")
    half = t_quantile(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def verdict(low, high, direction=+1):
    """'reproduces' if the interval is on the claimed side of 0 (direction +1: above), 'does not' if
    it is on the other side, 'cannot tell' if it holds 0 or is undefined."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "cannot tell"
    low, high = (low, high) if direction > 0 else (-high, -low)
    if low > 0:
        return "reproduces"
    if high < 0:
        return "does not"
    return "cannot tell"


# ----------------------------------------------------------------------------- reading a study

def read_runs(path):
    """runs.csv of evaluate.py -> {group label: {seed: {metric: value}}}; seeds as ints."""
    table = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items()
                      if k not in ("name", "method", "seed") and v not in ("", "None")}
            seed = int(float(row["seed"])) if row.get("seed") not in (None, "", "None") else -1
            # With the whitening ablation present, evaluate.py labels the default runs
            # "<method> (whiten_advantages=False)": they are the method's main row here.
            group = row["method"].replace(" (whiten_advantages=False)", "")
            table.setdefault(group, {})[seed] = values
    return table


def final_lambda(run_dir):
    """The last logged Lagrange multiplier of a safe-rlhf run (None if it has no log)."""
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.isfile(path):
        return None
    last = None
    with open(path) as f:
        for line in f:
            try:
                last = json.loads(line).get("lambda", last)
            except ValueError:
                continue  # a half-written last line
    return last


def per_seed(table, group, metric):
    return {seed: row.get(metric) for seed, row in table.get(group, {}).items()}


def differences(a, b):
    """Paired per-seed differences a - b over the seeds both have."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b)) if a[s] is not None and b[s] is not None]


def best_group(table, groups, metric):
    """The group with the highest mean of metric among those present (None if none is)."""
    present = [g for g in groups if g in table]
    if not present:
        return None
    return max(present, key=lambda g: np.mean([r.get(metric, -np.inf) for r in table[g].values()]))


def dominated_share(table, seed):
    """Share of this seed's soup points (helpful, harmless) that a trained multi-objective run of
    the same seed dominates (no worse on both, better on one)."""
    soups = [row for g, rows in table.items() if g.startswith("soup") for s, row in rows.items()
             if s == seed]
    trained = [row for g, rows in table.items() if g.startswith(MULTI) for s, row in rows.items()
               if s == seed]
    if not soups or not trained:
        return None
    point = lambda r: (r["helpful"], r["harmless"])
    dominated = [any(all(x >= y for x, y in zip(point(t), point(s)))
                     and any(x > y for x, y in zip(point(t), point(s))) for t in trained)
                 for s in soups]
    return float(np.mean(dominated))


# ----------------------------------------------------------------------------- the claims

def claim_rows(table, lambdas):
    """[{claim, a, b, metric, mean, low, high, seeds, verdict}] for every claim the study can test.
    lambdas: {seed: final lambda of the safe-rlhf run}."""
    rows = []

    def add(claim, a, b, metric, diffs, direction=+1):
        mean, low, high = paired_interval(diffs)
        rows.append({"claim": claim, "a": a, "b": b, "metric": metric, "mean": mean, "low": low,
                     "high": high, "seeds": len(diffs), "verdict": verdict(low, high, direction)})

    gapo = best_group(table, ["gapo p=1", "gapo p=2"], "avg")
    baseline = best_group(table, ["safe-rlhf", "fast-rl", "mgda"], "avg")
    if gapo and baseline:
        add("GAPO has the best Avg", gapo, baseline, "avg",
            differences(per_seed(table, gapo, "avg"), per_seed(table, baseline, "avg")))
    if "gapo p=1" in table and "gapo p=2" in table:
        add("GAPO p=2 is more helpful than p=1", "gapo p=2", "gapo p=1", "helpful",
            differences(per_seed(table, "gapo p=2", "helpful"),
                        per_seed(table, "gapo p=1", "helpful")))
    for p in ("1", "2"):
        if f"gapo p={p}" in table and "mgda" in table:
            add(f"GAPO p={p} is above MGDA", f"gapo p={p}", "mgda", "avg",
                differences(per_seed(table, f"gapo p={p}", "avg"), per_seed(table, "mgda", "avg")))
    balanced = [(f"pgapo λ_h={lam}", f"morlhf λ_h={lam}") for lam in ("0.4", "0.6")]
    if all(a in table and b in table for a, b in balanced):
        per_lam = []
        for a, b in balanced:  # {seed: difference}, only where both runs have a value
            va, vb = per_seed(table, a, "avg"), per_seed(table, b, "avg")
            per_lam.append({s: va[s] - vb[s] for s in set(va) & set(vb)
                            if va[s] is not None and vb[s] is not None})
        seeds = sorted(set(per_lam[0]) & set(per_lam[1]))
        add("P-GAPO is above MORLHF at a balanced preference", "pgapo λ_h=0.4,0.6",
            "morlhf λ_h=0.4,0.6", "avg", [(per_lam[0][s] + per_lam[1][s]) / 2 for s in seeds])
    if lambdas:
        add("Safe RLHF's multiplier collapses (final lambda - 1)", "safe-rlhf", "lambda_init = 1",
            "lambda", [v - 1.0 for v in lambdas.values() if v is not None], direction=-1)
    seeds = sorted({s for g, rows in table.items() if g.startswith("soup") for s in rows})
    shares = [dominated_share(table, s) for s in seeds]
    if any(x is not None for x in shares):
        add("Rewarded Soups are dominated (share dominated - 1/2)", "trained runs", "soups",
            "dominated share", [x - 0.5 for x in shares if x is not None])
    return rows


def ablation_rows(table):
    """Raw minus whitened advantages for MGDA and GAPO p=2 (the whitened runs are labelled
    '<method> (whiten_advantages=True)' by evaluate.py)."""
    rows = []
    for method in ("mgda", "gapo p=2"):
        raw, white = method, f"{method} (whiten_advantages=True)"
        if raw not in table or white not in table:
            continue
        for metric in ("avg", "helpful", "harmless", "benign_helpful"):
            mean, low, high = paired_interval(differences(per_seed(table, raw, metric),
                                                          per_seed(table, white, metric)))
            rows.append({"method": method, "metric": metric, "raw_minus_whitened": mean, "low": low,
                         "high": high})
    return rows


def training_summary(run_dir, window=10):
    """Mean alpha, gradient norms and cosine over the first and last `window` iterations
    of a log."""
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        records = []
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    out = {}
    for part, chunk in (("first", records[:window]), ("last", records[-window:])):
        for key in ("alpha", "grad_norms"):
            values = [r[key] for r in chunk if r.get(key)]
            if values:
                out[f"{key}_{part}"] = (np.mean(np.array(values, dtype=float), axis=0)
                                        .round(4).tolist())
        cosines = [r["grad_cosine"][0][1] for r in chunk if r.get("grad_cosine")]
        if cosines:
            out[f"cosine_{part}"] = round(float(np.mean(cosines)), 4)
    return out


def format_claims(rows):
    lines = [f"{'claim':<54}{'mean':>9}{'95% CI':>22}  {'n':>2}  verdict"]
    for r in rows:
        ci = f"[{r['low']:+.3f}, {r['high']:+.3f}]" if math.isfinite(r["low"]) else "n/a"
        lines.append(f"{r['claim'][:53]:<54}{r['mean']:>+9.3f}{ci:>22}  "
                     f"{r['seeds']:>2}  {r['verdict']}")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.path.isfile(os.path.join(argv[0], "eval", "runs.csv")):
        raise SystemExit("error: give the study folder that holds eval/runs.csv, for example "
                         "python -m experiments.claims runs/study")
    root = argv[0]
    table = read_runs(os.path.join(root, "eval", "runs.csv"))
    run_dirs = sorted(d for d in os.listdir(root)
                      if os.path.isfile(os.path.join(root, d, "log.jsonl")))
    lambdas = {int(d.rsplit("-s", 1)[1]): final_lambda(os.path.join(root, d))
               for d in run_dirs if d.startswith("safe-rlhf-s")}
    rows = claim_rows(table, lambdas)
    ablation = ablation_rows(table)
    summaries = {d: training_summary(os.path.join(root, d)) for d in run_dirs
                 if d.startswith(("gapo-p2", "gapo-p1", "mgda"))}
    with open(os.path.join(root, "claims.json"), "w") as f:
        json.dump({"claims": rows, "whitening_ablation": ablation, "training": summaries}, f,
                  indent=1)
    print(format_claims(rows))
    for r in ablation:
        print(f"whitening ablation, {r['method']}: {r['metric']} raw - whitened "
              f"{r['raw_minus_whitened']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]")
    print(f"written to {os.path.join(root, 'claims.json')}")
    return rows


if __name__ == "__main__":
    main()
