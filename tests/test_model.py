"""model.py: loaders from local folders in the real formats, beaver score checkpoints written by hand,
padding invariance, LoRA reference, critic, soups, memory plan, offline errors. CPU, no network."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaModel, MistralConfig, MistralForSequenceClassification

from conftest import make_tiny_mistral, make_tiny_tokenizer
from model import AdapterDisabledReference, Critic, load_policy, load_reference
from formats.models import (default_dtype, last_token_index, load_tokenizer, pick_device,
                            position_ids_from_mask)
from formats.models import LlamaModelForScore, load_score_model, new_score_model
from scale.memory import param_count_from_config

CPU = torch.device("cpu")


def ids_of(tok, texts, side="right"):
    tok.padding_side = side
    batch = tok(texts, return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"]


def token_logprobs(model, input_ids, attention_mask, position_ids=None):
    """(B, T) -> (B, T-1) log p(x_t | x_<t)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    return torch.gather(F.log_softmax(logits[:, :-1].float(), -1), 2, input_ids[:, 1:, None])[..., 0]


# ----------------------------------------------------------------------------- small helpers

def test_devices_and_dtypes():
    assert default_dtype("cpu") == torch.float32 and default_dtype("cuda") == torch.bfloat16
    assert pick_device().type in ("cpu", "cuda")


def test_position_ids_and_last_index_both_padding_sides():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 2, 3, 4]]
    assert last_token_index(mask).tolist() == [4, 2, 4]


def test_tokenizer_without_pad_reuses_unk_without_resizing(tmp_path):
    tok = make_tiny_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    n = len(tok)
    loaded = load_tokenizer(tmp_path / "nopad")
    assert loaded.pad_token == "<unk>" and len(loaded) == n and loaded.padding_side == "left"
    assert load_tokenizer(tmp_path / "nopad", padding_side="right").padding_side == "right"


# ----------------------------------------------------------------------------- policy and reference

def test_policy_cpu_float32_train_mode_no_cache(tiny_policy_dir):
    policy = load_policy(tiny_policy_dir, CPU)
    assert policy.training and policy.config.use_cache is False
    assert next(policy.parameters()).dtype == torch.float32
    trained = load_policy(tiny_policy_dir, CPU, dtype="bfloat16")  # float32 master weights, bf16 compute
    assert next(trained.parameters()).dtype == torch.float32 and trained.compute_dtype == torch.bfloat16
    assert next(load_policy(tiny_policy_dir, CPU, dtype="bfloat16", master=False).parameters()).dtype == torch.bfloat16
    ref = load_reference(tiny_policy_dir, CPU)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())


@pytest.mark.parametrize("tied", [False, True])
def test_bf16_reference_computes_as_the_master_weight_policy_before_any_update(tmp_path, tied):
    """KL = 0 at the start of a bf16 run: the reference of a float32-master policy computes the
    same log-probabilities bit for bit (a plain bf16 copy does not), tied head or not."""
    from rollout import response_logprobs
    model = make_tiny_mistral(100, seed=3)
    if tied:
        model.config.tie_word_embeddings = True
        model.tie_weights()
    model.to(torch.bfloat16).save_pretrained(tmp_path / "sft")  # the paper's SFT model is bf16
    policy = load_policy(tmp_path / "sft", CPU, dtype="bfloat16").eval()
    reference = load_reference(tmp_path / "sft", CPU, dtype="bfloat16", policy=policy)
    ids = torch.randint(3, 100, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a left-padded row
    with torch.no_grad():
        want = response_logprobs(policy, ids, mask, 6)
        assert torch.equal(response_logprobs(reference, ids, mask, 6), want)
        plain = load_reference(tmp_path / "sft", CPU, dtype="bfloat16")  # no policy: plain bf16
        assert not torch.equal(response_logprobs(plain, ids, mask, 6), want)
    linear = reference.model.layers[0].mlp.up_proj.weight
    assert linear.dtype == torch.bfloat16 and reference.model.norm.weight.dtype == torch.float32
    head = reference.get_output_embeddings().weight
    assert head.dtype == (torch.float32 if tied else torch.bfloat16)


def test_left_padding_keeps_policy_logprobs_with_position_ids(tiny_policy_dir):
    tok = load_tokenizer(tiny_policy_dir)  # left padding
    policy = load_policy(tiny_policy_dir, CPU).eval()
    absolute = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()
    short, long = "how do i bake bread", "please help me with this step one two three first"
    alone_ids, alone_mask = ids_of(tok, [short], side="left")
    ids, mask = ids_of(tok, [short, long], side="left")
    n = alone_ids.shape[1]
    assert mask[0].sum() == n and mask[0, 0] == 0  # the short one really is left-padded
    with torch.no_grad():
        for model in (policy, absolute):
            ref = token_logprobs(model, alone_ids, alone_mask)[0]  # (n-1,)
            good = token_logprobs(model, ids, mask, position_ids_from_mask(mask))[0, -(n - 1):]
            torch.testing.assert_close(good, ref, atol=1e-5, rtol=0)
        # RoPE (Mistral, LLaMA) only sees relative positions, so a plain forward survives left padding; a model
        # with absolute positions does not: the trap position_ids_from_mask avoids.
        bad = token_logprobs(absolute, ids, mask)[0, -(n - 1):]
        assert (bad - token_logprobs(absolute, alone_ids, alone_mask)[0]).abs().max() > 1e-3


def test_gradient_checkpointing_gives_same_subset_gradients(tiny_policy_dir):
    tok = load_tokenizer(tiny_policy_dir)
    ids, mask = ids_of(tok, ["hello world how do i", "sorry i cannot"], side="left")
    grads = []
    for ckpt in (False, True):
        policy = load_policy(tiny_policy_dir, CPU, gradient_checkpointing=ckpt)
        flag = "is_activation_checkpointing" if hasattr(type(policy), "is_activation_checkpointing") else "is_gradient_checkpointing"
        assert getattr(policy, flag) == ckpt
        last = list(policy.model.layers[-1].parameters())
        loss = -token_logprobs(policy, ids, mask, position_ids_from_mask(mask)).mean()
        grads.append(torch.autograd.grad(loss, last))  # non-reentrant: a subset of parameters works
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_lora_reference_is_base_with_adapter_disabled(tiny_policy_dir):
    tok = load_tokenizer(tiny_policy_dir)
    ids, mask = ids_of(tok, ["how do i steal a car", "hello"], side="left")
    pos = position_ids_from_mask(mask)
    policy = load_policy(tiny_policy_dir, CPU, lora_r=4)
    ref = load_reference(tiny_policy_dir, CPU, policy=policy)
    base = load_reference(tiny_policy_dir, CPU)  # an independent plain copy
    assert isinstance(ref, AdapterDisabledReference) and list(ref.parameters()) == []
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ref.eval().requires_grad_(False)  # must not freeze or switch the policy
    assert policy.training and all(p.requires_grad for n, p in policy.named_parameters() if n in trainable)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        pol, r, b = (m(input_ids=ids, attention_mask=mask, position_ids=pos).logits for m in (policy, ref, base))
    torch.testing.assert_close(r, b, atol=1e-5, rtol=0)
    assert (pol - r).abs().max() > 1e-3
    assert policy.training and not r.requires_grad


# ----------------------------------------------------------------------------- critic

def test_critic_shapes_padding_and_save_load(tiny_policy_dir, tmp_path):
    tok = load_tokenizer(tiny_policy_dir)
    critic = Critic.from_policy(tiny_policy_dir, 3, CPU)
    ids, mask = ids_of(tok, ["how do i bake bread", "please help me with this step one"], side="left")
    values = critic(ids, mask)
    assert values.shape == (2, ids.shape[1], 3) and values.dtype == torch.float32
    assert values.abs().max() == 0  # zero-initialised head
    with torch.no_grad():
        critic.value_head.weight.normal_()
        critic.value_head.bias.normal_()
        critic.backbone.norm.weight.add_(0.5)
    values = critic(ids, mask)
    alone_ids, alone_mask = ids_of(tok, ["how do i bake bread"])
    n = alone_ids.shape[1]
    torch.testing.assert_close(values[0, -n:], critic(alone_ids, alone_mask)[0], atol=1e-5, rtol=0)
    critic.save(tmp_path / "critic")
    loaded = Critic.load(tmp_path / "critic", CPU)
    torch.testing.assert_close(loaded(ids, mask), values, atol=0, rtol=0)
    with pytest.raises(FileNotFoundError, match="critic.json"):
        Critic.load(tmp_path, CPU)


def test_lora_critic_save_load(tiny_policy_dir, tmp_path):
    tok = load_tokenizer(tiny_policy_dir)
    critic = Critic.from_policy(tiny_policy_dir, 2, CPU, lora_r=4, gradient_checkpointing=True)
    with torch.no_grad():
        for name, p in critic.named_parameters():
            if "lora_B" in name or "value_head" in name:
                p.normal_()
    ids, mask = ids_of(tok, ["hello world", "sorry i cannot help"], side="left")
    critic.save(tmp_path / "c")
    torch.testing.assert_close(Critic.load(tmp_path / "c", CPU)(ids, mask), critic(ids, mask), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- beaver score checkpoints

def beaver_config(vocab_size, bias=False, score_dim=1, arch="LlamaModelForScore"):
    """config.json as beaver-7b-v1.0-{reward,cost} publish it (transformers 4.29 era fields), only tiny."""
    return {"architectures": [arch], "bias": bias, "bos_token_id": 1, "eos_token_id": 2,
            "hidden_act": "silu", "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
            "max_position_embeddings": 128, "model_type": "llama", "num_attention_heads": 4,
            "num_hidden_layers": 2, "pad_token_id": 0, "rms_norm_eps": 1e-06, "score_dim": score_dim,
            "score_type": "reward", "tie_word_embeddings": False, "torch_dtype": "float32",
            "transformers_version": "4.29.0.dev0", "use_cache": True, "vocab_size": vocab_size}


def write_beaver_checkpoint(path, fmt="safetensors", bias=False, score_dim=1, extra=None, arch="LlamaModelForScore"):
    """Write config, tokenizer and weights by hand (no LlamaModelForScore involved). Returns (backbone, W, b)."""
    os.makedirs(path, exist_ok=True)
    tok = make_tiny_tokenizer(path)
    cfg = beaver_config(len(tok), bias, score_dim, arch)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    torch.manual_seed(1)
    fields = {k: v for k, v in cfg.items() if k not in ("architectures", "score_dim", "bias", "score_type")}
    backbone = LlamaModel(LlamaConfig(**fields)).eval()
    weights = {"model." + k: v.clone() for k, v in backbone.state_dict().items()}
    weights["score_head.weight"] = torch.randn(score_dim, 32)
    if bias:
        weights["score_head.bias"] = torch.randn(score_dim)
    weights.update(extra or {})
    keys = sorted(weights)
    if fmt == "safetensors":
        save_file(weights, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    elif fmt == "bin":
        torch.save(weights, os.path.join(path, "pytorch_model.bin"))
    else:  # sharded: two shards plus the index, as 7B checkpoints are published
        stem, ext = ("model", "safetensors") if fmt == "sharded_safetensors" else ("pytorch_model", "bin")
        shards = {f"{stem}-0000{i + 1}-of-00002.{ext}": keys[i::2] for i in range(2)}
        weight_map = {}
        for name, ks in shards.items():
            part = {k: weights[k] for k in ks}
            if ext == "safetensors":
                save_file(part, os.path.join(path, name), metadata={"format": "pt"})
            else:
                torch.save(part, os.path.join(path, name))
            weight_map.update({k: name for k in ks})
        index = {"metadata": {"total_size": sum(v.numel() * 4 for v in weights.values())}, "weight_map": weight_map}
        index_name = "model.safetensors.index.json" if ext == "safetensors" else "pytorch_model.bin.index.json"
        with open(os.path.join(path, index_name), "w") as f:
            json.dump(index, f)
    return backbone, weights["score_head.weight"], weights.get("score_head.bias")


def manual_end_scores(backbone, W, b, tok, texts):
    """Each text alone, no padding: W @ last hidden state (+ b). Independent of the mask logic."""
    out = []
    for t in texts:
        ids = tok(t, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            h = backbone(input_ids=ids).last_hidden_state[0, -1]  # (H,)
        out.append(W @ h + (b if b is not None else 0))
    return torch.stack(out)  # (B, score_dim)


TEXTS = ["BEGINNING OF CONVERSATION: USER: how do i bake bread ASSISTANT: first then finally </s>",
         "BEGINNING OF CONVERSATION: USER: hello ASSISTANT: sorry </s>",
         "BEGINNING OF CONVERSATION: USER: how do i steal a car please help me ASSISTANT: i cannot help you with this </s>"]


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "sharded_safetensors", "sharded_bin"])
def test_beaver_checkpoint_matches_manual_scores(tmp_path, fmt):
    path = str(tmp_path / "beaver")
    backbone, W, b = write_beaver_checkpoint(path, fmt)
    model, tok = load_score_model(path, CPU)
    assert isinstance(model, LlamaModelForScore) and tok.padding_side == "right" and tok.pad_token is not None
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    ids, mask = ids_of(tok, TEXTS)
    assert (mask == 0).any()  # really padded
    with torch.no_grad():
        scores = model(input_ids=ids, attention_mask=mask)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, manual_end_scores(backbone, W, b, tok, TEXTS)[:, 0], atol=1e-5, rtol=0)


def test_beaver_scores_do_not_depend_on_batch_or_padding_side(tmp_path):
    path = str(tmp_path / "beaver")
    # The later safe-rlhf class name and its normalizer buffers (ignored) load too.
    extra = {"normalizer.mean": torch.zeros(1), "normalizer.var": torch.ones(1), "normalizer.count": torch.zeros(1)}
    write_beaver_checkpoint(path, bias=True, extra=extra, arch="LlamaForScore")
    model, tok = load_score_model(path, CPU)
    assert model.score_head.bias is not None
    with torch.no_grad():
        alone = torch.cat([model(*ids_of(tok, [t])) for t in TEXTS])
        right = model(*ids_of(tok, TEXTS, "right"))
        left = model(*ids_of(tok, TEXTS, "left"))
        reordered = model(*ids_of(tok, TEXTS[::-1] + TEXTS[:1], "right"))
    for batch in (right, left, reordered[:3].flip(0)):
        torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)


def test_beaver_score_dim_two_returns_matrix(tmp_path):
    path = str(tmp_path / "beaver2")
    backbone, W, b = write_beaver_checkpoint(path, score_dim=2)
    model, tok = load_score_model(path, CPU)
    with torch.no_grad():
        scores = model(*ids_of(tok, TEXTS))
    assert scores.shape == (3, 2)
    torch.testing.assert_close(scores, manual_end_scores(backbone, W, b, tok, TEXTS), atol=1e-5, rtol=0)


def test_checkpoint_without_score_head_is_refused(tmp_path):
    path = str(tmp_path / "nohead")
    write_beaver_checkpoint(path)
    weights = {k: v for k, v in load_file(os.path.join(path, "model.safetensors")).items()
               if not k.startswith("score_head")}
    save_file(weights, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="no trained score head"):
        load_score_model(path, CPU)
    write_beaver_checkpoint(path, extra={"score_head.bias": torch.ones(1)})  # config says bias: false
    with pytest.raises(ValueError, match="score_head.bias"):
        load_score_model(path, CPU)


def test_new_score_model_round_trip(tmp_path):
    tok = make_tiny_tokenizer(tmp_path / "rm")
    model = new_score_model(dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=64, pad_token_id=0))
    assert model.config.architectures == ["LlamaModelForScore"] and model.config.score_dim == 1
    assert model.score_head.bias is None
    model.save_pretrained(tmp_path / "rm")
    with open(tmp_path / "rm" / "config.json") as f:
        saved = json.load(f)
    assert saved["architectures"] == ["LlamaModelForScore"] and saved["score_dim"] == 1 and saved["bias"] is False
    loaded, tok2 = load_score_model(tmp_path / "rm", CPU)
    ids, mask = ids_of(tok2, TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask), model.eval()(ids, mask), atol=0, rtol=0)


def test_sequence_classifier_with_one_label_is_wrapped(tmp_path):
    tok = make_tiny_tokenizer(tmp_path / "sc")
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, num_labels=1)
    ref_model = MistralForSequenceClassification(cfg).eval()
    ref_model.save_pretrained(tmp_path / "sc")
    model, tok = load_score_model(tmp_path / "sc", CPU)
    with torch.no_grad():
        scores = model(*ids_of(tok, TEXTS))
        alone = torch.stack([ref_model(**tok(t, return_tensors="pt")).logits[0, 0] for t in TEXTS])
    assert scores.shape == (3,)
    torch.testing.assert_close(scores, alone, atol=1e-5, rtol=0)
    cfg.num_labels = 3
    MistralForSequenceClassification(cfg).save_pretrained(tmp_path / "sc3")
    tok.save_pretrained(tmp_path / "sc3")
    with pytest.raises(ValueError, match="3 labels"):
        load_score_model(tmp_path / "sc3", CPU)


def test_plain_causal_lm_is_not_a_score_model(tiny_policy_dir):
    with pytest.raises(ValueError, match="MistralForCausalLM, not a reward or cost model"):
        load_score_model(tiny_policy_dir, CPU)


# ----------------------------------------------------------------------------- offline errors

@pytest.mark.parametrize("call", [
    lambda p: load_tokenizer(p), lambda p: load_policy(p, CPU), lambda p: load_reference(p, CPU),
    lambda p: load_score_model(p, CPU), lambda p: Critic.from_policy(p, 2, CPU)])
@pytest.mark.parametrize("name", ["nobody-xyz/not-a-model-123", "/no/such/folder"])
def test_offline_unknown_id_gives_one_clear_sentence(call, name):
    with pytest.raises(FileNotFoundError) as err:
        call(name)
    msg = str(err.value)
    assert name in msg and "could not be downloaded from the Hugging Face Hub" in msg and msg.count("\n") == 0
    assert err.value.__cause__ is None and err.value.__suppress_context__


# ----------------------------------------------------------------------------- soups and memory

def test_param_count_from_config_matches_built_models():
    tiny = make_tiny_mistral(50)
    assert param_count_from_config(tiny.config) == sum(p.numel() for p in tiny.parameters())
    assert param_count_from_config(tiny.config, head="base") == sum(p.numel() for p in tiny.model.parameters())
    score_cfg = LlamaConfig(**{k: v for k, v in beaver_config(50).items() if k != "architectures"})
    score_cfg.architectures = ["LlamaModelForScore"]
    built = LlamaModelForScore(LlamaConfig(**beaver_config(50)))
    assert param_count_from_config(score_cfg) == sum(p.numel() for p in built.parameters())
    assert score_cfg.architectures == ["LlamaModelForScore"]
    # The paper's policy (Mistral-7B: MistralConfig defaults) counted on the meta device, no memory used.
    assert param_count_from_config(MistralConfig()) == 7_241_732_096


def test_memory_plan_rows_and_text():
    from scale.memory import MemoryRow, memory_plan
    policy = torch.nn.Linear(10, 10)  # 110 parameters, all trainable
    frozen = torch.nn.Linear(10, 1).requires_grad_(False)  # 11
    rows, text = memory_plan({"policy": policy, "reward": frozen, "critic": 1000}, dtype=torch.bfloat16,
                             trainable={"critic": True}, available_bytes=10**9)
    byname = {r.name: r for r in rows}
    assert byname["policy"] == MemoryRow("policy", 110, 110, 220, 220, 440)
    assert byname["reward"].total_bytes == 22 and byname["critic"].optimizer_bytes == 4000
    assert "total" in text and "fits" in text and "NOT" not in text
    lora = memory_plan({"policy": 1000}, trainable={"policy": 10}, optimizer="sgd")[0][0]
    assert (lora.grad_bytes, lora.optimizer_bytes) == (40, 0)
    with pytest.raises(ValueError, match="optimizer"):
        memory_plan({"p": 1}, optimizer="lion")
