"""Loading a run: the world fills the empty model and prompt paths, then the networks are built.

- `resolve_world`: policy / reward / cost / prompt paths left empty come from a world
  (worlds/__init__.py: the built-in toy world, or the smol world with `--preset smol`), which
  rank 0 prepares first under torchrun;
- `prompt_pool`: the training prompts, raw (as the scorers see them) and formatted for the policy;
- `load_models`: policy, frozen reference, critic with K value heads, reward and cost scorers
  (each reading the text --scorer_format picks, said once at start-up), fresh or from a
  checkpoint, sharded by FSDP2 under torchrun with the MGDA parameters kept whole.

Run: nothing to run; train.py and evaluate.py call it (`python -m pytest -q tests/test_train.py`).
Left out on purpose: models from anywhere but a local folder or the Hugging Face Hub.
"""
import importlib
import math
import os
import sys

import torch

import gapo
import worlds
from cli import parse_objective
from data import format_policy_prompt, load_prompts
from formats import models as layouts  # mgda_parameters, looked up here: studies record it
from formats.models import default_dtype, load_score_model, load_tokenizer
from model import Critic, load_policy, load_reference
from rewards import Objective, Scorer, default_objectives, describe_scorers, make_scorer
from runs import load_policy_weights
from scale import distributed, memory


def resolve_world(cfg):
    """Fill the empty policy / reward_model / cost_model / prompts of cfg from the run's world
    (rank 0 prepares it first, the other ranks then reuse what it built). Returns that World, or
    None when cfg names all four and no world is needed."""
    if cfg.policy and cfg.reward_model and cfg.cost_model and cfg.prompts:
        return None
    with distributed.main_first():  # says the world is valid, or builds it (minutes, once)
        world = worlds.prepare(cfg)
    for key in ("policy", "reward_model", "cost_model", "prompts"):
        setattr(cfg, key, getattr(cfg, key) or getattr(world, key))
    return world


def prompt_pool(cfg, world, tokenizer):
    """(raw prompts for the scorers, formatted prompts for the policy), same order: cfg.prompts
    when the run names them, else the world's own training prompts."""
    if cfg.prompts:
        raw = load_prompts(cfg.prompts, split=cfg.prompt_split)
    else:
        raw = list(world.train_prompts or []) if world is not None else []
    if not raw:
        raise ValueError("the prompt set is empty; give --prompts a file or data set with prompts.")
    return raw, [format_policy_prompt(tokenizer, p) for p in raw]


# ------------------------------------------------------------------------------------ models

def loaded_scorer(loaded, path, dtype, name, scorer_format="auto"):
    """The Scorer of a score model loaded through `loaded` (whole, or sharded on every rank),
    reading the text scorer_format says (formats.models.scorer_template: auto, chat, safe_rlhf)."""
    tokenizers = []

    def load(device):
        model, tokenizer = load_score_model(path, device, dtype)
        tokenizers.append(tokenizer)
        return model
    return make_scorer(loaded(load), tokenizers[-1], name, scorer_format)


def load_models(cfg, device, dtype, world, resume_from, K):
    """The networks of a run: (tokenizer, policy, reference, critic with K heads, the K
    Objectives, MGDA parameters or None), fresh or from the checkpoint resume_from. Under torchrun
    FSDP2 shards them, keeping the MGDA parameters whole."""
    # One dtype for every rank's build: sharded loading builds on `device` but reads on the CPU.
    dtype = dtype or default_dtype(device)
    tokenizer = load_tokenizer(cfg.policy, padding_side="left")
    # torchrun, full fine-tuning: each model built empty on every rank, sharded by FSDP2, then
    # filled from rank 0's copy (distributed.load_sharded); otherwise loaded whole.
    sharded = world > 1 and cfg.lora_r == 0
    gradient_method = cfg.method in gapo.GRADIENT_METHODS

    def loaded(load, shard=distributed.shard_model):
        return distributed.load_sharded(load, device, shard) if sharded else load(device)

    # The parameters whose objective gradients g_i feed the Gram matrix (docs/decisions.md):
    # kept whole by FSDP.
    def mgda(model):
        return layouts.mgda_parameters(model, cfg.mgda_params) if gradient_method else []

    # Sharded loading reads a resumed policy straight from the checkpoint (HF format).
    policy_path = os.path.join(resume_from, "policy") if resume_from and sharded else cfg.policy
    policy = loaded(lambda d: load_policy(policy_path, d, dtype, cfg.gradient_checkpointing,
                                          cfg.lora_r, cfg.lora_alpha),
                    distributed.policy_sharder(mgda))
    reference = loaded(lambda d: load_reference(cfg.policy, d, dtype, policy=policy))
    if resume_from and not sharded:
        load_policy_weights(policy, os.path.join(resume_from, "policy"))
    if resume_from:
        critic = loaded(lambda d: Critic.load(os.path.join(resume_from, "critic"), d, dtype,
                                              cfg.gradient_checkpointing),
                        distributed.critic_sharder)
    else:
        critic = loaded(lambda d: Critic.from_policy(cfg.policy, K, d, dtype,
                                                     cfg.gradient_checkpointing, cfg.lora_r,
                                                     cfg.lora_alpha),
                        distributed.critic_sharder)
    # torchrun: every whole trainable parameter's gradient is averaged over ranks as it is
    # computed (FSDP reduces the shards), so the g_i of the Gram matrix are global.
    for model in (policy, critic):
        distributed.average_whole_gradients(model)
    # The K objectives: --objective NAME=SOURCE in order, else helpful = reward, harmless = -cost.
    if cfg.objective:
        objectives = []
        for text in cfg.objective:
            name, source, sign = parse_objective(text)
            scorer = (python_scorer(source) if source.startswith("py:")
                      else loaded_scorer(loaded, source, dtype, name, cfg.scorer_format))
            objectives.append(Objective(name, scorer, sign))
    else:
        objectives = default_objectives(*[
            loaded_scorer(loaded, path, dtype, name, cfg.scorer_format)
            for path, name in [(cfg.reward_model, "reward"), (cfg.cost_model, "cost")]])
    scorers = [o.scorer for o in objectives if isinstance(o.scorer, Scorer)]
    if distributed.is_main() and scorers:
        print(describe_scorers(scorers))  # once: which text each scorer reads
    models = {"policy": policy, "critic": critic, **{s.name: s.model for s in scorers}}
    if cfg.lora_r == 0:
        models["reference"] = reference  # with LoRA the reference shares the policy's weights
    frozen = scorers[0].model if scorers else reference  # trainable weights: float32 masters
    print(memory.memory_plan(models, dtype=next(frozen.parameters()).dtype,
                             master_dtype=torch.float32,
                             trainable={s.name: False for s in scorers})[1])
    return tokenizer, policy, reference, critic, objectives, mgda(policy) or None


def optimizers(cfg, policy, critic, steps):
    """AdamW on the trainable parameters of actor and critic, each with the cosine schedule over
    `steps` optimizer steps (Table 2). Under torchrun the sharded (FSDP) and whole parameters sit in
    separate groups (distributed.adamw): foreach AdamW refuses a mix."""
    optimizers = [distributed.adamw(m, lr, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2))
                  for m, lr in [(policy, cfg.actor_lr), (critic, cfg.critic_lr)]]
    return optimizers, [cosine_schedule(o, steps, cfg.warmup_ratio) for o in optimizers]


def cosine_schedule(optimizer, total_steps, warmup_ratio):
    """Linear warm-up over warmup_ratio of the steps, then cosine decay to 0 (Table 2)."""
    warmup = max(1, int(warmup_ratio * total_steps))

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup)
                                                 / max(1, total_steps - warmup))))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def python_scorer(spec):
    """`py:MODULE.FUNCTION` -> the function, imported from the current folder (or sys.path)."""
    target = spec[len("py:"):]
    module_name, _, function_name = target.rpartition(".")
    if not module_name or not function_name:
        raise ValueError(f"--objective source {spec!r} must name a function as "
                         f"py:MODULE.FUNCTION (for example py:rules.brevity).")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # "importable from the current folder"
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--objective source {spec!r} cannot be imported ({err}); put "
                         f"{module_name}.py with a function {function_name}(prompts, responses) "
                         f"in the current folder.") from None
    if not callable(function):
        raise ValueError(f"--objective source {spec!r} is not a function.")
    return function
