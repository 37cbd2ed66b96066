"""--report_to: the log's records flattened to named scalars, written to TensorBoard event files
that are read back, a resumed run's points purged past its checkpoint, and one sentence for a
tracker whose library is missing."""
import glob
import importlib.util

import pytest

import runs
import train
from tests.test_train import SMALL, read_log
from tracking import trackers


def test_flatten_names_per_objective_values_and_pairs():
    names = ["helpful", "harmless", "brief"]
    record = {"iteration": 3, "kl": 0.5, "lambda": None, "skipped": False, "alpha": [0.2, 0.3, 0.5],
              "grad_cosine": [[1.0, -0.4, 0.1], [-0.4, 1.0, 0.7], [0.1, 0.7, 1.0]],
              "weights": [1.0], "losses": [0.1, 0.2], "note": "text"}
    assert trackers.flatten(record, names) == {
        "iteration": 3.0, "kl": 0.5, "alpha/helpful": 0.2, "alpha/harmless": 0.3,
        "alpha/brief": 0.5, "grad_cosine/helpful_harmless": -0.4, "grad_cosine/helpful_brief": 0.1,
        "grad_cosine/harmless_brief": 0.7, "weights/0": 1.0, "losses/0": 0.1, "losses/1": 0.2}


def scalars(out):
    """{tag: [(step, value)]} of every event file under out/tensorboard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    files = glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))
    assert files, "no event file"
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_gets_every_logged_number_and_a_resume_purges(tiny_toyworld, tmp_path,
                                                                   monkeypatch):
    out = tmp_path / "run"
    base = SMALL + ["--toy_dir", tiny_toyworld, "--out_dir", str(out), "--method", "gapo",
                    "--iterations", "3", "--save_every", "1", "--report_to", "tensorboard",
                    "--keep_checkpoints", "2"]
    real_save = runs.save_checkpoint

    def full_disk_at_3(*args, **kwargs):  # iteration 3 is logged, then its checkpoint fails
        if args[8] == 3:
            raise runs.SaveError("saving the checkpoint of iteration 3 failed (disk full)")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(runs, "save_checkpoint", full_disk_at_3)
    with pytest.raises(SystemExit, match="iteration 3 failed"):
        train.main(base)
    assert [s for s, _ in scalars(out)["score_helpful"]] == [1, 2, 3]
    monkeypatch.setattr(runs, "save_checkpoint", real_save)
    train.main(base + ["--resume"])  # from iteration 2: iteration 3 again
    seen = scalars(out)
    log = read_log(out)
    for r in log:
        flat = trackers.flatten(r, ["helpful", "harmless"])
        for tag, value in flat.items():
            points = dict(seen[tag])
            assert points[r["iteration"]] == pytest.approx(value, rel=1e-6), tag
    assert [s for s, _ in seen["score_helpful"]] == [1, 2, 3]  # no step twice
    # --keep_checkpoints 2 beside the tracker: the latest checkpoint and the one before it
    assert (out / "checkpoint").is_dir() and (out / "checkpoint-2").is_dir()
    assert not (out / "checkpoint-1").exists()
    assert {"alpha/helpful", "alpha/harmless", "grad_cosine/helpful_harmless",
            "value_error/harmless", "theorem_gap"} <= set(seen)


def test_a_missing_tracker_library_is_one_sentence(tiny_toyworld, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SystemExit, match="--report_to wandb needs the wandb package, which is not "
                                         "installed; pip install wandb"):
        train.main(SMALL + ["--toy_dir", tiny_toyworld, "--out_dir", str(tmp_path / "r"),
                            "--report_to", "wandb"])
    assert not (tmp_path / "r").exists()  # stopped before the run folder
    with pytest.raises(ValueError, match="unknown report_to 'mlflow'"):
        trackers.check("mlflow")
