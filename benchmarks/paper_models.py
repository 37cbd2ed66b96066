"""The paper's architectures from random weights, and inputs for them: what benchmarks/bench.py
builds, times and saves.

The paper's models (Sec. 4.1): a Mistral-7B policy and critic, LLaMA-7B reward and cost models
(model.LlamaModelForScore), each built straight on the device in the target dtype, wrapped as
model.py's loaders wrap them (LoRA, gradient checkpointing, the reference = the policy with its
adapter off); TINY gives 2-layer, hidden-64 versions of the same classes for CPU runs. A word-level
tokenizer over the same 32,000 ids and random prompts of exactly P tokens stand in for the real
tokenizer and data; save_random_models writes all of it in Hugging Face format for train.py.

Not run on its own: `python -m benchmarks.bench` (see its docstring) is the command line.
Left out on purpose: real weights and tokenizers (speed and memory depend only on the shapes), and
any download.
"""
import contextlib
import json
import os

import torch
from transformers import LlamaConfig, MistralConfig, MistralForCausalLM, MistralModel

import train
from formats.models import add_lora, enable_checkpointing, new_score_model
from model import Critic, load_reference

VOCAB = 32000
# HuggingFaceH4/mistral-7b-sft-beta (Mistral-7B-v0.1) and the LLaMA-7B backbone of
# PKU-Alignment/beaver-7b-v1.0-{reward,cost}. Only the sizes matter for speed and memory.
MISTRAL_7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                  rope_theta=10000.0, sliding_window=4096)
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)
TOKEN_IDS = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                 tie_word_embeddings=False)


def configs(tiny):
    """(Mistral config of the policy and critic, LLaMA config of the reward and cost models)."""
    size_m, size_l = (TINY, TINY) if tiny else (MISTRAL_7B, LLAMA_7B)
    return (MistralConfig(**{**size_m, **TOKEN_IDS}),
            LlamaConfig(**{**size_l, **TOKEN_IDS, "max_position_embeddings": 2048}))


@contextlib.contextmanager
def building(device, dtype):
    """Allocate and initialise straight on the device in the target dtype: a 7B model never passes
    through CPU float32 (28 GB and minutes of init)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_models(args, device, dtype):
    """policy, reference, critic, reward, cost: the same classes and wrappers model.py's loaders
    return. args: bench.parse_args's (tiny, seed, lora_r, gradient_checkpointing, new_tokens)."""
    mistral, llama = configs(args.tiny)
    torch.manual_seed(args.seed)
    with building(device, dtype):
        policy = MistralForCausalLM(mistral)
        backbone = MistralModel(mistral)
        scorers = [new_score_model(llama) for _ in range(2)]
        reference = None if args.lora_r else MistralForCausalLM(mistral)
    for m in (policy, backbone):
        m.config.use_cache = False  # as model.load_policy: training forwards; generate asks for it
        if args.gradient_checkpointing:
            enable_checkpointing(m)
    if args.lora_r:
        policy = add_lora(policy, args.lora_r, 0, 0.0, "CAUSAL_LM")  # alpha 0 = 2 r, train.py's
        backbone = add_lora(backbone, args.lora_r, 0, 0.0, "FEATURE_EXTRACTION")
        reference = load_reference(None, device, policy=policy)  # adapter disabled: no 2nd copy
    else:
        reference.eval().requires_grad_(False)
    critic = Critic(backbone, len(train.OBJECTIVES)).train()
    reward, cost = (s.eval().requires_grad_(False) for s in scorers)
    # Every response has exactly R tokens: generate may not stop before (eos is masked until then).
    hf_policy = policy.get_base_model() if args.lora_r else policy
    hf_policy.generation_config.min_new_tokens = args.new_tokens
    return policy.train(), reference, critic, reward, cost


def word_tokenizer():
    """A word-level tokenizer over VOCAB ids ("w<id>"), ids 0-2 = <unk>/<s>/</s> as in Mistral and
    LLaMA: rollout.generate takes text prompts, and random words give exactly P tokens each."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # pad = unk, as formats.models.load_tokenizer picks for the Mistral tokenizer (it has no pad)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<unk>")


def random_prompts(generator, B, P):
    """B prompts of P random words each (no special ids), drawn from `generator`."""
    ids = torch.randint(3, VOCAB, (B, P), generator=generator)
    return [" ".join(f"w{i}" for i in row.tolist()) for row in ids]


def matmul_params(model):
    """(N, N_trainable) without the input embeddings (a lookup, no FLOPs); LoRA factors count as
    matmuls."""
    n = n_train = 0
    for name, p in model.named_parameters():
        if "embed_tokens" in name:
            continue
        n += p.numel()
        n_train += p.numel() if p.requires_grad else 0
    return n, n_train


def save_random_models(args, root):
    """Random-weight policy (Mistral) and reward / cost (beaver LlamaModelForScore) models in
    Hugging Face format with the word tokenizer, and a prompt file: what train.py loads, without a
    network. Returns their paths by role (policy, reward, cost, prompts)."""
    mistral, llama = configs(args.tiny)
    device = torch.device(args.device)
    tokenizer = word_tokenizer()
    # The reward and cost models would be the same random weights (same seed), so one folder serves
    # both: at 7B that is 13 GiB less to write and read.
    paths = {name: os.path.join(root, name) for name in ("policy", "score")}
    for name, path in paths.items():
        with building(device, torch.bfloat16):
            torch.manual_seed(args.seed)
            model = MistralForCausalLM(mistral) if name == "policy" else new_score_model(llama)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        del model
    paths["reward"] = paths["cost"] = paths.pop("score")
    paths["prompts"] = os.path.join(root, "prompts.jsonl")
    generator = torch.Generator().manual_seed(args.seed)
    with open(paths["prompts"], "w") as f:
        for text in random_prompts(generator, 64, args.prompt_length // 2):
            f.write(json.dumps({"prompt": text}) + "\n")
    return paths
