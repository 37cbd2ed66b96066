"""Train a policy with multi-objective PPO: GAPO and every baseline of the paper, one loop.

    python train.py --method gapo --p 2              # toy world on a laptop (built on first use)
    python train.py --method pgapo --pref 0.4,0.6    # P-GAPO with a preference vector
    python train.py --preset paper --method gapo --p 1 --lora_r 64   # Mistral-7B-SFT + beaver-7b, CUDA

One iteration (DESIGN.md's recipe, SPEC.md sections 2-5):
  1. rollout: sample responses for a batch of prompts            (rollout.generate)
  2. score: reward and cost -> objective matrix (B, K)           (rewards.objective_matrix)
  3. shape: per-token rewards with the KL penalty, per objective  (rollout.kl_shaped_rewards)
  4. GAE: advantages and returns per objective                    (rollout.gae)
  5. PPO epochs x minibatches: K losses, the method's weights, one weighted backward, steps
                                                                  (gapo.py, mgda.py)
  6. log (log.jsonl, tqdm) and checkpoint (atomic; --resume continues bit-for-bit on CPU)

Left out on purpose: multi-node training, vLLM generation, and evaluation (evaluate.py).
"""
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import distributed
import gapo
from data import format_policy_prompt, load_prompts
from model import Critic, load_policy, load_reference, load_score_model, load_tokenizer, memory_plan
from rewards import Scorer, objective_matrix
from rollout import (Rollout, decode_responses, gae, generate, kl_shaped_rewards, response_logprobs,
                     response_values)

OBJECTIVES = ["helpful", "harmless"]  # K = 2: reward, and minus cost (SPEC section 1)


@dataclass
class Config:
    # --- what to run
    preset: str = "toy"  # toy | paper: fills the defaults below (PRESETS); any flag still overrides
    method: str = "gapo"  # one of gapo.METHODS
    p: float = 2.0  # p, GAPO's gradient-rescaling exponent (Eq. 6); mgda forces p = 0
    pref: str = "0.5,0.5"  # lambda, preference vector for morlhf and pgapo (K numbers >= 0, sum 1)
    mgda_params: str = "last_block"  # parameters of the objective gradients g_i: last_block | lm_head | all
    seed: int = 0  # one seed for everything; CPU runs are reproducible
    out_dir: str = ""  # run folder; default runs/<method>[-p<p>|-pref<pref>]-s<seed>
    resume: bool = False  # continue the run in out_dir from its checkpoint
    overwrite: bool = False  # delete out_dir if it holds another run
    # --- models and data (empty = the toy world's)
    policy: str = ""  # policy and reference pi_ref: Hub id or local folder
    reward_model: str = ""  # reward model R (helpfulness)
    cost_model: str = ""  # cost model C (harmlessness = -C; C > 0 means unsafe)
    prompts: str = ""  # prompt source for data.load_prompts (Hub id or .json/.jsonl file)
    prompt_split: str = "train"
    toy_dir: str = "cache/toyworld"  # where the toy world is built and cached
    toy_size: str = "default"  # default | tiny (tests)
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 1  # CPU threads for torch; 0 = torch's default. Tiny models run fastest on one
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16
    gradient_checkpointing: bool = False  # on actor and critic (non-reentrant)
    lora_r: int = 0  # > 0: policy and critic as LoRA adapters; pi_ref = policy with adapter off
    # LoRA defaults (docs/decisions.md): lora_alpha 0 means 2 * lora_r (scale 2), and with lora_r > 0 any of
    # actor_lr / critic_lr not given on the command line becomes LORA_LR[preset], 10x the preset's full
    # fine-tuning actor lr (paper: 1e-5 for both, toy: 3e-3).
    lora_alpha: int = 0
    # --- rollout (SPEC section 2)
    iterations: int = 60  # PPO iterations (rollout + update); 0 = `epochs` passes over the prompts
    epochs: float = 2.0  # passes over the prompt set when iterations = 0
    batch_size: int = 32  # B, prompts per rollout
    max_prompt_length: int = 32  # P at most
    max_new_tokens: int = 24  # R at most
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    # --- PPO (SPEC sections 2-3, Table 2)
    ppo_epochs: int = 2  # passes over each rollout
    minibatch_size: int = 16  # samples per optimizer step
    micro_batch_size: int = 16  # samples per forward (gradient accumulation below minibatch_size)
    actor_lr: float = 3e-4  # toy value; the paper preset uses 1e-6
    critic_lr: float = 1e-3  # toy value; the paper preset uses 5e-7
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03  # cosine schedule with linear warm-up
    max_grad_norm: float = 1.0  # 0 = no clipping
    kl_coef: float = 0.05  # beta, KL penalty (Eq. 14)
    clip_eps: float = 0.1  # epsilon, PPO ratio clip (Eq. 15)
    clip_value: float = 5.0  # critic value clip
    clip_score: float = 50.0  # scores clipped to +-clip_score (SPEC section 2)
    gamma: float = 1.0  # gamma, GAE discount
    gae_lambda: float = 0.95  # lambda_GAE
    # --- safe-rlhf (PPO-Lagrangian) and fast-rl
    cost_threshold: float = 0.0  # d, constraint on the mean cost
    lambda_init: float = 1.0  # lambda at start
    lambda_lr: float = 0.01  # step size of log(lambda)
    lambda_max: float = 10.0
    lambda_window: int = 128  # episodes in the mean cost
    fastrl_eta: float = 0.1  # eta, fast-rl weight step (our choice; the paper does not give it)
    # --- bookkeeping
    save_every: int = 20  # iterations between checkpoints (and at the end)
    stop_after: int = 0  # > 0: save and exit after this iteration (fits a job's time limit; --resume goes on)
    score_batch_size: int = 16


PRESETS = {
    "toy": {},
    # SPEC section 7, Table 2 (shared by all methods).
    "paper": dict(policy="HuggingFaceH4/mistral-7b-sft-beta", reward_model="PKU-Alignment/beaver-7b-v1.0-reward",
                  cost_model="PKU-Alignment/beaver-7b-v1.0-cost", prompts="PKU-Alignment/PKU-SafeRLHF",
                  # 16 prompts per device x gradient accumulation 8 = 128 per update, generated 16 at a time
                  iterations=0, epochs=2.0, batch_size=128, max_prompt_length=256, max_new_tokens=256,
                  temperature=0.7, top_p=1.0, repetition_penalty=1.05, ppo_epochs=1, minibatch_size=128,
                  micro_batch_size=16, actor_lr=1e-6, critic_lr=5e-7, weight_decay=0.0, warmup_ratio=0.03,
                  kl_coef=0.05, clip_eps=0.1, gradient_checkpointing=True, save_every=50, num_threads=0),
}

LORA_LR = {"toy": 3e-3, "paper": 1e-5}  # actor and critic lr of LoRA runs (see Config.lora_alpha's comment)


# ------------------------------------------------------------------------------------ command line

def _parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_config(argv=None):
    """The command line, generated from Config: --name value, --name=value, bare --flag for booleans.
    The preset fills defaults first; explicit flags win."""
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(Config):
        if f.type is bool or f.type == "bool":
            parser.add_argument(f"--{f.name}", nargs="?", const=True, type=_parse_bool)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__)
            parser.add_argument(f"--{f.name}", type=kind)
    explicit = vars(parser.parse_args(argv))
    preset = explicit.get("preset", Config.preset)
    if preset not in PRESETS:
        raise SystemExit(f"error: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    lora = {}
    if explicit.get("lora_r", PRESETS[preset].get("lora_r", Config.lora_r)) > 0:  # LoRA's own learning rates
        lora = {"actor_lr": LORA_LR[preset], "critic_lr": LORA_LR[preset]}
    return Config(**{**PRESETS[preset], **lora, **explicit})


def check_config(cfg):
    """Bad input stops here, before any model loads, with one sentence each."""
    if cfg.method not in gapo.METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; choose one of {', '.join(gapo.METHODS)}.")
    if not (cfg.p >= 0 and math.isfinite(cfg.p)):
        raise ValueError(f"--p must be a finite number >= 0 (got {cfg.p}); p = 0 is plain MGDA.")
    pref = parse_pref(cfg.pref, len(OBJECTIVES))
    if cfg.method == "safe-rlhf" and len(OBJECTIVES) != 2:
        raise ValueError("safe-rlhf needs exactly a reward and a cost objective.")
    if cfg.minibatch_size % cfg.micro_batch_size or cfg.batch_size % cfg.minibatch_size:
        raise ValueError(f"batch_size ({cfg.batch_size}) must be a multiple of minibatch_size ({cfg.minibatch_size}), "
                         f"itself a multiple of micro_batch_size ({cfg.micro_batch_size}).")
    if cfg.mgda_params not in ("last_block", "lm_head", "all"):
        raise ValueError(f"unknown mgda_params {cfg.mgda_params!r}; choose last_block, lm_head or all.")
    if cfg.toy_size not in ("default", "tiny"):
        raise ValueError(f"unknown toy_size {cfg.toy_size!r}; choose default or tiny.")
    return pref


def parse_pref(text, K):
    try:
        pref = [float(x) for x in str(text).split(",")]
    except ValueError:
        pref = []
    if len(pref) != K or any(not math.isfinite(x) or x < 0 for x in pref) or abs(sum(pref) - 1) > 1e-6:
        raise ValueError(f"--pref must be {K} non-negative numbers summing to 1, such as 0.4,0.6 (got {text!r}).")
    return pref


def default_out_dir(cfg):
    tag = cfg.method
    if cfg.method in ("gapo", "gapo-eq17"):
        tag += f"-p{cfg.p:g}"
    if cfg.method in ("pgapo", "morlhf"):
        tag += "-pref" + cfg.pref.replace(",", "_")
    return os.path.join("runs", f"{tag}-s{cfg.seed}")


# ------------------------------------------------------------------------------------ checkpoints

def save_checkpoint(out_dir, cfg, policy, tokenizer, critic, optimizers, schedulers, state, iteration):
    """Write out_dir/checkpoint atomically: everything goes to checkpoint.tmp, then two renames.
    A crash at any point leaves a complete checkpoint (or checkpoint.old, which load recovers)."""
    final, tmp, old = (os.path.join(out_dir, n) for n in ("checkpoint", "checkpoint.tmp", "checkpoint.old"))
    optimizer_states = [distributed.optimizer_state_dict(m, o) for m, o in zip((policy, critic), optimizers)]
    with distributed.full_parameters(policy), distributed.full_parameters(critic):  # torchrun: all ranks gather,
        if not distributed.is_main():                                                # rank 0 writes
            return
        shutil.rmtree(tmp, ignore_errors=True)
        policy.save_pretrained(os.path.join(tmp, "policy"))  # HF format: from_pretrained loads it alone
        tokenizer.save_pretrained(os.path.join(tmp, "policy"))
        critic.save(os.path.join(tmp, "critic"))
    torch.save({"iteration": iteration, "method_state": dataclasses.asdict(state),
                "optimizers": optimizer_states, "schedulers": [s.state_dict() for s in schedulers],
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}},
               os.path.join(tmp, "trainer_state.pt"))
    with open(os.path.join(tmp, "train_config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)
    if os.path.isdir(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(out_dir):
    """The last complete checkpoint folder, recovering from a crash between the two renames."""
    final, old = os.path.join(out_dir, "checkpoint"), os.path.join(out_dir, "checkpoint.old")
    if not os.path.isdir(final) and os.path.isdir(old):
        os.rename(old, final)
    if not os.path.isfile(os.path.join(final, "trainer_state.pt")):
        raise FileNotFoundError(f"no checkpoint to resume in {out_dir}; drop --resume to start a new run there.")
    return final


def prepare_out_dir(cfg):
    """Refuse to mix two runs in one folder unless --resume or --overwrite says what to do."""
    config_file = os.path.join(cfg.out_dir, "train_config.json")
    if cfg.resume:
        saved = {}
        if os.path.isfile(config_file):
            with open(config_file) as f:
                saved = json.load(f)
        volatile = {"resume", "overwrite", "save_every", "stop_after", "device", "num_threads"}
        # Empty model paths are filled from the toy world later, so they match whatever was saved.
        different = sorted(k for k, v in saved.items()
                           if k not in volatile and getattr(cfg, k, v) not in (v, ""))
        if different:
            raise ValueError(f"--resume with a different configuration ({', '.join(different)}) than the run in "
                             f"{cfg.out_dir}; use the same flags or another --out_dir.")
        return find_checkpoint(cfg.out_dir)
    if os.path.isdir(cfg.out_dir) and os.listdir(cfg.out_dir):
        if not cfg.overwrite:
            raise ValueError(f"{cfg.out_dir} already holds a run; pass --resume to continue it, --overwrite to "
                             f"replace it, or another --out_dir.")
        shutil.rmtree(cfg.out_dir)
    os.makedirs(cfg.out_dir, exist_ok=True)
    return None


def write_config(cfg):
    with open(os.path.join(cfg.out_dir, "train_config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)


# ------------------------------------------------------------------------------------ set-up

def resolve_models(cfg):
    """Fill policy / reward / cost / prompts from the toy world when they are empty."""
    if cfg.policy and cfg.reward_model and cfg.cost_model and cfg.prompts:
        return None
    import toyworld
    print(f"toy world: using (or building, on first use) the toy helpful-vs-harmless world in {cfg.toy_dir}")
    toyworld.ensure_toyworld(cfg.toy_dir, size=cfg.toy_size)
    paths = toyworld.toy_paths(cfg.toy_dir)
    cfg.policy = cfg.policy or paths["sft"]
    cfg.reward_model = cfg.reward_model or paths["reward"]
    cfg.cost_model = cfg.cost_model or paths["cost"]
    return toyworld


def build_prompt_pool(cfg, toyworld_module, tokenizer):
    """(raw prompts for the scorers, formatted prompts for the policy), same order."""
    if cfg.prompts:
        raw = load_prompts(cfg.prompts, split=cfg.prompt_split)
    else:
        raw = [p.text for p in toyworld_module.train_prompts()]
    if not raw:
        raise ValueError("the prompt set is empty; give --prompts a file or data set with prompts.")
    return raw, [format_policy_prompt(tokenizer, p) for p in raw]


def cosine_schedule(optimizer, total_steps, warmup_ratio):
    warmup = max(1, int(warmup_ratio * total_steps))

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ------------------------------------------------------------------------------------ one iteration

@torch.no_grad()
def collect_rollout(cfg, policy, reference, critic, tokenizer, scorers, raw, formatted):
    """Steps 1-4 of the recipe. Returns the Rollout and the phase timings."""
    # Generation: the whole rollout batch in one call (decoding is memory-bound, so B rows cost about
    # what one row does). The forward passes below run in chunks of micro_batch_size (activation memory).
    chunk = cfg.micro_batch_size
    t0 = time.perf_counter()
    input_ids, attention_mask, response_mask, P = generate(
        policy, tokenizer, formatted, cfg.max_prompt_length, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
        cfg.repetition_penalty)
    responses = decode_responses(tokenizer, input_ids, response_mask)
    t1 = time.perf_counter()
    scores = objective_matrix(scorers[0], scorers[1], raw, responses, batch_size=cfg.score_batch_size)  # (B, K)
    t2 = time.perf_counter()
    device = input_ids.device
    R = response_mask.shape[1]
    policy.eval()
    pieces = [(input_ids[i:i + chunk], attention_mask[i:i + chunk]) for i in range(0, len(formatted), chunk)]
    logprobs = torch.cat([response_logprobs(policy, ids, mask, R) for ids, mask in pieces])  # (B, R)
    ref_logprobs = torch.cat([response_logprobs(reference, ids, mask, R) for ids, mask in pieces])  # (B, R)
    values = torch.cat([response_values(critic, ids, mask, R) for ids, mask in pieces])  # (B, R, K)
    policy.train()
    response_mask, scores = response_mask.to(device), scores.to(device)
    rewards = kl_shaped_rewards(scores, logprobs, ref_logprobs, response_mask, cfg.kl_coef, cfg.clip_score)
    advantages, returns = gae(rewards, values, response_mask, cfg.gamma, cfg.gae_lambda)
    rollout = Rollout(raw, responses, input_ids, attention_mask, response_mask, logprobs, ref_logprobs, values,
                      scores, rewards, advantages, returns)
    return rollout, {"generate": t1 - t0, "score": t2 - t1, "forward": time.perf_counter() - t2}


def ppo_update(cfg, pref, policy, critic, rollout, optimizers, schedulers, state, mgda_params, iteration):
    """Step 5: PPO epochs over minibatches; returns averaged diagnostics for the log."""
    B = rollout.input_ids.shape[0]
    R = rollout.response_mask.shape[1]
    advantages = gapo.method_advantages(cfg.method, rollout.advantages.cpu(), rollout.response_mask.cpu(), pref,
                                        state).to(rollout.input_ids.device)  # (B, R, M)
    # Gradient accumulation: each micro-batch gets its own method weights (its own Gram matrix), and
    # the weighted losses accumulate until the optimizer step. Decision: the paper gives no detail.
    accumulate = cfg.minibatch_size // cfg.micro_batch_size
    logs = []
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(B)
        for start in range(0, B, cfg.micro_batch_size):
            idx = order[start:start + cfg.micro_batch_size]
            ids, mask, rmask = rollout.input_ids[idx], rollout.attention_mask[idx], rollout.response_mask[idx]
            # Actor: K losses from one forward pass, the method's weights, one weighted backward.
            logprobs = response_logprobs(policy, ids, mask, R)
            losses, info = gapo.ppo_losses(logprobs, rollout.logprobs[idx], advantages[idx], rmask, cfg.clip_eps)
            if not torch.isfinite(losses).all():
                bad = int((~torch.isfinite(losses)).nonzero()[0])
                raise FloatingPointError(f"iteration {iteration}: the PPO loss of objective {bad} is not finite; "
                                         f"the last good checkpoint is kept in {cfg.out_dir}.")
            try:
                weights, wlog = gapo.loss_weights(cfg.method, losses, mgda_params, cfg.p, pref,
                                                  reduce_grads=distributed.global_gradients)
            except FloatingPointError as err:
                raise FloatingPointError(f"iteration {iteration}: {err}; the last good checkpoint is kept.") from None
            info.update(wlog)
            info["weights"] = weights.tolist()
            info["losses"] = losses.tolist()
            if not wlog.get("skipped"):  # SPEC section 5 step 6: every gradient zero -> no actor step
                ((weights.to(losses.device) * losses).sum() / accumulate).backward()
            # Critic: clipped value loss, summed over the K heads.
            values = response_values(critic, ids, mask, R)
            vloss = gapo.value_loss(values, rollout.values[idx], rollout.returns[idx], rmask, cfg.clip_value)
            (vloss / accumulate).backward()
            info["value_loss"] = vloss.item()
            logs.append(info)
            if (start // cfg.micro_batch_size + 1) % accumulate == 0:
                for optimizer, scheduler in zip(optimizers, schedulers):
                    params = [p for group in optimizer.param_groups for p in group["params"]]
                    distributed.all_reduce_grads(params)  # FSDP reduced the sharded gradients; these are the rest
                    if cfg.max_grad_norm > 0:
                        distributed.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
    return average_logs(logs)


def average_logs(logs):
    """Mean over minibatches of every numeric (or list of numbers) entry."""
    out = {}
    for key in logs[0]:
        values = [entry[key] for entry in logs if key in entry]
        if isinstance(values[0], bool):
            out[key] = sum(values)
        elif isinstance(values[0], (int, float)):
            out[key] = float(np.mean(values))
        elif isinstance(values[0], list):
            out[key] = np.mean(np.array(values, dtype=float), axis=0).tolist()
    return out


# ------------------------------------------------------------------------------------ main

def main(argv=None):
    try:
        cfg = parse_config(argv)
        pref = check_config(cfg)
        cfg.out_dir = cfg.out_dir or default_out_dir(cfg)
        rank, world, device = distributed.init_distributed(cfg.device)  # torchrun: one process per GPU
        with distributed.main_first():  # rank 0 checks and prepares the run folder, then the others find it
            resume_from = prepare_out_dir(cfg) if rank == 0 else find_checkpoint(cfg.out_dir) if cfg.resume else None
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}")
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    dtype = None if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    try:
        with distributed.main_first():
            toyworld_module = resolve_models(cfg)
        if rank == 0:
            write_config(cfg)  # with the resolved model paths, for evaluate.py
        if device.type == "cuda":  # refuse a plan that cannot fit before loading anything
            distributed.check_memory(cfg, torch.cuda.get_device_properties(device).total_memory, world,
                                     dtype or torch.bfloat16)
        policy_path = os.path.join(resume_from, "policy") if resume_from else cfg.policy
        tokenizer = load_tokenizer(cfg.policy, padding_side="left")
        policy = load_policy(cfg.policy, device, dtype, cfg.gradient_checkpointing, cfg.lora_r, cfg.lora_alpha)
        reference = load_reference(cfg.policy, device, dtype, policy=policy)
        if resume_from:
            load_policy_weights(policy, policy_path)
            critic = Critic.load(os.path.join(resume_from, "critic"), device, dtype)
        else:
            critic = Critic.from_policy(cfg.policy, len(OBJECTIVES), device, dtype, cfg.gradient_checkpointing,
                                        cfg.lora_r, cfg.lora_alpha)
        scorers = [Scorer(*load_score_model(path, device, dtype), name=name)
                   for path, name in [(cfg.reward_model, "reward"), (cfg.cost_model, "cost")]]
        raw, formatted = build_prompt_pool(cfg, toyworld_module, tokenizer)
        mgda_params = gapo.mgda_parameters(policy, cfg.mgda_params) if cfg.method in gapo.GRADIENT_METHODS else None
        distributed.shard_for_training(policy, critic, None if cfg.lora_r else reference, [s.model for s in scorers],
                                       keep=mgda_params or [], lora=cfg.lora_r > 0)  # FSDP2 under torchrun
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}")
    models = {"policy": policy, "critic": critic, "reward": scorers[0].model, "cost": scorers[1].model}
    if cfg.lora_r == 0:
        models["reference"] = reference  # with LoRA the reference shares the policy's weights
    print(memory_plan(models, dtype=next(scorers[0].model.parameters()).dtype, master_dtype=torch.float32,
                      trainable={"reward": False, "cost": False})[1])  # trainable weights: float32 masters

    iterations = cfg.iterations or max(1, int(cfg.epochs * len(raw) / (cfg.batch_size * world)))
    steps = iterations * cfg.ppo_epochs * (cfg.batch_size // cfg.minibatch_size)
    optimizers = [distributed.adamw(m, lr, cfg.weight_decay)  # sharded and whole parameters: separate groups
                  for m, lr in [(policy, cfg.actor_lr), (critic, cfg.critic_lr)]]
    schedulers = [cosine_schedule(o, steps, cfg.warmup_ratio) for o in optimizers]
    state = gapo.MethodState(log_lambda=math.log(cfg.lambda_init))
    start = 0
    if resume_from:
        saved = torch.load(os.path.join(resume_from, "trainer_state.pt"), weights_only=False, mmap=world > 1)
        start = saved["iteration"]
        state = gapo.MethodState(**saved["method_state"])
        for m, o, s in zip((policy, critic), optimizers, saved["optimizers"]):
            distributed.load_optimizer_state_dict(m, o, s)
        for sch, s in zip(schedulers, saved["schedulers"]):
            sch.load_state_dict(s)
        torch.set_rng_state(saved["rng"]["torch"])
        np.random.set_state(saved["rng"]["numpy"])
        random.setstate(saved["rng"]["python"])
        if saved["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        print(f"resumed {cfg.out_dir} at iteration {start}")
    log_path = os.path.join(cfg.out_dir, "log.jsonl")
    if rank == 0:
        truncate_log(log_path, start)

    # The data order: a seeded permutation per pass over the prompts, so a resumed run sees the same batches.
    def batch_indices(iteration):
        position = iteration * cfg.batch_size
        epoch = position // len(raw)
        order = np.random.default_rng(cfg.seed + epoch).permutation(len(raw))
        order = np.concatenate([order, np.random.default_rng(cfg.seed + epoch + 1).permutation(len(raw))])
        offset = position % len(raw)
        return order[offset:offset + cfg.batch_size].tolist()

    bar = tqdm(range(start, iterations), initial=start, total=iterations, desc=f"{cfg.method}", dynamic_ncols=True,
               disable=rank > 0)
    for iteration in bar:
        index = batch_indices(iteration * world + rank)  # rank r takes the r-th of `world` consecutive batches
        with distributed.unsharded(policy):  # FSDP: gather the policy once per rollout, not once per token
            rollout, timings = collect_rollout(cfg, policy, reference, critic, tokenizer, scorers,
                                               [raw[i] for i in index], [formatted[i] for i in index])
        scores = distributed.all_gather_rows(rollout.scores).cpu()  # (world * B, K): global lambda, fast-rl, log
        if cfg.method == "safe-rlhf":  # the multiplier is updated after each rollout, from the costs
            gapo.update_lagrange_multiplier(state, (-scores[:, 1]).tolist(), cfg.cost_threshold, cfg.lambda_lr,
                                            cfg.lambda_max, cfg.lambda_window)
        if cfg.method == "fast-rl":
            gapo.update_fastrl_weights(state, scores, cfg.fastrl_eta)
        t0 = time.perf_counter()
        try:
            update = ppo_update(cfg, pref, policy, critic, rollout, optimizers, schedulers, state, mgda_params,
                                iteration + 1)
        except FloatingPointError as err:  # NaN / inf: stop, the last checkpoint on disk stays as it was
            raise SystemExit(f"error: {err}")
        timings["update"] = time.perf_counter() - t0
        mask = rollout.response_mask
        kl = distributed.all_reduce_mean(((rollout.logprobs - rollout.ref_logprobs) * mask).sum(1).mean()).item()
        tokens = rollout.attention_mask.sum().item()  # prompt + response tokens processed
        record = {"iteration": iteration + 1, **{f"score_{n}": scores[:, i].mean().item() for i, n in enumerate(OBJECTIVES)},
                  "kl": kl, "response_length": mask.sum(1).mean().item(), **update,
                  "lambda": math.exp(state.log_lambda) if cfg.method == "safe-rlhf" else None,
                  "fastrl_weights": state.fastrl_weights or None,
                  "tokens_per_second": tokens / sum(timings.values()), **{f"time_{k}": v for k, v in timings.items()}}
        with open(log_path if rank == 0 else os.devnull, "a") as f:
            f.write(json.dumps(record) + "\n")
        bar.set_postfix(helpful=f"{record['score_helpful']:.2f}", harmless=f"{record['score_harmless']:.2f}", kl=f"{kl:.2f}")
        tqdm.write(format_log_line(record))
        stopping = iteration + 1 == cfg.stop_after
        if (iteration + 1) % cfg.save_every == 0 or iteration + 1 == iterations or stopping:
            save_checkpoint(cfg.out_dir, cfg, policy, tokenizer, critic, optimizers, schedulers, state, iteration + 1)
        if stopping:
            print(f"stopped after iteration {iteration + 1} (--stop_after); continue with --resume")
            break
    print(f"done: {cfg.out_dir}/checkpoint (policy in Hugging Face format under policy/), log in {log_path}")
    return cfg


def load_policy_weights(policy, path):
    """Load a checkpoint's policy weights into the freshly built policy (full or LoRA adapter)."""
    if hasattr(policy, "peft_config"):
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights
        set_peft_model_state_dict(policy, load_peft_weights(path))
    else:
        from transformers import AutoModelForCausalLM
        saved = AutoModelForCausalLM.from_pretrained(path, dtype=next(policy.parameters()).dtype)
        policy.load_state_dict(saved.state_dict())


def truncate_log(log_path, iteration):
    """Keep only the log lines of iterations <= the checkpoint's, so a resumed log has no duplicates."""
    if not os.path.isfile(log_path):
        return
    with open(log_path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["iteration"] <= iteration]
    with open(log_path, "w") as f:
        f.writelines(lines)


def format_log_line(r):
    extra = ""
    if r.get("alpha"):
        extra += " alpha=" + ",".join(f"{a:.2f}" for a in r["alpha"])
    if r.get("grad_cosine"):
        extra += f" cos={r['grad_cosine'][0][1]:+.2f}"
    if r.get("lambda") is not None:
        extra += f" lambda={r['lambda']:.3f}"
    return (f"iter {r['iteration']:4d} helpful {r['score_helpful']:+.3f} harmless {r['score_harmless']:+.3f} "
            f"kl {r['kl']:.3f} len {r['response_length']:.1f} clip {r['clip_fraction']:.2f}{extra} "
            f"| gen {r['time_generate']:.2f}s score {r['time_score']:.2f}s update {r['time_update']:.2f}s")


if __name__ == "__main__":
    main(sys.argv[1:])
