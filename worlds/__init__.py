"""The worlds a run trains in, behind one contract: a module with `prepare(cfg) -> World`.

A world supplies what a run leaves empty: the policy to start from, the reward and cost models,
and the prompts. `prepare(cfg)` makes the world ready (checks or builds its cached files; rank 0
does it first under torchrun, loading.resolve_world sees to that) and returns a World:
- policy, reward_model, cost_model: the paths of its models, for the cfg fields left empty;
- prompts: a prompts file or data set (data.load_prompts reads it) for an empty cfg.prompts, or ""
  when the world hands its prompts over itself (train_prompts);
- train_prompts: the raw training prompts when the run trains on the world's own list, or None;
- test_prompts: held-out raw prompts for train.py's --eval_every learning curve, or None;
- ground_truth: True when the toy world's judge applies (evals/tables.toy_metrics).
A new world is one file defining prepare(cfg) plus one line in WORLDS; a run picks it with the
preset of the same name (worlds/presets.py), any other preset trains in the toy world.

Run: nothing to run; loading.resolve_world calls prepare (`python -m pytest tests/test_worlds.py`).
Left out on purpose: worlds outside this package, and choosing a world apart from the preset.
"""
import importlib
from dataclasses import dataclass

# name -> module that defines prepare(cfg) -> World; imported only when its world is used, since
# a world's module may pull in heavy libraries (transformers, tokenizers) the others do not need.
WORLDS = {"toy": "worlds.toyworld", "smol": "worlds.smol"}
DEFAULT = "toy"


@dataclass
class World:
    """What a prepared world hands a run (see the module docstring)."""
    name: str
    policy: str
    reward_model: str
    cost_model: str
    prompts: str = ""
    train_prompts: list | None = None  # list[str]
    test_prompts: list | None = None  # list[str]
    ground_truth: bool = False


def world_name(cfg):
    """The world a run trains in: the one named like its preset, else the toy world."""
    return cfg.preset if cfg.preset in WORLDS else DEFAULT


def prepare(cfg):
    """The World of cfg's run, made ready (built or checked) by its module's prepare."""
    return importlib.import_module(WORLDS[world_name(cfg)]).prepare(cfg)
