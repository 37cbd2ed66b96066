"""The shipped toy world, train.py's --eval_every learning curve (the same numbers evaluate.py
gives the checkpoint, training unchanged by it), evals/curves.py and experiments/budget.py."""
import json
import os
import subprocess
import sys

import pytest

import loading

import train
from worlds import toyworld

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--toy_size", "tiny", "--batch_size", "4", "--minibatch_size", "4", "--micro_batch_size",
         "2", "--max_new_tokens", "8", "--ppo_epochs", "1", "--method", "gapo", "--p", "2"]
NOT_TRAINING = ("time_", "eval_", "tokens_per_second")  # keys that do not describe the training


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------- the shipped world

def test_the_shipped_world_is_complete_valid_and_used_by_default(monkeypatch):
    assert toyworld.check_toyworld(toyworld.SHIPPED) is None  # every file's SHA-256 matches
    with open(os.path.join(toyworld.SHIPPED, "manifest.json")) as f:
        manifest = json.load(f)
    for part in ("sft", "reward", "cost"):
        assert f"{part}/model.safetensors" in manifest["files"]
    assert (manifest["seed"], manifest["size"]) == (0, "default")

    # The default run resolves to it and never builds (a build would call build_toyworld).
    def no_build(*args, **kwargs):
        raise AssertionError("the shipped world was rebuilt")
    monkeypatch.setattr(toyworld, "build_toyworld", no_build)
    cfg = train.Config()
    assert cfg.toy_dir == "" and loading.resolve_world(cfg).name == "toy"
    assert cfg.policy == os.path.join(toyworld.SHIPPED, "sft")
    assert cfg.cost_model == os.path.join(toyworld.SHIPPED, "cost")


def test_a_changed_shipped_file_is_noticed(tmp_path):
    import shutil
    copy = tmp_path / "toy"
    shutil.copytree(toyworld.SHIPPED, copy, ignore=shutil.ignore_patterns("*.lock"))
    assert toyworld.check_toyworld(str(copy)) is None
    with open(copy / "cost" / "config.json", "a") as f:
        f.write(" ")
    assert "cost/config.json is missing or changed" in toyworld.check_toyworld(str(copy))


# ----------------------------------------------------------------------------- --eval_every

def test_eval_every_logs_curve_points_and_leaves_training_unchanged(tiny_toyworld, tmp_path):
    common = SMALL + ["--toy_dir", tiny_toyworld, "--iterations", "5"]
    train.main(common + ["--out_dir", str(tmp_path / "plain")])
    train.main(common + ["--out_dir", str(tmp_path / "curve"), "--eval_every", "2",
                         "--eval_samples", "1"])
    plain, curve = read_log(tmp_path / "plain"), read_log(tmp_path / "curve")
    # Every training number is the same: the evaluation samples in a forked random stream.
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith(NOT_TRAINING)}
    assert [strip(r) for r in plain] == [strip(r) for r in curve]
    # Points at 2, 4 and the last iteration, 5; none elsewhere, none in the plain run.
    assert [r["iteration"] for r in curve if "eval_helpful" in r] == [2, 4, 5]
    assert not any("eval_helpful" in r for r in plain)
    point = curve[-1]
    for key in ("helpful", "harmless", "avg", "harmless_ratio", "harmful_compliance",
                "over_refusal", "benign_helpful", "gt_safe", "cost_sign_agrees"):
        assert isinstance(point[f"eval_{key}"], float), key
    assert point["eval_avg"] == pytest.approx((point["eval_helpful"] + point["eval_harmless"]) / 2)
    assert 0 <= point["eval_harmful_compliance"] <= 1 and point["time_eval"] > 0


def test_the_last_curve_point_is_what_evaluate_prints(tiny_toyworld, tmp_path):
    run = tmp_path / "run"
    train.main(SMALL + ["--toy_dir", tiny_toyworld, "--iterations", "3", "--eval_every", "3",
                        "--eval_samples", "2", "--out_dir", str(run)])
    point = read_log(run)[-1]
    out = tmp_path / "eval"
    done = subprocess.run([sys.executable, "evaluate.py", str(run), "--samples_per_prompt", "2",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with open(out / "runs.csv") as f:
        import csv
        rows = {r["name"]: r for r in csv.DictReader(f)}
    row = rows["run"]  # runs are named by their folder
    for key in ("helpful", "harmless", "harmless_ratio", "harmful_compliance", "over_refusal",
                "benign_helpful"):
        assert float(row[key]) == pytest.approx(point[f"eval_{key}"], abs=1e-6), key


def test_eval_every_refuses_a_prompt_file_without_a_test_split(tiny_toyworld, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "how do i bake bread"}\n')
    with pytest.raises(SystemExit, match="no test split"):
        train.main(SMALL + ["--toy_dir", tiny_toyworld, "--iterations", "1", "--eval_every", "1",
                            "--prompts", str(prompts), "--out_dir", str(tmp_path / "run")])


# ----------------------------------------------------------------------------- evals/curves.py

def write_run(root, name, cfg, points):
    """A finished run folder as train.py writes it: train_config.json and log.jsonl with eval_*."""
    run = root / name
    run.mkdir(parents=True)
    (run / "train_config.json").write_text(json.dumps(cfg))
    with open(run / "log.jsonl", "w") as f:
        for t in range(1, cfg["iterations"] + 1):
            record = {"iteration": t, "score_helpful": 0.0}
            if t in points:
                record.update({f"eval_{k}": v for k, v in points[t].items()})
            f.write(json.dumps(record) + "\n")


BASE = {"method": "gapo", "p": 2.0, "pref": "0.5,0.5", "iterations": 4, "eval_every": 2}


def test_mean_curves_average_seeds_and_start_at_the_sft_point(tmp_path):
    from evals import curves
    for seed, h in ((0, 1.0), (1, 3.0)):
        write_run(tmp_path, f"g{seed}", {**BASE, "seed": seed},
                  {2: {"helpful": h, "harmless": 0.0}, 4: {"helpful": 2 * h, "harmless": 1.0}})
    write_run(tmp_path, "ppo", {**BASE, "method": "ppo-h", "seed": 0},
              {2: {"helpful": 5.0, "harmless": 0.0}, 4: {"helpful": 6.0, "harmless": -1.0}})
    # an unfinished run (its last point is not the last iteration) and a stray folder are skipped
    write_run(tmp_path, "unfinished", {**BASE, "seed": 2}, {2: {"helpful": 9.0, "harmless": 9.0}})
    (tmp_path / "logs").mkdir()
    runs = curves.read_runs(str(tmp_path))
    assert len(runs) == 3
    mean = curves.mean_curves(runs, start={"helpful": -1.0, "harmless": 2.0})
    g = mean["gapo p=2"]
    assert g["seeds"] == 2 and g["iterations"] == [0, 2, 4]
    assert g["helpful"] == [-1.0, 2.0, 4.0] and g["harmless"] == [2.0, 0.0, 1.0]
    # sample std (ddof 1) of (1, 3) and (2, 6); the start has none
    assert g["helpful_std"] == pytest.approx([0.0, 2 ** 0.5, 8 ** 0.5])
    assert mean["ppo-h"]["helpful"] == [-1.0, 5.0, 6.0]


@pytest.mark.parametrize("seed", range(20))
def test_settled_at_matches_a_brute_force_reading(seed):
    import numpy as np
    from evals import curves
    rng = np.random.default_rng(seed)
    its = list(range(0, 260, 25))
    curve = {"iterations": its, "helpful": np.cumsum(rng.normal(0, 0.08, len(its))).tolist(),
             "harmless": (3 + rng.normal(0, 0.04, len(its))).tolist(),
             "benign_helpful": np.clip(np.cumsum(rng.normal(0, 0.03, len(its))), 0, 1).tolist()}
    t, metric = curves.settled_at(curve)

    def settled(i):  # every later point of every metric within its tolerance of the final value
        return all(abs(curve[k][j] - curve[k][-1]) <= curves.TOLERANCE[k]
                   for k in ("helpful", "harmless", "benign_helpful") for j in range(i, len(its)))
    first = min(i for i in range(len(its)) if settled(i))
    assert t == its[first]
    # the named metric is the one that settled last: on its own it settles exactly at t
    assert curves.settled_at(curve, {metric: curves.TOLERANCE[metric]})[0] == t


def test_curve_figures_are_written_as_png_and_pdf(tmp_path):
    from evals import curves
    its = [0, 25, 50]
    curve = lambda h: {"iterations": its, "seeds": 2,
                       **{k: [h, h + 0.1, h + 0.2] for k in ("helpful", "harmless") + curves.GT},
                       **{k + "_std": [0.0, 0.1, 0.1] for k in ("helpful", "harmless") + curves.GT}}
    written = curves.plot_curves({"gapo p=2": curve(0.1), "mgda": curve(0.2)}, str(tmp_path),
                                 settle=25)
    names = sorted(os.path.basename(p) for p in written)
    assert names == sorted(f"curves_{n}.{e}" for n in ("plane", "scores", "gt")
                           for e in ("png", "pdf"))
    assert all(os.path.getsize(p) > 1000 for p in written)


def test_budget_compares_two_studies_seed_by_seed(tmp_path, capsys):
    from experiments import budget
    point = lambda h, b: {"helpful": h, "harmless": 1.0, "avg": (h + 1.0) / 2,
                          "harmful_compliance": 0.0, "over_refusal": 0.1, "benign_helpful": b}
    for seed, (h1, h2) in enumerate([(1.0, 1.2), (2.0, 2.1), (1.5, 1.9)]):
        write_run(tmp_path / "short", f"g{seed}", {**BASE, "seed": seed}, {4: point(h1, 0.5)})
        write_run(tmp_path / "long", f"g{seed}", {**BASE, "seed": seed, "iterations": 8},
                  {8: point(h2, 0.5)})
    assert budget.main([str(tmp_path / "short"), str(tmp_path / "long")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[2]: line for line in out.splitlines()[1:]}  # "gapo p=2 METRIC"
    # helpful changes by (0.2, 0.1, 0.4): mean 0.233, t(2) interval 4.303 * std / sqrt(3)
    assert "+1.50    +1.73  +0.23 [-0.15, +0.61]" in rows["helpful"]
    assert "+0.00 [nan, nan]" not in rows["benign_helpful"] and "+0.00" in rows["benign_helpful"]
    with pytest.raises(SystemExit, match="is not a folder"):
        budget.main([str(tmp_path / "short"), str(tmp_path / "nowhere")])


def test_the_world_command_checks_the_shipped_world_without_building():
    done = subprocess.run([sys.executable, "-m", "worlds.toyworld"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"the toy world at {toyworld.SHIPPED} is valid" in done.stdout
    assert "building" not in done.stdout and "reward model: held-out pair accuracy" in done.stdout


def test_the_shipped_sft_row_is_the_one_the_readme_prints():
    """evaluate.py's SFT row on the shipped world is the study's, on whatever machine this runs:
    a fixed model sampled with fixed seeds (only a rebuilt world would move it)."""
    import csv
    from evals.heldout import heldout_metrics, toy_test_prompts
    from evals.tables import GEN_FIELDS
    from model import load_policy
    from formats.models import load_tokenizer
    from formats.models import load_score_model
    from rewards import Scorer
    with open(os.path.join(ROOT, "experiments", "results", "study_table_toy.csv")) as f:
        sft = next(r for r in csv.DictReader(f) if r["method"] == "sft")
    paths = toyworld.toy_paths()
    cfg = train.Config()
    scorers = [Scorer(*load_score_model(paths[k], "cpu", None), k) for k in ("reward", "cost")]
    got = heldout_metrics(load_policy(paths["sft"], "cpu", None).eval(),
                          load_tokenizer(paths["sft"]), scorers, toy_test_prompts(),
                          [getattr(cfg, k) for k in GEN_FIELDS], True, samples=4)
    for key, digits in (("helpful", 3), ("harmless", 3), ("harmless_ratio", 3),
                        ("harmful_compliance", 3), ("over_refusal", 3), ("benign_helpful", 3)):
        assert round(got[key], digits) == round(float(sft[key]), digits), (key, got[key], sft[key])


def test_another_size_never_builds_over_the_shipped_world(monkeypatch, tmp_path):
    built = []
    monkeypatch.setattr(toyworld, "build_toyworld", lambda out, *a, **k: built.append(out) or
                        os.makedirs(out) or {"seed": 0})
    monkeypatch.setattr(toyworld, "describe", lambda m: "")
    monkeypatch.chdir(tmp_path)
    cfg = train.Config(toy_size="tiny")
    loading.resolve_world(cfg)
    assert built and not built[0].startswith(toyworld.SHIPPED)
    assert cfg.policy == os.path.abspath(os.path.join("cache", "toyworld-tiny", "sft"))
    assert toyworld.check_toyworld(toyworld.SHIPPED) is None
