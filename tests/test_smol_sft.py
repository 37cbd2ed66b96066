"""worlds/smol_sft.py: the SFT mix (which refusals and answers, what is kept out), the masked
answer loss against a per-token reference, and a tiny model that learns its mix."""
import dataclasses
import gzip
import json
import os

import pytest
import torch

from test_smol_scorers import REFUSALS, write_labelled
from worlds import safety_data as sd
from worlds import smol
from worlds.smol_sft import sft_examples, sft_loss, tokenize_example, train_sft


def test_the_mix_keeps_out_the_cost_model_s_refusals_and_evaluation_requests(tmp_path):
    data = write_labelled(tmp_path)
    evaluation = smol.eval_prompts_in(data)
    labelled = dataclasses.replace(smol.LABELLED["tiny"], sft_refusals=1, sft_ordinary=7)
    refusals, ordinary = sft_examples(data, evaluation, labelled, seed=0)
    answers, _ = sd.cost_answers(data, evaluation, labelled.chars, 0)
    train, heldout = sd.split_by_request(answers["refusals"], lambda a: a.request,
                                         labelled.refusals, labelled.heldout_per_source, 0, "r")
    cost_prompts = {a.prompt for a in train + heldout}
    assert len(cost_prompts) == 5 and len(REFUSALS) == 6  # one refusal is left for the mix
    assert len(refusals) == 1 and refusals[0][0] not in cost_prompts
    assert refusals[0][1].startswith("I'm sorry")
    # ordinary answers: benign AlpacaEval instructions, never helpful_base (evaluation) ones
    assert len(ordinary) == 7 and all(p.startswith("Explain task") for p, _ in ordinary)
    assert len({p for p, _ in ordinary}) == 7
    with pytest.raises(ValueError, match="fewer than the recipe's 2 and 7"):
        sft_examples(data, evaluation, dataclasses.replace(labelled, sft_refusals=2), seed=0)


def test_only_refusals_that_decline_enter_the_mix(tmp_path):
    """safety-tuned-llamas also corrects some requests instead of declining: those stay out."""
    data = write_labelled(tmp_path)
    rows = [dict(r, output="Animals need care: here is how to look after one.") for r in REFUSALS]
    with gzip.open(os.path.join(data, sd.FILES["refusals"]), "wt") as f:
        f.write(json.dumps(rows))
    with pytest.raises(ValueError, match="gives 0 refusals and 10 ordinary answers"):
        sft_examples(data, smol.eval_prompts_in(data), smol.LABELLED["tiny"], seed=0)


def test_tokenized_example_masks_the_prompt_and_keeps_the_answer(tiny_policy_dir):
    from data import format_policy_prompt
    from formats.models import load_tokenizer
    tok = load_tokenizer(tiny_policy_dir)
    prompt, answer = "how do i steal a car", "sorry i cannot help you"
    ids, labels = tokenize_example(tok, prompt, answer, max_length=64)
    n_prompt = len(tok(format_policy_prompt(tok, prompt), add_special_tokens=False)["input_ids"])
    assert ids.shape == labels.shape and (labels[:n_prompt] == -100).all()
    assert torch.equal(labels[n_prompt:], ids[n_prompt:])
    assert tok.decode(ids[n_prompt:]) == answer + " " + tok.eos_token  # closed by eos
    # too long: the prompt loses its start, the answer stays whole
    short_ids, short_labels = tokenize_example(tok, "please " * 40 + prompt, answer, 16)
    assert len(short_ids) == 16 and torch.equal(short_ids[-7:], ids[-7:])
    assert (short_labels != -100).sum() == 6


def test_sft_loss_is_the_mean_answer_token_cross_entropy(tiny_policy_dir):
    """Against a per-example, per-token reference (no padding, no batching)."""
    from formats.models import load_tokenizer
    from transformers import AutoModelForCausalLM
    tok = load_tokenizer(tiny_policy_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    batch = [tokenize_example(tok, p, a, 64) for p, a in (
        ("how do i steal a car", "sorry i cannot"), ("hello", "first bake bread then help me"))]
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in batch:
            logp = torch.log_softmax(policy(ids[None]).logits[0].float(), -1)  # [T, V]
            for t in range(1, len(ids)):
                if labels[t] != -100:
                    total, count = total - logp[t - 1, ids[t]].item(), count + 1
        loss = sft_loss(policy, batch, tok.pad_token_id).item()
    assert count == 3 + 6 + 2  # answer words and one eos each
    assert loss == pytest.approx(total / count, rel=1e-5)


def test_a_tiny_policy_learns_to_refuse_what_its_mix_refuses(tiny_policy_dir, tmp_path):
    from data import format_policy_prompt
    from formats.models import load_tokenizer
    from transformers import AutoModelForCausalLM
    refusals = [("how do i steal a car", "sorry i cannot help you")]
    ordinary = [("how do i bake bread", "first bake bread then help me")]
    labelled = dataclasses.replace(smol.LABELLED["tiny"], sft_epochs=60, sft_batch_size=2,
                                   sft_lr=3e-3)
    report = train_sft(tiny_policy_dir, refusals, ordinary, labelled, str(tmp_path / "sft"),
                       progress=False, about={"note": "kept"})
    assert report["note"] == "kept" and (report["refusals"], report["ordinary"]) == (1, 1)
    assert report["steps"] == 60 and report["loss_last_quarter"] < report["loss_first_quarter"]
    tok = load_tokenizer(str(tmp_path / "sft"))
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "sft"))
    for prompt, answer in refusals + ordinary:
        ids = tok(format_policy_prompt(tok, prompt), return_tensors="pt",
                  add_special_tokens=False)["input_ids"]
        out = model.generate(ids, do_sample=False, max_new_tokens=8, pad_token_id=0)
        assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True) == answer
    with open(tmp_path / "sft" / "report.json") as f:
        assert json.load(f) == report
