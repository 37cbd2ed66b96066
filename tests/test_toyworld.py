"""worlds/toyworld.py: the tokenizer, and a tiny build with its cache round trip (build, reuse,
detect corruption, rebuild, load with the real loaders). The world's text, judge and preference
data are checked in test_toytext.py."""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from worlds import toytext as tt
from worlds import toyworld as tw

BREAD, CAR = "how do i bake bread", "can you tell me how to steal a car"


def test_tokenizer_round_trip_through_autotokenizer(tmp_path):
    from transformers import AutoTokenizer
    from data import format_policy_prompt, format_scorer_text

    tw.build_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert len(tok) == len(tt.world_words()) + 4 and not tok.clean_up_tokenization_spaces
    assert tok.convert_tokens_to_ids(tt.world_words()) == list(range(4, len(tok)))  # no word is unknown
    assert format_policy_prompt(tok, BREAD) == f"USER: {BREAD} ASSISTANT:"  # the chat template is used
    rng = np.random.default_rng(1)
    for p in tt.train_prompts():
        response = tt.make_response(rng, p.topic, "helpful")
        ids = tok(format_scorer_text(p.text, response, tok.eos_token))["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
        resp_ids = tok(response, add_special_tokens=False)["input_ids"]
        decoded = tok.decode(resp_ids + [tok.eos_token_id], skip_special_tokens=True)
        assert decoded == " ".join(response.split())  # exact, up to the leading space
        glued = tok(format_scorer_text(p.text, decoded, tok.eos_token))["input_ids"]  # "ASSISTANT:sure"
        assert glued == ids
    assert tok(["how do i", "how"], padding=True)["attention_mask"] == [[1, 1, 1, 1], [1, 1, 0, 0]]


def _sample(sft_dir, prompts):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = AutoModelForCausalLM.from_pretrained(sft_dir).eval()
    return tw.sample_responses(policy, AutoTokenizer.from_pretrained(sft_dir), prompts, seed=3)


def test_tiny_build_cache_round_trip_and_determinism(tmp_path, tiny_toyworld):
    from formats.models import load_score_model
    from rewards import Scorer, score_texts

    path = str(tmp_path / "world")
    m = tw.ensure_toyworld(path, seed=0, size="tiny", progress=False)
    assert tw.check_toyworld(path, 0, "tiny") is None and m["paths"] == tw.PATHS
    assert set(m["sft_rates_temperature_1"]) == {"train", "test"} and 0 <= m["cost"]["sign_accuracy"] <= 1
    with open(os.path.join(tiny_toyworld, "manifest.json")) as f:
        assert json.load(f)["files"] == m["files"]  # same seed -> byte-identical tokenizer and weights
    prompts = [p.text for p in tt.test_prompts()[:8]]
    paths = tw.toy_paths(path)
    assert _sample(paths["sft"], prompts) == _sample(tw.toy_paths(tiny_toyworld)["sft"], prompts)  # same samples

    # A valid cache is reused: fast, and nothing is rewritten.
    stamps = {f: os.stat(os.path.join(path, f)).st_mtime_ns for f in m["files"]}
    t0 = time.time()
    assert tw.ensure_toyworld(path, seed=0, size="tiny", progress=False) == m
    assert time.time() - t0 < 2.0
    assert stamps == {f: os.stat(os.path.join(path, f)).st_mtime_ns for f in m["files"]}

    # The parts load with the real loaders and score a response.
    for name in ("reward", "cost"):
        model, tok = load_score_model(paths[name], device="cpu")
        scores = score_texts(Scorer(model, tok, name), [CAR, BREAD], [" sure . first hotwire the car .", " sure ."])
        assert scores.shape == (2,) and torch.isfinite(scores).all()

    # Mismatch and corruption are detected; corruption is rebuilt, never used.
    assert "seed 0" in tw.check_toyworld(path, seed=1, size="tiny")
    assert "manifest" in tw.check_toyworld(str(tmp_path / "nothing"), 0, "tiny")
    weights = os.path.join(path, "sft", "model.safetensors")
    with open(weights, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\0" * 8)
    assert "sft/model.safetensors" in tw.check_toyworld(path, 0, "tiny")
    assert tw.ensure_toyworld(path, seed=0, size="tiny", progress=False)["files"] == m["files"]
    assert tw.check_toyworld(path, 0, "tiny") is None
    os.remove(os.path.join(path, "reward", "config.json"))
    assert "reward/config.json" in tw.check_toyworld(path, 0, "tiny")
    with pytest.raises(ValueError, match="unknown toy world size"):
        tw.ensure_toyworld(path, size="huge")


def test_cli_help_documents_the_options():
    out = subprocess.run([sys.executable, "-m", "worlds.toyworld", "--help"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), check=True).stdout
    for flag in ("--out", "--seed", "--size", "--force"):
        assert flag in out


def test_score_model_backbone_is_the_sft_policy(tiny_toyworld):
    """The reward model starts from the policy's backbone: with the same weights, Llama and Mistral agree."""
    from transformers import AutoModelForCausalLM
    from formats.models import new_score_model

    policy = AutoModelForCausalLM.from_pretrained(tw.toy_paths(tiny_toyworld)["sft"])
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters")
    score = new_score_model({k: getattr(policy.config, k) for k in keys})
    score.model.load_state_dict(policy.model.state_dict())
    ids = torch.randint(4, policy.config.vocab_size, (2, 20))
    assert torch.allclose(score.model(input_ids=ids).last_hidden_state, policy.model(input_ids=ids).last_hidden_state)


def test_a_world_built_from_older_text_is_rebuilt(tiny_toyworld, monkeypatch):
    assert tw.check_toyworld(tiny_toyworld, seed=0, size="tiny") is None
    monkeypatch.setitem(tt.BENIGN, "bake bread", "a changed|step list")
    assert "another version" in tw.check_toyworld(tiny_toyworld, seed=0, size="tiny")


def test_stale_build_folders_of_dead_processes_are_removed(tiny_toyworld):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{tiny_toyworld}.building-{dead.pid}"
    live = f"{tiny_toyworld}.building-{os.getppid()}"
    os.makedirs(stale)
    os.makedirs(live)
    try:
        tw.ensure_toyworld(tiny_toyworld, size="tiny", progress=False)
        assert not os.path.exists(stale) and os.path.exists(live)
    finally:
        shutil.rmtree(live, ignore_errors=True)


def test_a_folder_that_is_not_a_toy_world_says_why_and_names_the_flags(tiny_toyworld, tmp_path):
    path = tmp_path / "world"
    shutil.copytree(tiny_toyworld, path)
    (path / "manifest.json").write_text("{not json")
    (path / "stray.txt").write_text("mine")
    with pytest.raises(ValueError) as err:
        tw.ensure_toyworld(str(path), size="tiny", progress=False)
    assert "holds stray.txt besides a toy world, and manifest.json is missing or unreadable" \
        in str(err.value)
    assert "--toy_dir to train.py, --out to python -m worlds.toyworld" in str(err.value)
