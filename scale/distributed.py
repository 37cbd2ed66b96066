"""Data parallelism for `torchrun --nproc_per_node N train.py`, and the memory arithmetic of one GPU.

What it does (issue 7; SPEC.md §5 and §7):
- one process per GPU (nccl; gloo on CPU), every rank samples and scores its own share of the prompts;
- FSDP2 (`torch.distributed.fsdp.fully_shard`) shards every decoder layer and the rest of each model,
  EXCEPT the parameters GAPO differentiates separately (SPEC §5 step 1, by default the policy's last
  block): torch.autograd.grad with respect to a sharded parameter fails in torch 2.13 ("appears to not
  have been used in the graph": the forward runs on unsharded copies), so those stay whole on every rank
  (`ignored_params`) and their gradients get an explicit all-reduce (`all_reduce_grads`);
- `global_gradients`: the K per-objective gradients g_i averaged over ranks BEFORE the Gram matrix, so
  every rank solves the same Problem 7 and gets the same alpha (the Gram matrix of a mean is not the mean
  of the Gram matrices); the weighted backward then goes through FSDP's own gradient reduction;
- global statistics (`all_gather_rows`) for the Lagrange multiplier and the fast-rl weights;
- `clip_grad_norm_` over a mix of sharded and whole gradients (torch's own refuses the mix);
- checkpoint helpers: full parameters for save_pretrained on rank 0, full optimizer state dicts;
- `activation_and_cache_bytes` / `check_memory`: the memory plan of SPEC §7 plus activations and KV cache,
  compared with the GPU before anything loads, with the flags that would make a refused plan fit.
Every helper is a no-op (or the plain torch call) in a single process, so train.py calls them always.

Run: `torchrun --nproc_per_node 8 train.py --preset paper --method gapo --p 1` (see README);
tests: `python -m pytest -q tests/test_distributed.py` (2 gloo processes on CPU).
Left out on purpose: tensor/pipeline parallelism, multi-node launch details, meta-device loading
(each rank loads every model whole, then shards: about 68 GB per GPU at start-up for the paper's models),
and sharded (per-rank) checkpoint files: checkpoints are full, rank 0 writes them.
"""
import atexit
import contextlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

# ----------------------------------------------------------------------------- processes


def init_distributed(device="auto"):
    """-> (rank, world, device). Under torchrun (WORLD_SIZE > 1): joins the process group, one GPU per
    LOCAL_RANK, and silences stdout on ranks > 0 (rank 0 prints and logs). Otherwise: (0, 1, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if world <= 1:
        return 0, 1, torch.device("cuda" if use_cuda else "cpu") if device == "auto" else torch.device(device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        atexit.register(_teardown)
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # one log, rank 0's; errors still reach stderr
    return rank, world, device


def _gloo_workers_busy():
    """True while a gloo worker thread ("pt_gloo_runloop") of this process is not asleep (Linux)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
        except OSError:  # the thread exited meanwhile
            continue
        if head.rsplit("(", 1)[1] == "pt_gloo_runloop" and tail.split()[0] != "S":
            return True
    return False


def _teardown():
    """atexit: let gloo's worker threads go idle, then destroy the process group.

    A gloo worker drops its last reference to a finished collective (and so to that collective's
    Python-owned tensors, which takes the GIL) only after the caller's wait() has returned. If the
    interpreter is finalizing by then, CPython 3.11 ends the thread inside a noexcept destructor and
    the rank dies with SIGABRT "terminate called without an active exception" (1 torchrun launch in
    about 15, after the final barrier of runs.save_checkpoint). destroy_process_group does not join
    the workers here: FSDP still holds the group. So wait, with the GIL released, until no worker
    is runnable on two looks in a row (a waiter for the GIL is woken as soon as it is free)."""
    import time

    if not dist.is_initialized():
        return
    if dist.get_backend() == "gloo" and os.path.isdir("/proc/self/task"):
        idle, deadline = 0, time.monotonic() + 10.0
        while idle < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
            idle = 0 if _gloo_workers_busy() else idle + 1
    dist.destroy_process_group()  # no "destroy_process_group() was not called" warning at exit


def is_distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank():
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main():
    return get_rank() == 0


def barrier():
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (builds the toy world, fills the download cache), then the others."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast_object(obj):
    """Rank 0's value of a small picklable object on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- collectives

def all_reduce_sum(tensor):
    """A new tensor: the sum over ranks (nccl needs CUDA tensors, gloo CPU ones: pass the model's device's)."""
    out = tensor.clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor):
    return all_reduce_sum(tensor) / get_world_size()


def all_gather_rows(tensor):
    """(B, ...) on each rank -> (world * B, ...) in rank order, on every rank (B must match across ranks).
    Global statistics exactly: the mean cost for the Lagrange multiplier, fast-rl's mean and std."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _average_in_place(tensors):
    """Mean over ranks of a list of same-dtype tensors, one flat all-reduce per dtype (few, large messages)."""
    by_dtype = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= get_world_size()
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def global_gradients(grads):
    """K gradients g_i (each a list of tensors, one per MGDA parameter) -> their means over ranks.

    gapo.loss_weights' `reduce_grads` hook: each rank's g_i is the gradient of its own mean loss, so the
    mean over ranks is the gradient of the global loss when ranks hold equal token counts (and, otherwise,
    the same average FSDP applies to the weighted backward). Every rank then holds the same Gram matrix
    and solves Problem 7 to the same alpha. Cost: K all-reduces of the last block (K x 218M numbers for
    Mistral-7B full fine-tuning, a few MB with LoRA)."""
    if not is_distributed():
        return grads
    out = [[g.detach().clone() for g in gs] for gs in grads]
    _average_in_place([g for gs in out for g in gs])
    return out


def _is_sharded(tensor):
    from torch.distributed.tensor import DTensor
    return isinstance(tensor, DTensor)


def all_reduce_grads(params):
    """Average over ranks the gradients FSDP does not reduce: those of whole (not sharded) parameters, i.e. the
    ignored last block, or every trainable parameter of a replicated (LoRA) model. Call after the backward
    passes of an optimizer step, before clipping. Parameters without a gradient are skipped (the same on every
    rank, since every rank runs the same code path)."""
    if is_distributed():
        whole = [p.grad for p in params if p.grad is not None and not _is_sharded(p.grad)]
        if whole:
            _average_in_place(whole)


def clip_grad_norm_(params, max_norm):
    """torch.nn.utils.clip_grad_norm_ for a mix of sharded (DTensor) and whole gradients -> the total norm.
    Sharded parts: local squares summed over ranks; whole parts (identical after all_reduce_grads): once."""
    params = [p for p in params if p.grad is not None]
    sharded = [p.grad for p in params if _is_sharded(p.grad)]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    whole = [p.grad for p in params if not _is_sharded(p.grad)]
    device = sharded[0].to_local().device
    local = sum((g.to_local().float().pow(2).sum() for g in sharded), torch.zeros((), device=device))
    squares = all_reduce_sum(local) + sum((g.float().pow(2).sum() for g in whole), torch.zeros((), device=device))
    total = squares.sqrt()
    scale = min(1.0, max_norm / (float(total) + 1e-6))  # torch's rule: shrink only, never grow
    for p in params:
        p.grad.mul_(scale)
    return total


# ----------------------------------------------------------------------------- FSDP2

def _decoder_layers(model):
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def _mixed_precision(model):
    """FSDP2's MixedPrecisionPolicy for a model with float32 master weights (model.master_weights sets
    `compute_dtype` on it or on its backbone): all-gather in bf16, reduce gradients in float32. None
    (FSDP's default: gather and reduce in the parameter dtype) for a model stored in its compute dtype."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    compute = next((m.compute_dtype for m in model.modules() if hasattr(m, "compute_dtype")), None)
    return (
        MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32) if compute else None
    )


def shard_model(model, keep=(), own_group=()):
    """FSDP2 in place: each decoder layer, then the root (embeddings, final norm, heads), sharded over all
    ranks; parameters in `keep` stay whole on every rank (gradients: all_reduce_grads). Modules in
    `own_group` get their own FSDP group without mixed precision: a float32 head (the critic's value head)
    would otherwise share the root group with a bf16 backbone (FSDP requires one parameter dtype per group)
    or be cast to bf16 by the root's policy. Returns the model."""
    from torch.distributed.fsdp import fully_shard

    keep = set(keep)
    if (
        not set(model.parameters()) - keep
    ):  # everything kept whole (mgda_params=all): plain replication
        return model
    mp = _mixed_precision(model)
    extra = {"mp_policy": mp} if mp else {}
    for module in own_group:
        fully_shard(module)
    for layer in _decoder_layers(model):
        own = set(layer.parameters())
        if (
            own - keep
        ):  # a layer kept whole entirely (the last block) is left to the root, which ignores it
            fully_shard(layer, ignored_params=own & keep or None, **extra)
    fully_shard(model, ignored_params=keep or None, **extra)
    return model


def shard_for_training(policy, critic, reference, scorers, keep, lora):
    """train.py's hook: FSDP2 on every model (full fine-tuning), `keep` = the MGDA parameters (kept whole).
    LoRA runs are replicated instead (every rank holds the bf16 bases, as on one GPU; only the adapters'
    gradients are all-reduced), because sharding frozen bases under adapters saves little at 7B."""
    if not is_distributed() or lora:
        return
    shard_model(policy, keep)
    shard_model(critic, own_group=[critic.value_head])
    for model in [reference, *scorers]:
        shard_model(model)


def adamw(model, lr, weight_decay, betas=(0.9, 0.999)):
    """torch.optim.AdamW over the trainable parameters of `model`, sharded (DTensor) and whole parameters in
    separate param groups: the foreach kernels (CUDA's default) refuse a list mixing DTensors and plain
    tensors ("got mixed torch.Tensor and DTensor"), and the kept last block is plain. Under torchrun the
    foreach path is asked for explicitly, so CPU (gloo) runs take the same path as CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if _is_sharded(p)]},
        {"params": [p for p in params if not _is_sharded(p)]},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=betas,
                             foreach=True if is_distributed() else None)


def _fsdp_modules(model):
    from torch.distributed.fsdp import FSDPModule
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def unsharded(model):
    """Keep the parameters gathered across forwards for the block (generation: one all-gather per layer
    instead of one per layer per new token). Costs one whole model per rank meanwhile; no-op if not sharded."""
    modules = _fsdp_modules(model)
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in modules:
            # FSDP2's defaults: layers reshard after forward, the root does not (backward needs it at once).
            m.set_reshard_after_forward(m is not model, recurse=False)
            m.reshard()


@contextlib.contextmanager
def full_parameters(model):
    """Collective (every rank enters): inside the block rank 0's model holds whole CPU copies of its sharded
    parameters, so save_pretrained / Critic.save write a normal Hugging Face checkpoint; the other ranks hold
    meta placeholders and must not save. Parameters are put back on exit."""
    swapped = []
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and _is_sharded(p):
                full = p.full_tensor()  # all-gather: every rank must take part
                full = full.cpu() if is_main() else torch.empty_like(full, device="meta")
                module._parameters[name] = nn.Parameter(full, requires_grad=False)
                swapped.append((module, name, p))
    try:
        yield model
    finally:
        for module, name, p in swapped:
            module._parameters[name] = p


def optimizer_state_dict(model, optimizer):
    """A full optimizer state dict (keyed by parameter name) on rank 0; collective when sharded."""
    if not is_distributed():
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                 cpu_offload=True))


def load_optimizer_state_dict(model, optimizer, state):
    """Inverse of optimizer_state_dict: every rank passes the full state dict and keeps its shard of it."""
    if not is_distributed():
        return optimizer.load_state_dict(state)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    optimizer.zero_grad(set_to_none=True)  # torch creates the empty state to fill only when no grads are held
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


# ----------------------------------------------------------------------------- memory arithmetic

@dataclass
class ActivationEstimate:
    kv_cache: int  # bytes of the KV cache while generating the rollout batch
    activations: int  # bytes autograd keeps for one training micro-batch (decoder layers)
    logits: int  # bytes of the LM head's output and the float32 log-probs and their gradients

    @property
    def peak(self):
        # Generation and training run one after the other: the larger of the two is live at a time.
        return max(self.kv_cache, self.activations + self.logits)


def activation_and_cache_bytes(config, batch, seq_len, dtype, checkpointing, response_len=None,
                               generation_batch=None):
    """Estimate of the memory beyond weights, gradients and optimizer state (SPEC §7 batch shapes).

    config: the policy's (L layers, hidden h, intermediate i, kv heads, head dim d, vocab V); batch = micro-
    batch (training), generation_batch = rollout batch (default batch), seq_len T = P + R, response_len R.
      KV cache   = 2 (k and v) * L * B_gen * T * kv_heads * d * bytes
      per token and layer, with a fused (SDPA / flash) attention kernel, elements autograd keeps:
        A = 9 h + 2 kv_heads * d + 4 i   (RMSNorm inputs kept in float32 = 2 h twice, their outputs h twice,
                                          q and the attention output 2 h, k and v, o_proj input h,
                                          gate, silu(gate), up and their product 4 i)
      activations = B * T * bytes * (L * h + A)   with gradient checkpointing (layer inputs + one layer redone)
                  = B * T * bytes * L * A         without
      logits      = B * V * (T * bytes + 3 * R * 4)  (bf16 logits for all T; float32 log-softmax of the R
                                                      response rows, kept, plus its input and output grads)
    A back-of-the-envelope figure (good to ~20%), not an allocator trace: bench.py prints both to compare.
    """
    bytes_ = torch.tensor([], dtype=dtype).element_size()
    L, h, i, V = config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.vocab_size
    kv_heads = config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    R = seq_len if response_len is None else response_len
    B_gen = batch if generation_batch is None else generation_batch
    assert 0 < R <= seq_len and batch > 0, (batch, seq_len, R)
    per_layer = 9 * h + 2 * kv_heads * head_dim + 4 * i
    kept = L * h + per_layer if checkpointing else L * per_layer
    return ActivationEstimate(kv_cache=2 * L * B_gen * seq_len * kv_heads * head_dim * bytes_,
                              activations=batch * seq_len * bytes_ * kept,
                              logits=batch * V * (seq_len * bytes_ + 3 * R * 4))


def lora_param_count(config, r):
    """Parameters of LoRA on q, k, v, o (model.LORA_TARGETS) in every layer: r * (fan_in + fan_out) each."""
    h = config.hidden_size
    kv = (config.num_key_value_heads or config.num_attention_heads) * (
        getattr(config, "head_dim", None) or h // config.num_attention_heads)
    q_out = config.num_attention_heads * (getattr(config, "head_dim", None) or h // config.num_attention_heads)
    return config.num_hidden_layers * r * ((h + q_out) + 2 * (h + kv) + (q_out + h))


def block_param_count(config):
    """Parameters of one decoder block (q, k, v, o, the gated MLP, two RMSNorms): the last block, which
    full fine-tuning under FSDP keeps whole on every rank (GAPO's objective gradients need it unsharded)."""
    h, i = config.hidden_size, config.intermediate_size
    d = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q = config.num_attention_heads * d
    kv = (config.num_key_value_heads or config.num_attention_heads) * d
    return h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h


def plan_bytes(cfg, policy_config, counts, dtype, world, lora_r, checkpointing):
    """Peak bytes per GPU of a configuration: weights, gradients and AdamW state (model.memory_plan's rule, with
    float32 master weights: trainable parameters, their gradients and moments 16 bytes each, frozen ones in
    `dtype`), plus activation_and_cache_bytes. counts: parameter counts {policy, critic, reward, cost}. Full
    fine-tuning on N ranks shards all of it N ways (FSDP) except the policy's last block (whole on every rank,
    16 bytes a parameter), and gathers the whole policy in `dtype` for the rollout (`unsharded`); LoRA
    replicates everything. Not counted: the CUDA context, fragmentation."""
    from model import memory_plan

    models, trainable = dict(counts), {"reward": 0, "cost": 0}
    if lora_r:
        adapter = lora_param_count(policy_config, lora_r)
        models.update(policy=counts["policy"] + adapter, critic=counts["critic"] + adapter)
        trainable.update(policy=adapter, critic=adapter)  # the reference is the policy, adapter off
    else:
        models["reference"] = counts["policy"]
        trainable.update(policy=True, critic=True, reference=0)
    rows, _ = memory_plan(models, dtype=dtype, trainable=trainable, master_dtype=torch.float32)
    states = sum(r.total_bytes for r in rows) / (1 if lora_r else world)
    extra = activation_and_cache_bytes(
        policy_config,
        cfg.micro_batch_size,
        cfg.max_prompt_length + cfg.max_new_tokens,
        dtype,
        checkpointing,
        cfg.max_new_tokens,
        cfg.batch_size,
    )
    sharded = world > 1 and not lora_r
    size = torch.tensor([], dtype=dtype).element_size()
    gathered_policy = counts["policy"] * size if sharded else 0
    kept_block = 16 * block_param_count(policy_config) * (1 - 1 / world) if sharded else 0
    return int(
        states
        + kept_block
        + max(extra.kv_cache + gathered_policy, extra.activations + extra.logits)
    )


def check_memory(cfg, device_bytes, world=1, dtype=torch.bfloat16):
    """Refuse, before loading, a plan whose estimate exceeds the GPU's memory, naming the flags that would fit.
    Reads only the four models' configs (meta-device parameter counts). Returns the estimate in bytes."""
    from model import param_count_from_config
    from transformers import AutoConfig
    policy_config = AutoConfig.from_pretrained(cfg.policy)
    counts = {"policy": param_count_from_config(policy_config, "causal_lm"),
              "critic": param_count_from_config(policy_config, "base"),
              "reward": param_count_from_config(cfg.reward_model, "score"),
              "cost": param_count_from_config(cfg.cost_model, "score")}
    need = plan_bytes(cfg, policy_config, counts, dtype, world, cfg.lora_r, cfg.gradient_checkpointing)
    if need <= device_bytes:
        return need
    gib = lambda b: f"{b / 2**30:.1f} GiB"
    for flags, lora_r, ckpt in [("--gradient_checkpointing", cfg.lora_r, True),
                                ("--lora_r 64", 64, cfg.gradient_checkpointing),
                                ("--lora_r 64 --gradient_checkpointing", 64, True)]:
        if (lora_r, ckpt) == (cfg.lora_r, cfg.gradient_checkpointing):
            continue
        fits = plan_bytes(cfg, policy_config, counts, dtype, world, lora_r, ckpt)
        if fits <= device_bytes:
            raise ValueError(f"This run needs about {gib(need)} per GPU but the GPU has {gib(device_bytes)}; "
                             f"add {flags} (about {gib(fits)}) or run on more GPUs with torchrun.")
    raise ValueError(f"This run needs about {gib(need)} per GPU but the GPU has {gib(device_bytes)}, and still does "
                     "not fit with --lora_r 64 --gradient_checkpointing; lower --micro_batch_size and --batch_size "
                     "or run full fine-tuning on more GPUs with torchrun.")
