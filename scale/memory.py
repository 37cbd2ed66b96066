"""Memory planning: will a configuration fit on the GPU, before anything is loaded?

- `memory_plan`: bytes of weights, gradients and AdamW state per model (float32 master weights
  for the trainable ones when training runs in bf16), printed as a table at the start of every
  run.
- `activation_and_cache_bytes`: the KV cache of one rollout batch and the activations autograd
  keeps for one training micro-batch, from the policy's config alone.
- `plan_bytes` / `check_memory`: the peak per GPU of a whole run (four models, FSDP sharding over
  N ranks or LoRA), and the refusal, with the flags that would fit, that train.py prints on CUDA.

Run: nothing to run; tests/test_model.py and tests/test_distributed.py check the arithmetic by
hand, and `python -m benchmarks.bench` prints the estimate beside a measured peak.
- `load_bytes`: the load-time peak, on the GPU and in host memory; check_memory refuses a run
  whose training peak or load peak does not fit.
- `param_count_from_config`: a model's size from its config, built on the meta device (no memory).
Left out on purpose: allocator fragmentation and the CUDA context (leave headroom).
"""
import copy
import os
from dataclasses import dataclass

import torch
from torch import nn
import transformers
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from formats.models import from_hub
from formats.models import LlamaModelForScore, is_score_config

@dataclass
class MemoryRow:
    name: str
    params: int
    trainable: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int

    @property
    def total_bytes(self):
        return self.param_bytes + self.grad_bytes + self.optimizer_bytes


def memory_plan(models, dtype=torch.float32, trainable=None, optimizer="adamw",
                available_bytes=None, master_dtype=None):
    """Bytes for parameters, gradients and optimizer state per model -> (rows, printable table).

    models: {name: nn.Module or int parameter count}. trainable: {name: bool or int} (default: a
    module's requires_grad parameters; an int count is frozen). Weights shared between entries (a
    LoRA reference) should be listed once. Gradients and AdamW's two moments are kept in the
    parameter dtype (plain torch AdamW).
    master_dtype (float32 for train.py, see master_weights): the dtype of trainable parameters,
    their gradients and moments, while frozen ones stay in `dtype`; default `dtype` for all.
    Activations and the CUDA context are not counted: leave headroom.
    """
    states = {"adamw": 2, "adam": 2, "sgd": 0}
    if optimizer not in states:
        raise ValueError(f"Unknown optimizer '{optimizer}' for the memory plan; "
                         f"use one of {sorted(states)}.")
    trainable = trainable or {}
    size = torch.tensor([], dtype=dtype).element_size()
    master = torch.tensor([], dtype=master_dtype or dtype).element_size()
    rows = []
    for name, m in models.items():
        if isinstance(m, nn.Module):
            n = sum(p.numel() for p in m.parameters())
            n_train = sum(p.numel() for p in m.parameters() if p.requires_grad)
        else:
            n, n_train = int(m), 0
        t = trainable.get(name)
        if t is not None:
            n_train = n if t is True else (0 if t is False else int(t))
        rows.append(MemoryRow(name, n, n_train, (n - n_train) * size + n_train * master,
                              n_train * master, states[optimizer] * n_train * master))
    gib = lambda b: f"{b / 2**30:8.2f}"
    lines = [f"{'model':<12}{'params':>14}{'trainable':>14}{'weights GiB':>12}{'grads GiB':>11}"
             f"{'optim GiB':>11}{'total GiB':>11}"]
    for r in rows:
        lines.append(f"{r.name:<12}{r.params:>14,}{r.trainable:>14,}{gib(r.param_bytes):>12}"
                     f"{gib(r.grad_bytes):>11}{gib(r.optimizer_bytes):>11}{gib(r.total_bytes):>11}")
    total = sum(r.total_bytes for r in rows)
    lines.append(
        f"{'total':<12}{'':>14}{'':>14}{'':>12}{'':>11}{'':>11}{gib(total):>11}"
        f"   ({str(dtype).replace('torch.', '')}"
        f"{', trainable ' + str(master_dtype).replace('torch.', '') if master_dtype else ''}, "
        f"{optimizer}; activations not included)")
    if available_bytes is not None:
        verdict = ("fits" if total < available_bytes
                   else "does NOT fit (try --lora_r or smaller models)")
        lines.append(f"device memory {available_bytes / 2**30:.2f} GiB: {verdict}")
    return rows, "\n".join(lines)


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
    """Estimate of the memory beyond weights, gradients and optimizer state (the paper's batch
    shapes).

    config: the policy's (L layers, hidden h, intermediate i, kv heads, head dim d, vocab V);
    batch = micro-batch (training), generation_batch = rollout batch (default batch),
    seq_len T = P + R, response_len R.
      KV cache   = 2 (k and v) * L * B_gen * T * kv_heads * d * bytes
      per token and layer, with a fused (SDPA / flash) attention kernel, elements autograd keeps:
        A = 9 h + 2 kv_heads * d + 4 i
            (RMSNorm inputs kept in float32 = 2 h twice, their outputs h twice,
             q and the attention output 2 h, k and v, o_proj input h,
             gate, silu(gate), up and their product 4 i)
      activations = B * T * bytes * (L * h + A)   with gradient checkpointing
                                                  (layer inputs + one layer redone)
                  = B * T * bytes * L * A         without
      logits      = B * V * (T * bytes + 3 * R * 4)
                    (bf16 logits for all T; float32 log-softmax of the R response rows, kept,
                     plus its input and output grads)
    A back-of-the-envelope figure (good to ~20%), not an allocator trace:
    `python -m benchmarks.bench` prints both to compare.
    """
    bytes_ = torch.tensor([], dtype=dtype).element_size()
    L, h, i, V = (config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                  config.vocab_size)
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
    """Parameters of LoRA on q, k, v, o (formats.models.LORA_TARGETS) in every layer:
    r * (fan_in + fan_out) each."""
    h = config.hidden_size
    kv = (config.num_key_value_heads or config.num_attention_heads) * (
        getattr(config, "head_dim", None) or h // config.num_attention_heads)
    q_out = config.num_attention_heads * (
        getattr(config, "head_dim", None) or h // config.num_attention_heads)
    return config.num_hidden_layers * r * ((h + q_out) + 2 * (h + kv) + (q_out + h))


def block_param_count(config):
    """Parameters of one decoder block (q, k, v, o, the gated MLP, two RMSNorms): the last block,
    which full fine-tuning under FSDP keeps whole on every rank (GAPO's objective gradients need it
    unsharded)."""
    h, i = config.hidden_size, config.intermediate_size
    d = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q = config.num_attention_heads * d
    kv = (config.num_key_value_heads or config.num_attention_heads) * d
    return h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h


def reference_float32_params(config):
    """Parameters a full fine-tuning reference keeps in float32 beside a float32-master policy
    (model.load_reference): the input embedding and every RMSNorm (two per block and the final
    one); its Linear weights are stored in the compute dtype."""
    return config.vocab_size * config.hidden_size + (2 * config.num_hidden_layers + 1) * (
        config.hidden_size)


def plan_bytes(cfg, policy_config, counts, dtype, world, lora_r, checkpointing):
    """Peak bytes per GPU of a configuration: weights, gradients and AdamW state (memory_plan's
    rule, with float32 master weights: trainable parameters, their gradients and moments 16 bytes
    each, frozen ones in `dtype`), plus activation_and_cache_bytes. counts: parameter counts
    {policy, critic, reward, cost}. Full fine-tuning on N ranks shards all of it N ways (FSDP)
    except the policy's last block (whole on every rank, 16 bytes a parameter), and gathers the
    whole policy in `dtype` for the rollout (`unsharded`); LoRA replicates everything. Not
    counted: the CUDA context, fragmentation."""

    models, trainable = dict(counts), {"reward": 0, "cost": 0}
    if lora_r:
        adapter = lora_param_count(policy_config, lora_r)
        models.update(policy=counts["policy"] + adapter, critic=counts["critic"] + adapter)
        trainable.update(policy=adapter, critic=adapter)  # the reference is the policy, adapter off
    else:
        models["reference"] = counts["policy"]
        trainable.update(policy=True, critic=True, reference=0)
    rows, _ = memory_plan(models, dtype=dtype, trainable=trainable, master_dtype=torch.float32)
    size = torch.tensor([], dtype=dtype).element_size()
    # the reference's float32 embedding and norms (model.load_reference), beyond `dtype`
    reference = 0 if lora_r else (4 - size) * reference_float32_params(policy_config)
    states = (sum(r.total_bytes for r in rows) + reference) / (1 if lora_r else world)
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
    gathered_policy = counts["policy"] * size if sharded else 0
    kept_block = 16 * block_param_count(policy_config) * (1 - 1 / world) if sharded else 0
    train = states + kept_block + max(extra.kv_cache + gathered_policy,
                                      extra.activations + extra.logits)
    return int(max(train, load_bytes(policy_config, counts, dtype, world, lora_r)[0]))


def load_bytes(policy_config, counts, dtype, world, lora_r, local_world=None):
    """-> (bytes per GPU, bytes of host memory per node) at the load-time peak, when all the models
    are in place and nothing else is yet (train.py's loading, docs/decisions.md).

    Weights only: float32 masters (4 bytes) for the policy and critic of full fine-tuning, `dtype`
    for the rest and for LoRA bases (adapters: float32). Sharded loading (torchrun, full
    fine-tuning; distributed.load_sharded): on each GPU the shards, the policy's last block whole,
    plus the largest tensor in flight (the float32 embedding matrix, received whole before it is
    sliced); on the host, rank 0's one full copy of the largest model (the float32 policy).
    Otherwise (one process, or LoRA under torchrun): every model whole on each GPU, and on the host
    each of the node's `local_world` ranks (default: world) holds the model it is reading whole
    before moving it to its GPU."""
    size = torch.tensor([], dtype=dtype).element_size()
    full = not lora_r
    master = 4 if full else size
    adapter = 0 if full else 4 * lora_param_count(policy_config, lora_r)
    weights = {"policy": counts["policy"] * master + adapter,
               "critic": counts["critic"] * master + adapter,
               "reward": counts["reward"] * size, "cost": counts["cost"] * size}
    if full:  # Linear weights in `dtype`, embedding and norms in float32 (model.load_reference)
        weights["reference"] = (counts["policy"] * size
                                + (4 - size) * reference_float32_params(policy_config))
    largest = max(weights.values())
    if world > 1 and full:
        embedding = 4 * policy_config.vocab_size * policy_config.hidden_size
        block = 4 * block_param_count(policy_config) * (1 - 1 / world)
        return int(sum(weights.values()) / world + block + embedding), int(largest)
    return int(sum(weights.values())), int(largest * (local_world or world))


def check_memory(cfg, device_bytes, world=1, dtype=torch.bfloat16, host_bytes=None,
                 local_world=None):
    """Refuse, before loading, a plan whose estimate exceeds the GPU's memory, naming the flags
    that would fit, or (host_bytes given) whose load-time host peak (load_bytes) exceeds the
    node's memory. Reads only the four models' configs (meta-device parameter counts). Returns
    the GPU estimate in bytes (the larger of the training and the load-time peak)."""
    policy_config = AutoConfig.from_pretrained(cfg.policy)
    counts = {"policy": param_count_from_config(policy_config, "causal_lm"),
              "critic": param_count_from_config(policy_config, "base"),
              "reward": param_count_from_config(cfg.reward_model, "score"),
              "cost": param_count_from_config(cfg.cost_model, "score")}
    need = plan_bytes(cfg, policy_config, counts, dtype, world, cfg.lora_r,
                      cfg.gradient_checkpointing)
    gib = lambda b: f"{b / 2**30:.1f} GiB"
    host = load_bytes(policy_config, counts, dtype, world, cfg.lora_r, local_world)[1]
    if host_bytes is not None and host > host_bytes:
        raise ValueError(f"Loading the models needs about {gib(host)} of host memory but this "
                         f"machine has {gib(host_bytes)}; run fewer processes per machine, or full "
                         "fine-tuning under torchrun, where rank 0 alone reads the weights.")
    if need <= device_bytes:
        return need
    for flags, lora_r, ckpt in [("--gradient_checkpointing", cfg.lora_r, True),
                                ("--lora_r 64", 64, cfg.gradient_checkpointing),
                                ("--lora_r 64 --gradient_checkpointing", 64, True)]:
        if (lora_r, ckpt) == (cfg.lora_r, cfg.gradient_checkpointing):
            continue
        fits = plan_bytes(cfg, policy_config, counts, dtype, world, lora_r, ckpt)
        if fits <= device_bytes:
            raise ValueError(f"This run needs about {gib(need)} per GPU but the GPU has "
                             f"{gib(device_bytes)}; add {flags} (about {gib(fits)}) or run on "
                             "more GPUs with torchrun.")
    raise ValueError(f"This run needs about {gib(need)} per GPU but the GPU has "
                     f"{gib(device_bytes)}, and still does not fit with --lora_r 64 "
                     "--gradient_checkpointing; lower --micro_batch_size and --batch_size or run "
                     "full fine-tuning on more GPUs with torchrun.")


def check_device(cfg, device, world, dtype=None):
    """Before anything loads, on CUDA: check_memory against this GPU and this machine's RAM
    (shared by the LOCAL_WORLD_SIZE ranks of a node). Nothing to check on the CPU."""
    if device.type != "cuda":
        return None
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return check_memory(cfg, torch.cuda.get_device_properties(device).total_memory, world,
                        dtype or torch.bfloat16, host_bytes=host,
                        local_world=int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def param_count_from_config(config, head="causal_lm") -> int:
    """Parameter count of a model built from `config` (or a hub id / folder) on the meta device:
    no memory.
    head: "causal_lm" (policy/reference), "base" (critic backbone, + value head ignored), "score"
    (score model)."""
    if not isinstance(config, transformers.PretrainedConfig):
        config = from_hub(AutoConfig.from_pretrained, config, "model config")
    with torch.device("meta"):
        if head == "score" or is_score_config(config):
            model = LlamaModelForScore(copy.deepcopy(config))  # __init__ edits config.architectures
        elif head == "base":
            model = AutoModel.from_config(config)
        elif head == "causal_lm":
            model = AutoModelForCausalLM.from_config(config)
        else:
            raise ValueError(f"Unknown head '{head}'; use 'causal_lm', 'base' or 'score'.")
    return sum(p.numel() for p in model.parameters())
