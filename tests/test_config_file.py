"""--config FILE: a run started from another run's train_config.json has its settings (and, on the
CPU, its log), flags on the command line win over the file, and a bad file is one sentence."""
import json

import pytest

import cli
import train
from tests.test_train import SMALL, read_log


def strip(record):
    return {k: v for k, v in record.items() if not k.startswith("time_") and k != "tokens_per_second"}


def test_a_saved_config_starts_the_same_run(tiny_toyworld, tmp_path):
    first = tmp_path / "first"
    train.main(SMALL + ["--toy_dir", tiny_toyworld, "--out_dir", str(first), "--method", "pgapo",
                        "--pref", "0.3,0.7", "--seed", "4", "--kl_coef", "0.02"])
    saved = json.loads((first / "train_config.json").read_text())
    again = tmp_path / "again"
    train.main(["--config", str(first / "train_config.json"), "--out_dir", str(again)])
    copy = json.loads((again / "train_config.json").read_text())
    assert {k: v for k, v in copy.items() if k not in ("out_dir", "config")} == {
        k: v for k, v in saved.items() if k not in ("out_dir", "config")}
    assert [strip(r) for r in read_log(again)] == [strip(r) for r in read_log(first)]


def test_flags_win_over_the_file_and_the_file_over_the_preset(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"method": "mgda", "seed": 3, "actor_lr": 1e-4, "preset": "paper"}))
    cfg = cli.parse_config(train.Config, train.PRESETS, ["--config", str(path), "--seed", "5"])
    assert (cfg.method, cfg.seed, cfg.actor_lr) == ("mgda", 5, 1e-4)
    assert cfg.batch_size == train.PRESETS["paper"]["batch_size"]  # the file's preset fills the rest
    lora = cli.parse_config(train.Config, train.PRESETS, ["--config", str(path), "--lora_r", "8"],
                            lora_lr=train.LORA_LR)
    assert lora.actor_lr == 1e-4 and lora.critic_lr == train.LORA_LR["paper"]  # the file's lr kept


@pytest.mark.parametrize("content,message", [
    (None, "does not exist; check the path"),
    ("{not json", "is not a JSON file"),
    ("[1, 2]", "holds a JSON list, not an object of Config fields"),
    ('{"methd": "gapo"}', "has fields Config does not know: methd"),
    ('{"seed": "three"}', "field 'seed' should be an int, not 'three'"),
    ('{"resume": true, "seed": true}', "field 'seed' should be an int, not True"),
])
def test_a_bad_config_file_is_one_sentence(tmp_path, content, message):
    path = tmp_path / "c.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit, match=message):
        train.main(["--config", str(path), "--out_dir", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()


def test_the_file_gives_settings_not_the_run_folder_nor_a_resume(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"method": "mgda", "out_dir": "runs/the-source-run"}))
    cfg = cli.parse_config(train.Config, train.PRESETS, ["--config", str(path)])
    assert cfg.method == "mgda" and cfg.out_dir == ""  # the new run gets its own folder
    with pytest.raises(SystemExit, match="--config starts a run and --resume continues one"):
        train.main(["--config", str(path), "--resume", "--out_dir", str(tmp_path / "r")])
    path.write_text(json.dumps({"objective": [1, 2]}))
    with pytest.raises(SystemExit, match="field 'objective' should be a list of strings"):
        train.main(["--config", str(path), "--out_dir", str(tmp_path / "r")])


def test_runs_that_differ_only_in_bookkeeping_share_a_table_row():
    from evals.tables import group_labels
    base = {"method": "gapo", "p": 2.0, "seed": 0}
    other = {**base, "seed": 1, "config": "runs/a/train_config.json", "report_to": "tensorboard",
             "keep_checkpoints": 3}
    assert group_labels([base, other]) == ["gapo p=2", "gapo p=2"]


def test_an_objective_index_out_of_range_on_resume_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no --out_dir: --resume names the default folder first
    with pytest.raises(SystemExit, match="--objective_index 5 names no objective"):
        train.main(["--method", "ppo", "--objective_index", "5", "--resume"])
