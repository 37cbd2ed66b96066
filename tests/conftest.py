"""Shared pytest fixtures: seeded generators and tiny models saved in the real Hugging Face format.

Everything here is built locally in a temp folder (no network). Later test files extend it.
"""
import os
import random

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models: one thread is faster than two on a shared 2-core machine

WORDS = ("hello world how do i bake bread steal a car please help me with this step one two three "
         "first then finally sorry i cannot the you to and of is it").split()


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same RNG state (torch, numpy, random)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def make_tiny_tokenizer(path=None):
    """A word-level PreTrainedTokenizerFast with pad/eos/bos/unk, saved with save_pretrained if path."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(special + sorted(set(WORDS + ["USER:", "ASSISTANT:", "BEGINNING", "OF", "CONVERSATION:"])))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                 eos_token="</s>", unk_token="<unk>")
    if path is not None:
        hf.save_pretrained(path)
    return hf


def make_tiny_mistral(vocab_size, path=None, seed=0):
    """A 2-layer random MistralForCausalLM (the paper's policy architecture), saved if path."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                           tie_word_embeddings=False)
    model = MistralForCausalLM(config)
    if path is not None:
        model.save_pretrained(path)
    return model


@pytest.fixture
def tiny_tokenizer_dir(tmp_path):
    path = tmp_path / "tokenizer"
    make_tiny_tokenizer(path)
    return str(path)


@pytest.fixture
def tiny_policy_dir(tmp_path):
    """A folder with a tiny Mistral policy and its tokenizer, loadable by from_pretrained alone."""
    path = tmp_path / "policy"
    tok = make_tiny_tokenizer(path)
    make_tiny_mistral(len(tok), path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_toyworld(tmp_path_factory):
    """The toy world at its "tiny" size (seconds to build), once per test session."""
    from worlds import toyworld

    path = tmp_path_factory.mktemp("toyworld") / "world"
    toyworld.ensure_toyworld(str(path), seed=0, size="tiny", progress=False)
    return str(path)
