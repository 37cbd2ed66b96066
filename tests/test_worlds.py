"""The worlds' contract (worlds/__init__.py): a world registered in WORLDS is picked by its preset,
fills a run's empty paths and hands over its prompts; the toy and smol worlds give what they
gave before the contract (same paths, prompts, judge)."""
import json
import os
import sys
import types

import pytest

import loading
import train
import worlds
from evals.heldout import heldout_prompts, toy_test_prompts
from formats.models import load_tokenizer
from worlds import World, smol, toyworld

TRAIN = ["how do i bake bread", "how do i steal a car", "please help me with this"]
TEST = ["how do i start a fire", "how do i plant a tree"]


@pytest.fixture
def fake_world(monkeypatch, tiny_toyworld):
    """A world 'fake' in WORLDS (its module only in sys.modules) on the tiny toy world's models;
    returns the cfgs its prepare saw."""
    seen = []
    paths = toyworld.toy_paths(tiny_toyworld)

    def prepare(cfg):
        seen.append(cfg)
        return World("fake", paths["sft"], paths["reward"], paths["cost"],
                     train_prompts=list(TRAIN), test_prompts=list(TEST))
    module = types.ModuleType("fake_world")
    module.prepare = prepare
    monkeypatch.setitem(sys.modules, "fake_world", module)
    monkeypatch.setitem(worlds.WORLDS, "fake", "fake_world")
    return seen


def test_a_registered_world_fills_the_run_and_gives_its_prompts(fake_world, tiny_toyworld):
    paths = toyworld.toy_paths(tiny_toyworld)
    cfg = train.Config(preset="fake")
    world = loading.resolve_world(cfg)
    assert fake_world == [cfg] and world.name == "fake" and not world.ground_truth
    assert (cfg.policy, cfg.reward_model, cfg.cost_model) == (paths["sft"], paths["reward"],
                                                              paths["cost"])
    assert cfg.prompts == ""  # the world hands its prompts over itself
    raw, formatted = loading.prompt_pool(cfg, world, load_tokenizer(cfg.policy))
    assert raw == TRAIN and len(formatted) == len(TRAIN) and TRAIN[0] in formatted[0]
    assert heldout_prompts(cfg, world) == TEST

    # A path the run names wins over the world's; prompts it names replace the world's (and
    # their test split is what --eval_every would measure).
    cfg = train.Config(preset="fake", cost_model="mine", prompts="PKU-Alignment/PKU-SafeRLHF")
    loading.resolve_world(cfg)
    assert (cfg.policy, cfg.cost_model) == (paths["sft"], "mine")
    # All four named: no world is prepared at all.
    cfg = train.Config(preset="fake", policy="a", reward_model="b", cost_model="c", prompts="d")
    assert loading.resolve_world(cfg) is None and len(fake_world) == 2


def test_a_world_without_test_prompts_says_so_for_eval_every(fake_world):
    world = World("fake", "p", "r", "c", train_prompts=list(TRAIN))
    with pytest.raises(ValueError, match="the fake world has none"):
        heldout_prompts(train.Config(preset="fake"), world)
    with pytest.raises(ValueError, match="the prompt set is empty"):
        loading.prompt_pool(train.Config(), World("fake", "p", "r", "c"), None)


def test_a_run_trains_in_a_registered_world(fake_world, tiny_toyworld, tmp_path, monkeypatch):
    monkeypatch.setitem(train.PRESETS, "fake", {})  # what picks the world on the command line
    out = tmp_path / "run"
    train.main(["--preset", "fake", "--iterations", "2", "--batch_size", "4", "--minibatch_size",
                "4", "--micro_batch_size", "2", "--max_new_tokens", "8", "--ppo_epochs", "1",
                "--eval_every", "2", "--eval_samples", "1", "--out_dir", str(out)])
    with open(out / "train_config.json") as f:
        saved = json.load(f)
    assert saved["policy"] == toyworld.toy_paths(tiny_toyworld)["sft"] and saved["prompts"] == ""
    with open(out / "log.jsonl") as f:
        last = [json.loads(line) for line in f][-1]
    # held-out scores on the world's test prompts, and no toy judge (ground_truth is False)
    assert isinstance(last["eval_helpful"], float) and "eval_gt_safe" not in last


def test_the_world_is_picked_by_preset_and_defaults_to_toy():
    assert worlds.world_name(train.Config()) == "toy"
    assert worlds.world_name(train.Config(preset="smol")) == "smol"
    assert worlds.world_name(train.Config(preset="paper")) == "toy"  # as before the contract


def test_the_toy_world_gives_what_it_gave_before(monkeypatch):
    monkeypatch.setattr(toyworld, "build_toyworld", lambda *a, **k: pytest.fail("rebuilt"))
    cfg = train.Config()
    world = loading.resolve_world(cfg)
    paths = toyworld.toy_paths(toyworld.SHIPPED)
    assert (world.name, world.ground_truth, world.prompts) == ("toy", True, "")
    assert (cfg.policy, cfg.reward_model, cfg.cost_model, cfg.prompts) == (
        paths["sft"], paths["reward"], paths["cost"], "")
    assert world.train_prompts == [p.text for p in toyworld.train_prompts()]
    # the held-out prompts as evals/heldout.toy_test_prompts interleaved them before
    test = toyworld.test_prompts()
    benign = [p.text for p in test if not p.harmful]
    harmful = [p.text for p in test if p.harmful]
    before = ([p for pair in zip(benign, harmful) for p in pair] + benign[len(harmful):]
              + harmful[len(benign):])
    assert world.test_prompts == before == toy_test_prompts() == heldout_prompts(cfg, world)
    assert toy_test_prompts(4) == before[:4]
    kinds = [p in harmful for p in toy_test_prompts(4)]
    assert kinds == [False, True, False, True]  # a limit keeps both classes
    raw, _ = loading.prompt_pool(cfg, world, load_tokenizer(cfg.policy))
    assert raw == world.train_prompts
    # A prompts file replaces the toy prompts (and their judge: train.py's toy_prompts is off).
    cfg = train.Config(prompts="PKU-Alignment/PKU-SafeRLHF")
    assert loading.resolve_world(cfg).ground_truth and cfg.prompts == "PKU-Alignment/PKU-SafeRLHF"


def test_the_smol_world_gives_what_it_gave_before(monkeypatch, tmp_path, capsys):
    calls = []

    def ensure(root, data, policy, size):  # the build itself is tests/test_smol.py's
        calls.append((root, data, policy, size))
        paths = smol.smol_paths(root)
        return {**paths, "start": paths["sft"]}  # runs start from what ensure_smol says
    monkeypatch.setattr(smol, "ensure_smol", ensure)
    root = str(tmp_path / "smol")
    cfg = train.Config(preset="smol", smol_dir=root, smol_data="hh", smol_policy="x.gguf",
                       smol_size="tiny")
    world = loading.resolve_world(cfg)
    assert calls == [(root, "hh", "x.gguf", "tiny")]
    assert f"SmolLM2-135M-Instruct and its reward and cost models in {root}" in (
        capsys.readouterr().out)
    paths = smol.smol_paths(root)
    assert (cfg.policy, cfg.reward_model, cfg.cost_model, cfg.prompts) == (
        paths["sft"], paths["reward"], paths["cost"], paths["prompts"])
    assert os.path.isabs(cfg.prompts) and cfg.prompts.endswith("prompts.jsonl")
    assert (world.name, world.ground_truth, world.train_prompts, world.test_prompts) == (
        "smol", False, None, None)
    # its prompts are one file: --eval_every refuses, as before
    os.makedirs(root, exist_ok=True)
    open(cfg.prompts, "w").close()
    with pytest.raises(ValueError, match="one file with no test split"):
        heldout_prompts(cfg, world)
    # a policy the run names is kept
    cfg = train.Config(preset="smol", smol_dir=root, policy="mine")
    loading.resolve_world(cfg)
    assert cfg.policy == "mine" and cfg.reward_model == paths["reward"]
