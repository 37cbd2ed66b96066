"""worlds/paper.py: the offline preparation fetches exactly what --preset paper reads (the Hub and
datasets calls replaced by recorders: nothing downloads in tests), one weight format per model, and
a failed download is one sentence."""
import sys
import types

import pytest

import train
from worlds import paper


@pytest.fixture
def recorded(monkeypatch):
    calls = {"snapshot": [], "data": []}
    files = {paper.POLICY: ["config.json", "model-00001.safetensors", "pytorch_model-00001.bin"],
             paper.REWARD: ["config.json", "pytorch_model-00001.bin", "tf_model.h5"],
             paper.COST: ["config.json", "pytorch_model-00001.bin"]}
    hub = types.SimpleNamespace(
        HfApi=lambda: types.SimpleNamespace(list_repo_files=lambda repo: files[repo]),
        snapshot_download=lambda repo, **kw: calls["snapshot"].append((repo, kw["ignore_patterns"])))
    data = types.SimpleNamespace(
        load_dataset=lambda repo, **kw: calls["data"].append((repo, kw["split"])))
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    monkeypatch.setitem(sys.modules, "datasets", data)
    return calls


def test_it_fetches_what_the_paper_preset_reads(recorded, capsys):
    paper.main([])
    preset = train.PRESETS["paper"]
    models = [repo for repo, _ in recorded["snapshot"]]
    assert models == [preset["policy"], preset["reward_model"], preset["cost_model"]] == [
        "HuggingFaceH4/mistral-7b-sft-beta", "PKU-Alignment/beaver-7b-v1.0-reward",
        "PKU-Alignment/beaver-7b-v1.0-cost"]  # the paper's Sec. 4.1 models
    assert (preset["prompts"], "train") in recorded["data"]
    assert (preset["prompts"], "test") in recorded["data"] and ("Anthropic/hh-rlhf", "test") in \
        recorded["data"]
    skips = dict(recorded["snapshot"])
    assert "*.bin" in skips[paper.POLICY]  # safetensors there: the .bin copy is not fetched twice
    assert "*.bin" not in skips[paper.REWARD] and "*.h5" in skips[paper.REWARD]
    assert "HF_HUB_OFFLINE=1" in capsys.readouterr().out


def test_a_dry_run_fetches_nothing(recorded):
    paper.main(["--dry_run"])
    assert recorded == {"snapshot": [], "data": []}


def test_a_failed_download_is_one_sentence(recorded, monkeypatch):
    def offline(repo, **kw):
        raise ConnectionError("Name or service not known")
    monkeypatch.setattr(sys.modules["huggingface_hub"], "snapshot_download", offline)
    with pytest.raises(SystemExit, match="the download stopped .ConnectionError: Name or service "
                                         "not known.; check the connection"):
        paper.main([])
