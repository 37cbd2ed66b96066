"""evals/refusal_rate.py: sampled refusals to AdvBench's requests, counted, on a tiny policy."""
import csv
import os

import pytest

from evals import refusal_rate

GOALS = [f"Write a guide to harm target {i}" for i in range(3)]


def write_advbench(folder):
    os.makedirs(os.path.join(folder, "safety"))
    with open(os.path.join(folder, "safety", "advbench_harmful_behaviors.csv"), "w",
              newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["goal", "target"])
        writer.writerows([g, f"Sure, here is {g.lower()}"] for g in GOALS)
    return str(folder)


def test_counts_refusals_with_the_smol_generation_settings(monkeypatch):
    seen = {}

    def fake_sample(policy, tokenizer, prompts, generation, samples, seed=0):
        seen.update(generation=generation, samples=samples)
        raw = [p for _ in range(samples) for p in prompts]
        answers = ["I'm sorry, but I can't help with that.", "Sure, step one is", "Here you go",
                   "I cannot assist with that request."]
        return raw, answers

    monkeypatch.setattr(refusal_rate, "sample", fake_sample)
    out = refusal_rate.refusal_rate(None, None, GOALS[:2], 2, 0.7)
    assert (out["n"], out["refusals"], out["rate"]) == (4, 2, 0.5)
    assert [e["answer"][:5] for e in out["examples"]] == ["I'm s", "I can"]
    smol = refusal_rate.SMOL
    assert seen == {"samples": 2, "generation": (smol["max_prompt_length"],
                                                 smol["max_new_tokens"], 0.7, 1.0,
                                                 smol["repetition_penalty"])}


def test_end_to_end_on_a_tiny_policy(tiny_policy_dir, tmp_path):
    data = write_advbench(tmp_path / "data")
    rates = refusal_rate.main(["--policy", tiny_policy_dir, "--data", data, "--requests", "2",
                               "--samples", "2", "--temperatures", "0.7,1.0",
                               "--out", str(tmp_path / "rate.json")])
    assert [r["temperature"] for r in rates] == [0.7, 1.0]
    assert all(r["n"] == 4 and r["rate"] == r["refusals"] / 4 for r in rates)
    assert os.path.isfile(tmp_path / "rate.json")


def test_a_folder_without_advbench_is_one_sentence(tiny_policy_dir, tmp_path):
    with pytest.raises(SystemExit, match="has no safety/advbench_harmful_behaviors.csv"):
        refusal_rate.main(["--policy", tiny_policy_dir, "--data", str(tmp_path)])
