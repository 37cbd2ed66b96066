"""K objectives from the command line: --objective NAME=SOURCE (a scorer, -scorer, py:MODULE.FN),
their parsing and checks, the objective matrix, and K = 3 runs end to end on the tiny toy world."""
import json
import os

import pytest
import torch

import cli
import train
from loading import python_scorer
from rewards import Objective, objective_matrix
from worlds import toyworld

SMALL = ["--toy_size", "tiny", "--iterations", "2", "--batch_size", "4", "--minibatch_size", "4",
         "--micro_batch_size", "2", "--max_new_tokens", "8", "--ppo_epochs", "1"]


def log_of(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_objective_flags_parse_in_order_with_signs():
    assert cli.parse_objective("helpful=my/reward") == ("helpful", "my/reward", 1.0)
    assert cli.parse_objective("harmless=-PKU-Alignment/beaver-7b-v1.0-cost") == (
        "harmless", "PKU-Alignment/beaver-7b-v1.0-cost", -1.0)
    assert cli.parse_objective("brevity=py:rules.short") == ("brevity", "py:rules.short", 1.0)
    for bad in ("nonsense", "=x", "two words=x", "x=", "x=-"):
        with pytest.raises(ValueError, match="must read NAME=SOURCE"):
            cli.parse_objective(bad)
    cfg = cli.parse_config(train.Config, train.PRESETS,
                           ["--objective", "a=x", "--objective", "b=-y", "--objective=c=py:m.f"])
    assert cfg.objective == ["a=x", "b=-y", "c=py:m.f"] and cli.objective_names(cfg) == ["a", "b", "c"]
    assert cli.objective_names(cli.parse_config(train.Config, train.PRESETS, [])) == [
        "helpful", "harmless"]
    with pytest.raises(ValueError, match="a is given twice"):
        cli.objective_names(cli.parse_config(train.Config, train.PRESETS,
                                             ["--objective", "a=x", "--objective", "a=y"]))
    with pytest.raises(ValueError, match="at least two --objective"):
        cli.objective_names(cli.parse_config(train.Config, train.PRESETS, ["--objective", "a=x"]))


def test_objective_matrix_applies_each_sign_and_checks_a_function(tmp_path, monkeypatch):
    prompts, responses = ["p1", "p2"], ["one two three", "one"]
    length = Objective("length", lambda p, r: [len(x.split()) for x in r])
    short = Objective("short", lambda p, r: [len(x.split()) for x in r], sign=-1.0)
    matrix = objective_matrix([length, short], prompts, responses)
    assert matrix.dtype == torch.float32 and matrix.tolist() == [[3.0, -3.0], [1.0, -1.0]]
    with pytest.raises(ValueError, match="returned 1 scores for 2 responses"):
        objective_matrix([Objective("bad", lambda p, r: [0.0])], prompts, responses)
    with pytest.raises(ValueError, match="not finite"):
        objective_matrix([Objective("nan", lambda p, r: [0.0, float("nan")])], prompts, responses)
    # a module name per test: a module once imported stays in sys.modules
    (tmp_path / "rules_short.py").write_text("def short(prompts, responses):\n"
                                             "    return [-len(r) for r in responses]\n")
    monkeypatch.chdir(tmp_path)
    assert python_scorer("py:rules_short.short")(["p"], ["abc"]) == [-3]
    with pytest.raises(ValueError, match="cannot be imported"):
        python_scorer("py:rules_short.missing")
    with pytest.raises(ValueError, match="py:MODULE.FUNCTION"):
        python_scorer("py:nodot")


def test_the_default_objectives_spelled_out_train_the_same_run(tiny_toyworld, tmp_path):
    """--objective helpful=REWARD --objective harmless=-COST is the default, bit for bit."""
    paths = toyworld.toy_paths(tiny_toyworld)
    base = SMALL + ["--toy_dir", tiny_toyworld, "--method", "gapo"]
    train.main(base + ["--out_dir", str(tmp_path / "default")])
    train.main(base + ["--out_dir", str(tmp_path / "spelled"),
                       "--objective", f"helpful={paths['reward']}",
                       "--objective", f"harmless=-{paths['cost']}"])
    strip = lambda r: {k: v for k, v in r.items()
                       if not k.startswith("time_") and k != "tokens_per_second"}
    assert [strip(r) for r in log_of(tmp_path / "default")] == [
        strip(r) for r in log_of(tmp_path / "spelled")]


@pytest.mark.parametrize("method", ["gapo", "mgda", "morlhf", "fast-rl", "ppo-s"])
def test_three_objectives_with_a_python_rule_train_every_method(tiny_toyworld, tmp_path,
                                                                monkeypatch, method):
    (tmp_path / "rules_brevity.py").write_text("def brevity(prompts, responses):\n"
                                       "    return [-len(r.split()) / 10 for r in responses]\n")
    monkeypatch.chdir(tmp_path)
    paths = toyworld.toy_paths(tiny_toyworld)
    args = SMALL + ["--toy_dir", tiny_toyworld, "--method", method, "--out_dir", str(tmp_path / "r"),
                    "--objective", f"helpful={paths['reward']}",
                    "--objective", f"harmless=-{paths['cost']}",
                    "--objective", "brevity=py:rules_brevity.brevity"]
    if method == "morlhf":
        args += ["--pref", "0.4,0.4,0.2"]
    train.main(args)
    log = log_of(tmp_path / "r")
    assert [r["iteration"] for r in log] == [1, 2]
    for r in log:
        assert {"score_helpful", "score_harmless", "score_brevity"} <= set(r)
        assert r["score_brevity"] < 0  # -words / 10
        assert len(r["weights"]) == (3 if method in ("gapo", "mgda", "ppo-s") else 1)
        if method in ("gapo", "mgda"):
            assert len(r["alpha"]) == 3 and abs(sum(r["alpha"]) - 1) < 1e-6
            assert torch.tensor(r["grad_cosine"]).shape == (3, 3)
        assert len(r["value_error"]) == 3  # the critic has K = 3 value heads


def test_methods_and_flags_that_need_two_objectives_say_so(tiny_toyworld, tmp_path, monkeypatch):
    (tmp_path / "rules_one.py").write_text("def one(prompts, responses):\n"
                                           "    return [1.0] * len(responses)\n")
    monkeypatch.chdir(tmp_path)
    paths = toyworld.toy_paths(tiny_toyworld)
    three = ["--objective", f"helpful={paths['reward']}", "--objective", f"harmless=-{paths['cost']}",
             "--objective", "one=py:rules_one.one"]
    base = SMALL + ["--toy_dir", tiny_toyworld, "--out_dir", str(tmp_path / "r")]
    with pytest.raises(SystemExit, match="safe-rlhf needs exactly a reward and a cost objective"):
        train.main(base + ["--method", "safe-rlhf"] + three)
    with pytest.raises(SystemExit, match="--pref"):
        train.main(base + ["--method", "morlhf", "--overwrite"] + three)  # 0.5,0.5 is K = 2
    with pytest.raises(SystemExit, match="--eval_every measures the reward and cost"):
        train.main(base + ["--method", "gapo", "--eval_every", "1", "--overwrite"] + three)



def test_ppo_trains_the_objective_its_index_names(tiny_toyworld, tmp_path, monkeypatch):
    (tmp_path / "rules_brevity.py").write_text("def brevity(prompts, responses):\n"
                                               "    return [-len(r.split()) / 10 for r in responses]\n")
    monkeypatch.chdir(tmp_path)
    paths = toyworld.toy_paths(tiny_toyworld)
    three = ["--objective", f"helpful={paths['reward']}", "--objective", f"harmless=-{paths['cost']}",
             "--objective", "brief=py:rules_brevity.brevity"]
    base = SMALL + ["--toy_dir", tiny_toyworld, "--method", "ppo"] + three
    with pytest.raises(SystemExit, match="--objective_index 3 names no objective; ppo trains one of "
                                         "the 3 .helpful, harmless, brief.: give 0 to 2"):
        train.main(base + ["--objective_index", "3"])
    train.main(base + ["--objective_index", "2"])  # no --out_dir: the default names the objective
    log = log_of(tmp_path / "runs" / "ppo-brief-s0")
    assert [r["weights"] for r in log] == [[0.0, 0.0, 1.0]] * 2
