"""The shipped toy world, train.py's --eval_every learning curve (the same numbers evaluate.py gives
the checkpoint, training unchanged by it), and the curve figures and budget rule of evals/curves.py."""
import json
import os
import subprocess
import sys

import pytest

import runs
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
    assert cfg.toy_dir == "" and runs.resolve_models(cfg) is toyworld
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
