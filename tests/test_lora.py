"""LoRA soups (SPEC §4 `soup`): Rewarded Soups of two LoRA runs must interpolate the MERGED weights
W + s B A, never the factors A and B separately (that adds the cross terms lam (1 - lam) s (B_a - B_b)(A_a - A_b)).

`merged_state_dict` is the function proposed for model.py; it lives here until the lead moves it.
"""
import copy

import pytest
import torch

from conftest import make_tiny_mistral
from evals.soups import interpolate_state_dicts

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # peft's noise


def merged_state_dict(model):
    """Full weights a (peft LoRA) model computes with, under the base model's own keys: W + s B A for every
    adapted layer (s = lora_alpha / r), adapters dropped. Does not modify the model. Plain models: a copy."""
    if not hasattr(model, "peft_config"):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    from peft.tuners.lora import LoraLayer
    base = model.get_base_model()
    deltas = {f"{name}.weight": sum(m.get_delta_weight(a) for a in m.active_adapters)
              for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    out = {}
    for key, value in base.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        out[key] = (value + deltas[key].to(value.dtype)).detach() if key in deltas else value.detach().clone()
    return out


def lora_run(seed):
    """A tiny Mistral with a LoRA adapter whose A and B are both non-zero (as after training)."""
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(make_tiny_mistral(40, seed=0),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_merged_state_dict_equals_merge_and_unload_and_leaves_the_model_alone():
    model = lora_run(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = merged_state_dict(model)
    reference = copy.deepcopy(model).merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    for k in merged:
        torch.testing.assert_close(merged[k], reference[k], atol=1e-6, rtol=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ids = torch.randint(3, 40, (2, 7))
    plain = make_tiny_mistral(40, seed=0)
    plain.load_state_dict(merged)
    torch.testing.assert_close(plain(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_soup_of_lora_runs_interpolates_merged_weights_not_factors():
    a, b, lam = lora_run(1), lora_run(2), 0.3
    key = "model.layers.0.self_attn.q_proj.weight"
    W0 = make_tiny_mistral(40, seed=0).state_dict()[key]
    scale = 8 / 4
    delta = lambda m: scale * m.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight @ \
        m.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    right = W0 + lam * delta(a) + (1 - lam) * delta(b)  # Rewarded Soups: lam theta_a + (1 - lam) theta_b

    soup = interpolate_state_dicts(merged_state_dict(a), merged_state_dict(b), lam)
    torch.testing.assert_close(soup[key], right.detach(), atol=1e-6, rtol=0)

    # The wrong way: interpolate the adapter factors, then merge.
    factors = interpolate_state_dicts(a.state_dict(), b.state_dict(), lam)
    wrong = lora_run(3)
    wrong.load_state_dict(factors)
    assert (merged_state_dict(wrong)[key] - right).abs().max() > 1e-2
