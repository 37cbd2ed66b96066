"""Building and loading the networks GAPO trains: policy, frozen reference, critic.

What it does (the paper's Sec. 4.1 setting; choices in docs/decisions.md):
- policy and reference: any causal LM from a Hugging Face Hub id or a local folder (the paper uses
  HuggingFaceH4/mistral-7b-sft-beta). bf16 + non-reentrant gradient checkpointing on CUDA, float32
  on CPU. Optional LoRA (peft): the reference is then the same weights with the adapter switched
  off.
- critic: the policy's backbone (no LM head) plus one value head per objective, (B, T, K).
- float32 master weights under bf16 autocast (`master_weights`). Reading from the Hub or a
  folder, dtypes and tokenizers: formats/models.py.

Run: nothing to run; `python -m pytest -q tests/test_model.py` checks it.
Left out on purpose: multi-GPU sharding (scale/distributed.py does it), DeepSpeed, quantisation,
value-head normalisers.
"""
import json
import os

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM

from formats.models import (META, add_lora, dtype_for, enable_checkpointing, from_hub,
                            load_backbone, peft_call, place, position_ids_from_mask, pretrained)


# --------------------------------------------------------------------- float32 master weights

def _enter_autocast(module, args):
    """Forward pre-hook of master_weights: the forward runs under autocast(module.compute_dtype)."""
    context = torch.autocast(next(module.parameters()).device.type, dtype=module.compute_dtype)
    context.__enter__()
    module.__dict__.setdefault("_autocast_contexts", []).append(context)  # nested calls stack


def _exit_autocast(module, args, output):
    """Forward hook of master_weights (always called, also when the forward raises)."""
    module._autocast_contexts.pop().__exit__(None, None, None)


def master_weights(model, compute_dtype):
    """Keep `model`'s weights in float32 and compute in `compute_dtype` (bf16): mixed precision with
    fp32 master weights. AdamW then updates float32 numbers; updating bf16 weights in place rounds a
    1e-6 step away (bf16 keeps 8 bits of mantissa: a step smaller than |w| / 256 is lost;
    docs/decisions.md). Every call of the model runs under torch.autocast (two forward hooks, so
    the class's forward and its signature, which HF generate inspects, stay as they are): matmuls
    read bf16 copies; FSDP2 (distributed.shard_model) all-gathers bf16 directly
    (MixedPrecisionPolicy) and reduces gradients in float32.
    Sets `model.compute_dtype`, which distributed.shard_model reads. No-op for float32. Returns the
    model."""
    if compute_dtype == torch.float32:
        return model
    model.float()
    model.compute_dtype = compute_dtype
    model.register_forward_pre_hook(_enter_autocast)
    model.register_forward_hook(_exit_autocast, always_call=True)
    return model


# --------------------------------------------------------------------- policy, reference

def _weights_dtype(compute_dtype, lora_r, master):
    """Full fine-tuning in bf16 loads float32 master weights (see master_weights); LoRA keeps the
    frozen base in the compute dtype (peft already keeps the adapters in float32), and so does
    evaluation (master=False)."""
    return torch.float32 if master and lora_r == 0 else compute_dtype


def load_policy(name_or_path, device, dtype=None, gradient_checkpointing=False, lora_r=0,
                lora_alpha=0, lora_dropout=0.0, master=True):
    """Causal LM in train mode; a peft model with LoRA on q,k,v,o when lora_r > 0
    (lora_alpha 0 = 2 r). Full fine-tuning in bf16 gets float32 master weights and bf16 autocast
    (master_weights); master=False loads plain `dtype` weights (evaluation)."""
    device = torch.device(device)
    compute = dtype_for(dtype, device)
    model = place(from_hub(AutoModelForCausalLM.from_pretrained, name_or_path, "policy model",
                           dtype=_weights_dtype(compute, lora_r, master)), device)
    model.config.use_cache = False  # training forwards; rollout.generate passes use_cache=True
    if gradient_checkpointing:
        enable_checkpointing(model)
    if lora_r > 0:
        model = add_lora(model, lora_r, lora_alpha, lora_dropout, "CAUSAL_LM")
    elif master:
        master_weights(model, compute)
    return model.train()


class AdapterDisabledReference(nn.Module):
    """The frozen reference as a view of a LoRA policy: same base weights, adapter off, no
    gradients.

    The policy is kept outside the module tree on purpose, so .eval() / .requires_grad_(False) /
    .parameters() on the reference never touch the policy being trained.
    """

    def __init__(self, policy):
        super().__init__()
        self._policy = [policy]  # a list hides it from nn.Module registration

    @property
    def config(self):
        return self._policy[0].config

    @property
    def device(self):
        return next(self._policy[0].parameters()).device

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        policy = self._policy[0]
        was_training = policy.training
        policy.eval()  # the reference is deterministic (no dropout), whatever mode the policy is in
        try:
            with policy.disable_adapter():
                return policy(*args, **kwargs)
        finally:
            policy.train(was_training)


def load_reference(name_or_path, device, dtype=None, policy=None):
    """Frozen eval-mode reference π_ref (Eq. 1). With a peft policy: no second copy of the
    weights.

    A policy with float32 master weights under bf16 autocast (master_weights) gets a reference
    that computes exactly as the policy did before its first update, so the KL penalty starts at
    0 (a plain bf16 copy would carry the residual stream in bf16 and start at about 2e-3 nats per
    token): float32 weights under the same autocast, except the Linear layers' weights, stored in
    bf16 because autocast reads them as bf16 copies anyway (half the memory, the same numbers). A
    head tied to the input embedding stays float32 with it."""
    if policy is not None and hasattr(policy, "disable_adapter") and hasattr(policy, "peft_config"):
        return AdapterDisabledReference(policy)
    device = torch.device(device)
    compute = getattr(policy, "compute_dtype", None)
    model = place(from_hub(AutoModelForCausalLM.from_pretrained, name_or_path, "reference model",
                           dtype=torch.float32 if compute else dtype_for(dtype, device)), device)
    model.config.use_cache = False
    if compute:
        master_weights(model, compute)
        embedding = model.get_input_embeddings().weight
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight is not embedding:
                module.to(compute)
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------- critic

class Critic(nn.Module):
    """V(s_t) per objective: policy backbone (no LM head) + Linear(hidden, K). One head per
    objective (GAE per objective).

    The value head stays float32 (tiny; avoids bf16 rounding of values and GAE inputs).
    Zero-initialised here; train.py then sets each head's bias to the first rollout's mean
    return, so values start on the score scale (docs/decisions.md, "The update").
    """

    def __init__(self, backbone, num_objectives, base_name=None):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, num_objectives,
                                    device=next(backbone.parameters()).device)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.num_objectives = num_objectives
        self.base_name = base_name  # where a LoRA backbone's base weights come from (for load)

    @classmethod
    def from_policy(cls, name_or_path, num_objectives, device, dtype=None,
                    gradient_checkpointing=False, lora_r=0, lora_alpha=0):
        """The policy's backbone + a zero value head; float32 master weights as load_policy's."""
        device = torch.device(device)
        compute = dtype_for(dtype, device)
        backbone = place(load_backbone(name_or_path, _weights_dtype(compute, lora_r, True)),
                          device)
        backbone.config.use_cache = False
        if gradient_checkpointing:
            enable_checkpointing(backbone)
        if lora_r > 0:
            backbone = add_lora(backbone, lora_r, lora_alpha, 0.0, "FEATURE_EXTRACTION")
        else:
            master_weights(backbone, compute)
        return cls(backbone, num_objectives, base_name=str(name_or_path)).train()

    @torch.no_grad()
    def shift_values(self, shift):
        """Add shift (K,) to the value heads' biases: every value moves by shift. The loop does it
        once, with the first rollout's mean return (docs/decisions.md, "The update"): a
        zero-initialised head at the paper's critic learning rate (5e-7) stays near 0 for hundreds
        of steps, so with gamma = 1, lambda_GAE = 0.95 the final score would reach early tokens
        only as 0.95^k. Sharded by FSDP2, the bias is a DTensor, and so becomes the shift."""
        bias = self.value_head.bias
        assert shift.shape == bias.shape, (shift.shape, bias.shape)
        shift = shift.to(device=bias.device, dtype=bias.dtype)
        if hasattr(bias, "device_mesh"):  # a DTensor (scale/distributed.py shards the critic)
            from torch.distributed.tensor import distribute_tensor
            shift = distribute_tensor(shift, bias.device_mesh, bias.placements)
        bias.add_(shift)

    def forward(self, input_ids, attention_mask):
        """(B, T) ids and mask -> (B, T, K) float32 values; positions from the mask, so left padding
        is safe."""
        assert input_ids.shape == attention_mask.shape and input_ids.dim() == 2, (
            input_ids.shape, attention_mask.shape)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids_from_mask(attention_mask),
                               use_cache=False).last_hidden_state
        # the head computes in float32 (see class doc)
        with torch.autocast(hidden.device.type, enabled=False):
            values = self.value_head(hidden.float())  # (B, T, K)
        assert values.shape == (*input_ids.shape, self.num_objectives), values.shape
        return values

    def save(self, path):
        from safetensors.torch import save_file
        os.makedirs(path, exist_ok=True)
        self.backbone.save_pretrained(path)  # full backbone, or only the adapter for a LoRA critic
        save_file({k: v.detach().cpu().contiguous()
                   for k, v in self.value_head.state_dict().items()},
                  os.path.join(path, "value_head.safetensors"))
        lora = hasattr(self.backbone, "peft_config")
        with open(os.path.join(path, "critic.json"), "w") as f:
            json.dump({"num_objectives": self.num_objectives, "lora": lora, "base": self.base_name},
                      f, indent=1)

    @classmethod
    def load(cls, path, device, dtype=None, gradient_checkpointing=False):
        from safetensors.torch import load_file
        meta_file = os.path.join(str(path), "critic.json")
        if not os.path.isfile(meta_file):
            raise FileNotFoundError(f"'{path}' holds no saved critic (critic.json is missing); "
                                    "pass a folder written by Critic.save.")
        with open(meta_file) as f:
            meta = json.load(f)
        device = torch.device(device)
        dtype = dtype_for(dtype, device)
        if meta["lora"]:
            from peft import PeftModel
            base = load_backbone(meta["base"], dtype)
            backbone = peft_call(PeftModel.from_pretrained, base, path, is_trainable=True)
        else:  # float32 master weights, as saved (from_policy)
            backbone = master_weights(
                place(pretrained(AutoModel.from_pretrained, path, dtype=torch.float32), device),
                dtype)
        if gradient_checkpointing:  # as from_policy: a resumed critic keeps the memory plan's shape
            enable_checkpointing(backbone)
        critic = cls(place(backbone, device), meta["num_objectives"], base_name=meta["base"])
        if not META["on"]:  # a meta critic gets its head from rank 0 (load_sharded)
            critic.value_head.load_state_dict(
                load_file(os.path.join(path, "value_head.safetensors")))
        return place(critic, device).train()
