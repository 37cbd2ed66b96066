"""Reading models in the formats they are published in: Hub ids and local folders, tokenizers,
padded batches, and the two score-model layouts.

- from_hub: any `from_pretrained` call on a Hub id or a local folder, where a missing folder or an
  offline Hub miss is one sentence; `meta_loading` builds the same model on the meta device (no
  memory) for sharded loading under torchrun (scale/distributed.py fills it from rank 0's copy).
- device and dtype defaults: bf16 on CUDA (the paper trains in bf16), float32 on the CPU.
- load_tokenizer: a pad token for tokenizers without one (unk first, see below), padding side.
- padded batches: positions counted over real tokens (left padding, as generate() numbers them)
  and the index of each row's last real token (where a score model reads its score).
- score models: `LlamaModelForScore`, the exact layout of PKU-Alignment/beaver-7b-v1.0-{reward,
  cost} (LLaMA backbone `model.*` + `score_head`), or any AutoModelForSequenceClassification with
  one label (`SequenceClassifierScore`). The score is read at the last non-padding token, as the
  beaver models do; their training-time `normalizer` buffers are ignored on load (the published
  v1.0 scores are raw).

model.py builds the trained networks from these, rewards.py scores with the score models.
Run: nothing to run; `python -m pytest -q tests/test_model.py tests/test_rewards.py` checks it.
Left out on purpose: quantised checkpoints, remote code (`trust_remote_code`), and score models
with several outputs.
"""
import contextlib
import logging
import os
import re
import warnings

# Hub kernels off unless the user asks (USE_HUB_KERNELS=1): transformers >= 5.25 turns them on
# whenever the `kernels` package is installed, and they replace layers with code fetched from the
# Hub, so a run would download at start-up, compute with other layers than the torch ones every
# figure here was measured with, and fail on models built on the meta device (sharded loading).
os.environ.setdefault("USE_HUB_KERNELS", "NO")

import torch  # noqa: E402  (after the environment variable, which transformers reads)
import transformers  # noqa: E402
from torch import nn  # noqa: E402
from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification,  # noqa: E402
                          AutoTokenizer, LlamaConfig, LlamaModel, LlamaPreTrainedModel)

# one bar per shard per model is noise in a training log
transformers.utils.logging.disable_progress_bar()
log = logging.getLogger(__name__)
# The beaver configs have said both over time (safe-rlhf renamed the class); same weights, same
# forward.
SCORE_ARCHITECTURES = ("LlamaModelForScore", "LlamaForScore")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # LoRA's modules (docs/decisions.md)


# --------------------------------------------------------------------- devices, Hub and folders

def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device) -> torch.dtype:
    # bf16 halves memory on GPUs (the paper trains in bf16); CPUs are slow and imprecise in bf16.
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def dtype_for(dtype, device) -> torch.dtype:
    if dtype is None:
        return default_dtype(device)
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


META = {"on": False}  # set by meta_loading


@contextlib.contextmanager
def meta_loading():
    """Inside the block the loaders below build their model with every parameter and buffer on
    the meta device (from_pretrained's device_map="meta": same config, classes, head checks and
    dtype handling, no memory) and leave it there (`place` skips the move). Sharded loading uses
    it on every rank (scale.distributed.load_sharded): FSDP shards the empty model, then rank 0's
    weights are broadcast into the shards."""
    META["on"] = True
    try:
        yield
    finally:
        META["on"] = False


def pretrained(loader, name_or_path, **kwargs):
    """loader(name_or_path, **kwargs), on the meta device inside meta_loading."""
    if META["on"]:
        kwargs["device_map"] = "meta"
    return loader(str(name_or_path), **kwargs)


def place(module, device):
    """module.to(device), except for a meta model (meta_loading), which stays empty."""
    return module if META["on"] else module.to(device)


def from_hub(loader, name_or_path, what, **kwargs):
    """Call loader(name_or_path, **kwargs); a missing local folder or a hub miss becomes one clear
    sentence."""
    name_or_path = str(name_or_path)
    try:
        return pretrained(loader, name_or_path, **kwargs)
    except OSError as err:
        # transformers raises OSError for offline, unknown repo id and malformed path alike
        if os.path.isdir(name_or_path):
            raise  # a real folder with a broken file: the original message is the useful one
        log.debug("loading %s failed: %s", name_or_path, err)
        raise FileNotFoundError(
            f"The {what} '{name_or_path}' is not a local folder and could not be downloaded from "
            "the Hugging Face Hub (offline?); download it first or pass a local path.") from None


def load_tokenizer(name_or_path, padding_side="left"):
    """Left padding for policy prompts (generation appends on the right); right padding for
    scorers."""
    tok = from_hub(AutoTokenizer.from_pretrained, name_or_path, "tokenizer")
    if tok.pad_token is None:
        # Reuse an existing token so the embedding matrix keeps its shape; unk first, because eos as
        # pad would make "last non-pad token" rules (AutoModelForSequenceClassification) skip a real
        # eos.
        if tok.unk_token is not None:
            tok.pad_token = tok.unk_token
        elif tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        else:
            raise ValueError(f"The tokenizer '{name_or_path}' has no pad, unk or eos token; "
                             "add a pad token to it.")
    tok.padding_side = padding_side
    return tok


def load_backbone(name_or_path, dtype):
    """AutoModel (no LM head) from a causal-LM checkpoint; the dropped lm_head is expected, so the
    load report that lists it as unexpected is silenced."""
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return from_hub(AutoModel.from_pretrained, name_or_path, "critic base model", dtype=dtype)
    finally:
        hf_logging.set_verbosity(verbosity)


# --------------------------------------------------------------------- transformers and peft

def enable_checkpointing(model):
    # Non-reentrant, so torch.autograd.grad over a subset of parameters (GAPO's last-layer
    # gradients) works.
    kwargs = {"use_reentrant": False}
    # newer transformers renamed it; the old name warns
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def peft_call(fn, *args, **kwargs):
    # peft still reads the deprecated is_gradient_checkpointing: noise only
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)
        return fn(*args, **kwargs)


def add_lora(model, r, alpha, dropout, task_type):
    """LoRA on LORA_TARGETS; alpha 0 means 2 r (scale alpha / r = 2, docs/decisions.md)."""
    from peft import LoraConfig, get_peft_model
    alpha = alpha or 2 * r
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGETS),
                     task_type=task_type)
    return peft_call(get_peft_model, model, cfg)  # freezes the base; only the adapters train


def _num_layers(config):
    """Decoder depth from a model config; multimodal configs keep it under text_config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for cfg in (text, getattr(config, "text_config", None), config):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if cfg is not None and isinstance(getattr(cfg, key, None), int):
                return getattr(cfg, key)
    return None


# A decoder block's parameter name: "...layers.N." (Llama, Mistral, Qwen2, also under peft's
# "base_model.model." prefix) or "...h.N." (GPT-2 style "transformer.h.N.").
BLOCK_NAME = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
VISION_PARTS = ("vision", "visual", "image")  # multimodal towers have their own "layers.N."


def last_block_names(model):
    """(index of the last decoder block of the language model, the names of its parameters)."""
    named = [n for n, _ in model.named_parameters()]
    text_blocks = [(n, int(m.group(1))) for n in named
                   if (m := BLOCK_NAME.search(n)) and not any(v in n for v in VISION_PARTS)]
    depth = _num_layers(model.config)
    last = depth - 1 if depth else max((i for _, i in text_blocks), default=-1)
    return last, {n for n, i in text_blocks if i == last}


def mgda_parameters(policy, which):
    """The parameters the objective gradients g_i are taken with respect to (docs/decisions.md,
    "Which last layer").

    last_block: the trainable parameters of the last decoder block (the default, the paper's
    "last layer"); lm_head: the output head (the embedding matrix when the head is tied to it);
    all: every trainable parameter (exact, for small models).
    """
    named = list(policy.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    if which == "all":
        chosen = trainable
        if not chosen:
            raise ValueError("mgda_params='all' selects no parameter: none is trainable")
    elif which == "last_block":
        last, in_last = last_block_names(policy)
        chosen = [(n, p) for n, p in trainable if n in in_last]
        if not chosen:
            what = "has no trainable parameter" if in_last else "was not found among the parameters"
            raise ValueError(f"mgda_params='last_block': decoder block {last} {what} (looked for "
                             f"names like model.layers.{last}. or transformer.h.{last}.); "
                             f"use --mgda_params all")
    elif which == "lm_head":
        head = policy.get_output_embeddings()
        head_ids = {id(p) for p in head.parameters()} if head is not None else set()
        chosen = [(n, p) for n, p in trainable if id(p) in head_ids or "lm_head" in n]
        if not chosen:
            if head is None:
                why = "the model has no output head"
            elif hasattr(policy, "peft_config"):
                why = "with LoRA the output head is frozen"
            else:
                why = "the output head is frozen"
            raise ValueError(f"mgda_params='lm_head' selects no trainable parameter ({why}); "
                             f"use --mgda_params last_block or all")
    else:
        raise ValueError(f"unknown mgda_params {which!r}; choose last_block, lm_head or all")
    return [p for _, p in chosen]


# --------------------------------------------------------------------- padded batches

def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 mask -> (B, T) positions counted over real tokens only (pads get 0), as generate()
    numbers them. A plain forward numbers the pad tokens too: harmless up to rounding for RoPE
    models (relative), wrong for models with absolute positions. Pass these to every forward on
    left-padded batches."""
    assert attention_mask.dim() == 2, attention_mask.shape
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) mask -> (B,) index of the last 1 in each row; right for either padding side."""
    assert attention_mask.dim() == 2, attention_mask.shape
    T = attention_mask.shape[1]
    positions = torch.arange(T, device=attention_mask.device).expand_as(attention_mask)
    return (positions * attention_mask.long()).argmax(-1)


# --------------------------------------------------------------------- score models

class LlamaModelForScore(LlamaPreTrainedModel):
    """The beaver score model: LlamaModel (`model.*`) +
    `score_head = Linear(hidden, score_dim, bias)`.

    forward(input_ids, attention_mask) -> end scores, score_head(h) at the last real token: (B,)
    when score_dim == 1, (B, score_dim) otherwise. Positions come from the mask, so the score of a
    text does not depend on the padding side or on the other texts in the batch.
    """
    # training-time extras, not used
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\.", r"^normalizer\."]

    def __init__(self, config):
        super().__init__(config)
        if not is_score_config(config):
            config.architectures = ["LlamaModelForScore"]
        config.score_dim = getattr(config, "score_dim", None) or 1
        config.bias = bool(getattr(config, "bias", False))
        self.model = LlamaModel(config)
        self.score_head = nn.Linear(config.hidden_size, config.score_dim, bias=config.bias)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        assert input_ids.dim() == 2, input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # (B, T, H)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                            position_ids=position_ids_from_mask(attention_mask)).last_hidden_state
        end = hidden[torch.arange(input_ids.shape[0], device=hidden.device),
                     last_token_index(attention_mask)]
        scores = self.score_head(end).float()  # (B, score_dim)
        return scores[:, 0] if self.config.score_dim == 1 else scores


class SequenceClassifierScore(nn.Module):
    """Wraps an AutoModelForSequenceClassification with one label so calling it returns (B,) like
    the beaver."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids, attention_mask=None, **kwargs):
        # The HF head pools at the last token that is not pad_token_id (its own rule, padding-side
        # robust).
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float()


def is_score_config(config):
    return any(a in SCORE_ARCHITECTURES for a in (config.architectures or []))


def new_score_model(config) -> LlamaModelForScore:
    """A fresh, randomly initialised LlamaModelForScore from a LlamaConfig or a dict of its
    fields."""
    if isinstance(config, dict):
        config = LlamaConfig(**{"score_dim": 1, "bias": False, **config})
    return LlamaModelForScore(config)


def _check_head(info, name_or_path):
    missing = [k for k in info["missing_keys"] if "score" in k]
    if missing:
        raise ValueError(f"'{name_or_path}' has no trained score head "
                         f"({', '.join(sorted(missing))} missing); "
                         "pass a reward or cost model checkpoint, not a plain language model.")
    unused = [k for k in info["unexpected_keys"] if "score" in k]
    # e.g. score_head.bias in the weights while config.bias is false: scores would be off by it
    if unused:
        raise ValueError(f"'{name_or_path}' holds {', '.join(sorted(unused))} that its config.json "
                         "does not declare; "
                         "fix the config (score_dim / bias) to match the weights.")


def load_score_model(name_or_path, device=None, dtype=None):
    """-> (frozen score model returning (B,) end scores, tokenizer with right padding and a pad
    token)."""
    device = torch.device(device) if device is not None else pick_device()
    dtype = dtype_for(dtype, device)
    config = from_hub(AutoConfig.from_pretrained, name_or_path, "score model")
    tokenizer = load_tokenizer(name_or_path, padding_side="right")
    if is_score_config(config):
        model, info = pretrained(LlamaModelForScore.from_pretrained, name_or_path, dtype=dtype,
                                  output_loading_info=True)
        if getattr(config, "do_normalize", False):
            log.warning("score model '%s' asks for normalised scores (do_normalize); "
                        "raw scores are returned", name_or_path)
    else:
        archs = config.architectures or []
        if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
            raise ValueError(f"'{name_or_path}' is a {archs[0]}, not a reward or cost model; "
                             "pass a beaver LlamaModelForScore checkpoint or an "
                             "AutoModelForSequenceClassification with one label.")
        if config.num_labels != 1:
            raise ValueError(f"The score model '{name_or_path}' has {config.num_labels} labels; "
                             "pass a reward model with exactly one output (num_labels == 1) or a "
                             "beaver LlamaModelForScore checkpoint.")
        model, info = pretrained(AutoModelForSequenceClassification.from_pretrained,
                                  name_or_path, dtype=dtype, output_loading_info=True)
        if model.config.pad_token_id is None:
            # HF's pooling refuses batches > 1 without it
            model.config.pad_token_id = tokenizer.pad_token_id
        if model.config.pad_token_id == tokenizer.eos_token_id:
            log.warning("score model '%s' pads with its eos token: HF pools before a trailing eos",
                        name_or_path)
        model = SequenceClassifierScore(model)
    _check_head(info, name_or_path)
    return place(model, device).eval().requires_grad_(False), tokenizer


# --------------------------------------------------------------------- scorer input

# What --scorer_format accepts; a Scorer itself holds one of TEMPLATES (auto resolved at load).
SCORER_FORMATS = ("auto", "chat", "safe_rlhf")
TEMPLATES = {"safe_rlhf": "the Safe RLHF template", "chat": "its tokenizer's chat template"}


def scorer_template(model, tokenizer, scorer_format="auto", name="reward") -> str:
    """The text a score model reads: "safe_rlhf" or "chat". scorer_format forces one; "auto"
    gives the chat template only to a one-label sequence classifier (SequenceClassifierScore)
    whose tokenizer has one: Hub reward models of that kind are trained on their chat template.
    The beaver layout is Safe RLHF's own, trained on its template, even when its tokenizer
    carries a chat template for the policy (the toy and smol worlds' do)."""
    if scorer_format not in SCORER_FORMATS:
        raise ValueError(f"unknown scorer_format {scorer_format!r}; choose auto, chat or "
                         "safe_rlhf.")
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if scorer_format == "chat" and not has_chat:
        raise ValueError(f"--scorer_format chat: the {name} model's tokenizer has no chat "
                         "template; use --scorer_format auto or safe_rlhf.")
    if scorer_format != "auto":
        return scorer_format
    # isinstance survives FSDP2, which swaps a sharded module's class for a subclass
    classifier = (isinstance(model, SequenceClassifierScore)
                  and getattr(model.config, "num_labels", 1) == 1)
    return "chat" if classifier and has_chat else "safe_rlhf"
