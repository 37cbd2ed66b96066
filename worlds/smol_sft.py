"""The smol world's SFT step: SmolLM2-135M-Instruct fine-tuned once on ordinary instructions mixed
with refusals of harmful ones, so that the policy the RLHF methods start from sometimes refuses.

Why: PPO only reinforces what the policy samples. SmolLM2-135M-Instruct answers about 1% of
AdvBench's harmful requests with a refusal (evals/refusal_rate.py), so a cost model that rates
refusals best gives PPO-S almost nothing to reinforce, and it learns to hedge instead (the README's
smol reading). The paper's policies start from 7B SFT models tuned on broad instruction data,
which holds some refusals (Sec. 4.1), and safety-tuned-llamas (Bianchi et al. 2024) shows that a
few hundred refusals in an SFT mix make a model refuse. This is that step, scaled down:
supervised fine-tuning of every weight on
- refusals: safety-tuned-llamas' answers that decline a harmful instruction (declines()), from
  requests that the cost model neither trained nor was checked on;
- ordinary answers: AlpacaEval answers to benign instructions outside helpful_base (one model's
  answer each, drawn with the seed), so that the model keeps answering ordinary requests (it
  still refuses many safe ones: the README's numbers).
Every answer is cut to its opening whole sentences (the policy writes short answers).
The loss is the answer tokens' cross-entropy (prompt tokens masked), the chat template the one
the rollout uses (data.format_policy_prompt), the answer closed with the end-of-turn token.

Run: nothing to run; worlds/smol.py builds it as the part sft/ when the data folder has the
labelled files, and `python -m evals.refusal_rate --policy cache/smol/sft` measures it.
Left out on purpose: LoRA (135M parameters train in minutes on a CPU), packing, and any
evaluation request or XSTest answer in the mix.
"""
import json
import os
import random
import time

import torch

from worlds import safety_data
from worlds.smol_scorers import cost_split


def sft_examples(data, evaluation, labelled, seed):
    """(refusals, ordinary): lists of (prompt, answer) for the SFT mix. The requests of the cost
    model's refusals (trained on or held out) are skipped; so are the evaluation requests."""
    answers, _ = safety_data.cost_answers(data, evaluation, labelled.chars, seed)
    train, heldout = cost_split(answers, "refusals", labelled, seed)  # the cost model's refusals
    cost_requests = {a.request for a in train + heldout}
    refusals = [a for a in answers["refusals"]
                if a.request not in cost_requests and safety_data.declines(a.answer)]
    ordinary = answers["benign"]
    rng = random.Random(seed)
    rng.shuffle(refusals)
    rng.shuffle(ordinary)
    if len(refusals) < labelled.sft_refusals or len(ordinary) < labelled.sft_ordinary:
        raise ValueError(f"the data gives {len(refusals)} refusals and {len(ordinary)} ordinary "
                         f"answers for the SFT step, fewer than the recipe's "
                         f"{labelled.sft_refusals} and {labelled.sft_ordinary}; use a smaller "
                         f"recipe.")
    cut = lambda a: safety_data.sentences(a.answer, labelled.sft_chars)
    return ([(a.prompt, cut(a)) for a in refusals[:labelled.sft_refusals]],
            [(a.prompt, cut(a)) for a in ordinary[:labelled.sft_ordinary]])


def tokenize_example(tokenizer, prompt, answer, max_length):
    """(ids [T], labels [T]) of one example: the chat-formatted prompt, then the answer and the
    end-of-turn token; labels -100 on the prompt. A long prompt loses its start (as rollouts'
    prompts do), never the answer."""
    from data import format_policy_prompt
    prompt_ids = tokenizer(format_policy_prompt(tokenizer, prompt),
                           add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer.strip() + tokenizer.eos_token,
                           add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids[:max_length // 2]
    prompt_ids = prompt_ids[-(max_length - len(answer_ids)):]
    ids = torch.tensor(prompt_ids + answer_ids)
    labels = torch.tensor([-100] * len(prompt_ids) + answer_ids)
    assert ids.shape == labels.shape and len(ids) <= max_length, (ids.shape, max_length)
    return ids, labels


def sft_loss(policy, batch, pad_id):
    """Mean cross-entropy of the answer tokens of a batch of (ids [T_i], labels [T_i]), right
    padded to [B, T]."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (i, l) in enumerate(batch):
        ids[row, :len(i)], labels[row, :len(l)], mask[row, :len(i)] = i, l, 1
    logits = policy(input_ids=ids, attention_mask=mask).logits[:, :-1]  # [B, T-1, V]
    assert logits.shape[:2] == (len(batch), width - 1), logits.shape
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                             labels[:, 1:].reshape(-1), ignore_index=-100)


def train_sft(policy_dir, refusals, ordinary, labelled, out, seed=0, progress=True, about=None):
    """Fine-tune the policy in policy_dir on the mix, save it (model, tokenizer, report.json) in
    out; returns the report."""
    from tqdm import tqdm
    from formats.models import load_tokenizer
    from transformers import AutoModelForCausalLM
    t0 = time.time()
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(policy_dir, padding_side="right")
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    policy.train()
    examples = [tokenize_example(tokenizer, p, a, labelled.sft_max_length)
                for p, a in refusals + ordinary]
    rng = random.Random(seed)  # a new order each epoch
    order = [i for _ in range(labelled.sft_epochs) for i in rng.sample(range(len(examples)),
                                                                          len(examples))]
    steps = range(0, len(order), labelled.sft_batch_size)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=labelled.sft_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / len(steps))
    losses = []
    for start in tqdm(steps, desc="smol SFT", disable=not progress):
        batch = [examples[i] for i in order[start:start + labelled.sft_batch_size]]
        loss = sft_loss(policy, batch, tokenizer.pad_token_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    quarter = max(1, len(losses) // 4)
    report = {**(about or {}), "refusals": len(refusals), "ordinary": len(ordinary),
              "steps": len(losses), "loss_first_quarter": sum(losses[:quarter]) / quarter,
              "loss_last_quarter": sum(losses[-quarter:]) / quarter,
              "seconds": round(time.time() - t0, 1)}
    policy.save_pretrained(out)
    tokenizer.save_pretrained(out)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report
