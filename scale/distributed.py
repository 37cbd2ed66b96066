"""Data parallelism for `torchrun --nproc_per_node N train.py`.

What it does (the paper trains on 8 GPUs; docs/decisions.md, "Gradient accumulation with MGDA"):
- one process per GPU (nccl; gloo on CPU), every rank samples and scores its own share of the
  prompts;
- FSDP2 (`torch.distributed.fsdp.fully_shard`) shards every decoder layer and the rest of each
  model, EXCEPT the parameters GAPO differentiates separately (docs/decisions.md, "Which last
  layer": by default the policy's last block): torch.autograd.grad with respect to a sharded
  parameter fails in torch 2.13 ("appears to not have been used in the graph": the forward runs
  on unsharded copies), so those stay whole on every rank (`ignored_params`);
- `average_whole_gradients`: hooks that average a whole parameter's gradient over ranks as soon as
  it is computed, so the K per-objective gradients g_i are global BEFORE the Gram matrix and every
  rank solves the same Problem 7 to the same alpha (the Gram matrix of a mean is not the mean of
  the Gram matrices); the sharded parameters' gradients go through FSDP's own reduction;
- global statistics (`all_gather_rows`) for the Lagrange multiplier and the fast-rl weights;
- `clip_grad_norm_` over a mix of sharded and whole gradients (torch's own refuses the mix);
- sharded loading (`load_sharded`, full fine-tuning): every rank builds each model on the meta
  device, shards it, and receives its slices of rank 0's weights (rank 0 alone reads the files);
- checkpoint helpers: full parameters for save_pretrained on rank 0, and the optimizer states
  written shard by shard by every rank (`save_optimizers` / `load_optimizers`,
  torch.distributed.checkpoint), which resume on any number of ranks;
- memory planning lives beside it, in scale/memory.py.
Every helper is a no-op (or the plain torch call) in a single process, so train.py calls them
always.

Run: `torchrun --nproc_per_node 8 train.py --preset paper --method gapo --p 1` (see README);
tests: `python -m pytest -q tests/test_distributed.py` (2 gloo processes on CPU).
Left out on purpose: tensor/pipeline parallelism, multi-node launch details, sharded loading of
LoRA runs (they replicate the bf16 bases: every rank loads every model whole, as in one process),
and a sharded export of the weights (rank 0 gathers the policy and critic for the Hugging Face
files). Optimizer states of parameters that never received a gradient are not saved, so such a
run (an unused trainable module) cannot resume.
"""
import atexit
import contextlib
import math
import os
import sys
import warnings

import torch
import torch.distributed as dist
from torch import nn

# ----------------------------------------------------------------------------- processes


def init_distributed(device="auto"):
    """-> (rank, world, device). Under torchrun (WORLD_SIZE > 1): joins the process group, one GPU
    per LOCAL_RANK, and silences stdout on ranks > 0 (rank 0 prints and logs). Otherwise: (0, 1,
    device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if world <= 1:
        return 0, 1, (torch.device("cuda" if use_cuda else "cpu") if device == "auto"
                      else torch.device(device))
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

    # Also when the script destroyed the group itself: the workers outlive it (FSDP holds them).
    if os.path.isdir("/proc/self/task"):
        idle, deadline = 0, time.monotonic() + 10.0
        while idle < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
            idle = 0 if _gloo_workers_busy() else idle + 1
    if dist.is_initialized():
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
    """Rank 0 runs the block first (builds the toy world, fills the download cache), then the
    others. If rank 0 fails inside, it still releases the others (who then fail on their own, in
    one line, rather than wait in the barrier until the collective timeout)."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
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
    """A new tensor: the sum over ranks (nccl needs CUDA tensors, gloo CPU ones: pass the model's
    device's)."""
    out = tensor.clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_rows(tensor):
    """(B, ...) on each rank -> (world * B, ...) in rank order, on every rank (B must match across
    ranks). Global statistics exactly: the mean cost for the Lagrange multiplier, fast-rl's mean
    and std."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _is_sharded(tensor):
    from torch.distributed.tensor import DTensor
    return isinstance(tensor, DTensor)


def average_whole_gradients(model):
    """Under torchrun, make every trainable whole (not sharded) parameter's gradient the mean over
    ranks at the moment backward or torch.autograd.grad computes it, as FSDP reduces its shards
    during backward (DDP does the same with its hooks). Whole parameters are the MGDA block that
    FSDP leaves out, or every trainable parameter of a replicated (LoRA) model. So each rank's
    objective gradients g_i (gapo.objective_gradients) are already the means over ranks: every rank
    builds the same Gram matrix and solves Problem 7 to the same alpha (the Gram matrix of a mean
    is not the mean of the Gram matrices), and the weighted backward's gradients are global before
    clipping. Each rank's g_i is the gradient of its own mean loss, so the mean over ranks is the
    gradient of the global loss when ranks hold equal token counts (and otherwise the same average
    FSDP applies). Cost: one all-reduce per parameter per backward or autograd.grad (K + 1 per
    micro-batch for the MGDA block). No-op in one process; call once, after sharding."""
    if not is_distributed():
        return
    for p in model.parameters():
        if p.requires_grad and not _is_sharded(p):
            p.register_hook(_mean_over_ranks)


def _mean_over_ranks(grad):
    out = grad.clone()  # a hook must not change its input in place
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.div_(get_world_size())


def clip_grad_norm_(params, max_norm):
    """torch.nn.utils.clip_grad_norm_ for a mix of sharded (DTensor) and whole gradients -> the
    total norm before clipping (max_norm <= 0: no clipping). Sharded parts: local squares summed
    over ranks; whole parts (identical on every rank: average_whole_gradients): once."""
    max_norm = max_norm if max_norm > 0 else math.inf
    params = [p for p in params if p.grad is not None]
    sharded = [p.grad for p in params if _is_sharded(p.grad)]
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    whole = [p.grad for p in params if not _is_sharded(p.grad)]
    device = sharded[0].to_local().device
    local = sum((g.to_local().float().pow(2).sum() for g in sharded),
                torch.zeros((), device=device))
    squares = all_reduce_sum(local) + sum((g.float().pow(2).sum() for g in whole),
                                          torch.zeros((), device=device))
    total = squares.sqrt()
    scale = min(1.0, max_norm / (float(total) + 1e-6))  # torch's rule: shrink only, never grow
    for p in params:
        p.grad.mul_(scale)
    return total


# ----------------------------------------------------------------------------- FSDP2

def _decoder_layers(model):
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def _mixed_precision(model):
    """FSDP2's MixedPrecisionPolicy for a model with float32 master weights (model.master_weights
    sets `compute_dtype` on it or on its backbone): all-gather in bf16, reduce gradients in
    float32. None (FSDP's default: gather and reduce in the parameter dtype) for a model stored in
    its compute dtype."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    compute = next((m.compute_dtype for m in model.modules() if hasattr(m, "compute_dtype")), None)
    return (
        MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32) if compute else None
    )


def shard_model(model, keep=(), own_group=()):
    """FSDP2 in place: each decoder layer, then the root (embeddings, final norm, heads), sharded
    over all ranks; parameters in `keep` stay whole on every rank (their gradients:
    average_whole_gradients).
    Modules in `own_group` get their own FSDP group without mixed precision: a float32 head (the
    critic's value head) would otherwise share the root group with a bf16 backbone (FSDP requires
    one parameter dtype per group) or be cast to bf16 by the root's policy. Returns the model."""
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


def load_sharded(load, device, shard):
    """Load one model sharded: no rank ever holds it whole on its device (torchrun, full
    fine-tuning; LoRA runs replicate and load as in one process).

    load(device) is a model.py loader. Every rank runs it inside formats.models.meta_loading (the
    architecture, empty), `shard(model)` applies FSDP2 (shard_model), and to_empty allocates only
    this rank's shards and the parameters kept whole. Rank 0 alone reads the weights, on the CPU,
    with the same loader (so the same dtype, master weights and head checks), and
    set_model_state_dict broadcasts them one tensor at a time, each rank keeping its slice.
    Non-persistent buffers (the rotary inv_freq) are in no state dict, so they are broadcast from
    rank 0's copy too rather than left as to_empty's garbage. Costs: on the device, this rank's
    shards plus the largest single tensor in flight; on rank 0's host, one full copy of this
    model, freed before the next model is read. Returns the sharded model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from formats.models import meta_loading

    with torch.random.fork_rng(devices=[]), meta_loading():  # draws nothing that counts
        model = load(device)
    shard(model)
    model.to_empty(device=device)
    source = load(torch.device("cpu")) if is_main() else None
    # Loading draws random numbers (a new head's initialisation, overwritten or not); every rank
    # used to draw them itself. Rank 0's generator after its read, on every rank, keeps the
    # sampling stream of a whole-model load.
    torch.set_rng_state(broadcast_object(torch.get_rng_state()))
    full = source.state_dict() if is_main() else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True,
                                                               broadcast_from_rank0=True))
    persistent = set(model.state_dict().keys())
    own = dict(source.named_buffers()) if is_main() else {}
    for name, buf in model.named_buffers():
        if name not in persistent:
            if is_main():
                buf.copy_(own[name])
            dist.broadcast(buf, src=0)
    del full, own, source
    return model


def policy_sharder(keep):
    """shard(model) for load_sharded: the policy, `keep(model)` (its MGDA parameters) kept whole."""
    return lambda model: shard_model(model, keep(model))


def critic_sharder(critic):
    """shard(model) for load_sharded: the critic, its float32 value head in a group of its own."""
    return shard_model(critic, own_group=[critic.value_head])


def adamw(model, lr, weight_decay, betas=(0.9, 0.999)):
    """torch.optim.AdamW over the trainable parameters of `model`, sharded (DTensor) and whole
    parameters in separate param groups: the foreach kernels (CUDA's default) refuse a list mixing
    DTensors and plain tensors ("got mixed torch.Tensor and DTensor"), and the kept last block is
    plain. Under torchrun the foreach path is asked for explicitly, so CPU (gloo) runs take the
    same path as CUDA."""
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
    """Keep the parameters gathered across forwards for the block (generation: one all-gather per
    layer instead of one per layer per new token). Costs one whole model per rank meanwhile; no-op
    if not sharded."""
    modules = _fsdp_modules(model)
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in modules:
            # FSDP2's defaults: layers reshard after forward, the root does not (backward needs it
            # at once).
            m.set_reshard_after_forward(m is not model, recurse=False)
            m.reshard()


@contextlib.contextmanager
def full_parameters(model):
    """Collective (every rank enters): inside the block rank 0's model holds whole CPU copies of
    its sharded parameters, so save_pretrained / Critic.save write a normal Hugging Face
    checkpoint; the other ranks hold meta placeholders and must not save. Parameters are put back
    on exit."""
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
    """Inverse of optimizer_state_dict: every rank passes the full state dict and keeps its shard
    of it."""
    if not is_distributed():
        return optimizer.load_state_dict(state)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    # torch creates the empty state to fill only when no grads are held
    optimizer.zero_grad(set_to_none=True)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


# Flattened ("state.<parameter name>.exp_avg", "param_groups.<parameter name>.lr"): keyed by
# parameter, not by param group, so a save with one group (one process) loads into two groups
# (torchrun: sharded and whole, see adamw) and back, hyperparameters included.
_FLAT = {"flatten_optimizer_state_dict": True}


@contextlib.contextmanager
def _one_process_is_meant():
    """Silence torch.distributed.checkpoint's warning that it "assumes" one process: it warns even
    when told so (no_dist), and one process is an ordinary run here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _local_state_dicts(named):
    """{name: this rank's optimizer state dict} for {name: (model, optimizer)}; sharded states stay
    DTensors, which torch.distributed.checkpoint writes and reads slice by slice."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return {name: get_optimizer_state_dict(m, o, options=StateDictOptions(**_FLAT))
            for name, (m, o) in named.items()}


def save_optimizers(named, path):
    """Collective: every rank writes its own shard of the optimizer states of {name: (model,
    optimizer)} to the folder `path` (torch.distributed.checkpoint), so no rank gathers them; one
    process writes the same format. load_optimizers reads it back on any number of ranks."""
    import torch.distributed.checkpoint as dcp
    with _one_process_is_meant():
        dcp.save(_local_state_dicts(named), checkpoint_id=path, no_dist=not is_distributed())


def load_optimizers(named, path):
    """Collective inverse of save_optimizers into freshly built models and optimizers, sharded
    over any number of ranks (each reads the slices it holds)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    for _, optimizer in named.values():
        # torch fills in the empty state to load into (an Adam step at learning rate 0, which
        # leaves the weights bit for bit) only when no gradients are held.
        optimizer.zero_grad(set_to_none=True)
    states = _local_state_dicts(named)
    with _one_process_is_meant():
        dcp.load(states, checkpoint_id=path, no_dist=not is_distributed())
    for name, (m, o) in named.items():
        set_optimizer_state_dict(m, o, optim_state_dict=states[name],
                                 options=StateDictOptions(**_FLAT))
