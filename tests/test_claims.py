"""experiments/claims.py: the t interval by hand, verdicts, and every claim on a synthetic study."""
import csv
import json
import math

import numpy as np
import pytest

from experiments import claims


def test_paired_interval_matches_the_t_formula_by_hand():
    mean, low, high = claims.paired_interval([1.0, 2.0, 3.0])  # mean 2, sample sd 1, t(2) = 4.303
    half = 4.303 * 1.0 / math.sqrt(3)
    assert mean == pytest.approx(2.0) and low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    rng = np.random.default_rng(0)
    d = rng.normal(0.3, 1.0, size=5)
    mean, low, high = claims.paired_interval(d)
    assert (high - low) / 2 == pytest.approx(2.776 * d.std(ddof=1) / math.sqrt(5))
    assert math.isnan(claims.paired_interval([1.0])[1])  # one seed: no interval


@pytest.mark.parametrize("low, high, direction, expected", [
    (0.1, 0.5, +1, "reproduces"), (-0.5, -0.1, +1, "does not"), (-0.1, 0.2, +1, "cannot tell"),
    (-0.5, -0.1, -1, "reproduces"), (0.1, 0.5, -1, "does not"), (float("nan"), 1, +1, "cannot tell")])
def test_verdict(low, high, direction, expected):
    assert claims.verdict(low, high, direction) == expected


def write_study(root, rows):
    (root / "eval").mkdir(parents=True)
    keys = ["helpful", "harmless", "avg", "benign_helpful"]
    with open(root / "eval" / "runs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "method", "seed", "n_prompts", "n_responses"] + keys)
        for name, method, seed, helpful, harmless in rows:
            w.writerow([name, method, seed, 10, 40, helpful, harmless, (helpful + harmless) / 2, 0.5])


def test_claims_on_a_synthetic_study(tmp_path):
    rows = []
    for seed in range(4):
        e = 0.01 * seed  # small seed noise: every difference below is far outside it
        rows += [(f"gapo-p1-s{seed}", "gapo p=1", seed, 1.0 + e, 3.0),
                 (f"gapo-p2-s{seed}", "gapo p=2 (whiten_advantages=False)", seed, 1.5 - e, 3.0),
                 (f"gapo-p2w-s{seed}", "gapo p=2 (whiten_advantages=True)", seed, 1.0, 3.0),
                 (f"mgda-s{seed}", "mgda", seed, 0.5, 3.0 + e),
                 (f"safe-rlhf-s{seed}", "safe-rlhf", seed, 2.0, 3.0),  # the best Avg: GAPO loses
                 (f"pgapo-4-s{seed}", "pgapo λ_h=0.4", seed, 1.0, 3.0 + e),
                 (f"pgapo-6-s{seed}", "pgapo λ_h=0.6", seed, 1.0, 3.0),
                 (f"morlhf-4-s{seed}", "morlhf λ_h=0.4", seed, 1.0, 3.0 - e),
                 (f"morlhf-6-s{seed}", "morlhf λ_h=0.6", seed, 1.0 + 2 * e, 3.0),
                 (f"soup-s{seed}", "soup λ_h=0.4", seed, 0.1, 2.0),  # dominated by every trained run
                 (f"soup6-s{seed}", "soup λ_h=0.6", seed, 3.0, 0.0)]  # dominated by none
        (tmp_path / f"safe-rlhf-s{seed}").mkdir()
        with open(tmp_path / f"safe-rlhf-s{seed}" / "log.jsonl", "w") as f:
            f.write(json.dumps({"iteration": 1, "lambda": 0.9}) + "\n")
            f.write(json.dumps({"iteration": 2, "lambda": 0.5 + e}) + "\n{\"half")  # torn last line
    write_study(tmp_path, rows)
    out = {r["claim"]: r for r in claims.main([str(tmp_path)])}
    best = out["GAPO has the best Avg"]
    assert (best["a"], best["b"], best["verdict"]) == ("gapo p=2", "safe-rlhf", "does not")
    assert out["GAPO p=2 is more helpful than p=1"]["verdict"] == "reproduces"
    assert out["GAPO p=2 is more helpful than p=1"]["mean"] == pytest.approx(0.5 - 0.03, abs=1e-9)
    assert out["GAPO p=1 is above MGDA"]["verdict"] == "reproduces"
    assert out["P-GAPO is above MORLHF at a balanced preference"]["verdict"] == "cannot tell"
    collapse = out["Safe RLHF's multiplier collapses (final lambda - 1)"]
    assert collapse["verdict"] == "reproduces" and collapse["mean"] == pytest.approx(-0.5 + 0.015)
    soups = out["Rewarded Soups are dominated (share dominated - 1/2)"]
    assert soups["mean"] == pytest.approx(0.0) and soups["verdict"] == "cannot tell"  # 1 of 2 per seed
    with open(tmp_path / "claims.json") as f:
        ablation = json.load(f)["whitening_ablation"]
    assert {(r["method"], r["metric"]) for r in ablation} >= {("gapo p=2", "avg")}
    helpful = [r for r in ablation if r["metric"] == "helpful"][0]
    assert helpful["raw_minus_whitened"] == pytest.approx(0.5 - 0.015)


def test_main_refuses_a_folder_without_an_evaluation(tmp_path):
    with pytest.raises(SystemExit, match="eval/runs.csv"):
        claims.main([str(tmp_path)])
