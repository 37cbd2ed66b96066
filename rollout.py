"""Rollout: sample responses, then turn K scores into per-token rewards, values and GAE
advantages.

Implements the paper's App. B.2 (Eqs. 10-14) for K objectives at once:
  1. sample y ~ pi_theta(. | x) for a batch of prompts (temperature, top_p, repetition penalty);
  2. response mask: every response token up to and including the first eos;
  3. log pi_theta and log pi_ref of each response token, and the critic's K values;
  4. per-token reward of objective i (Eq. 14, with the KL sign of docs/decisions.md):
        r_i,t = -beta (log pi_theta(y_t) - log pi_ref(y_t)) + clip(score_i) * [t = last token]
  5. GAE per objective (gamma, lambda_GAE), returns = advantages + values;
  6. (ablation only, --whiten_advantages) whitening, done later by gapo.py: advantages stay raw.

Shapes: B prompts, P prompt tokens (left padded), R response tokens (right padded), T = P + R,
V vocab, K objectives. Position t of a response token y_t sits at sequence index P + t; the logits
and values that predict / evaluate it come from index P + t - 1.

Left out on purpose: vLLM or other generation servers (weights would have to be synced to them
every update), and multi-turn rollouts.
"""
from dataclasses import dataclass

import torch

from formats.models import position_ids_from_mask


@dataclass
class Rollout:
    """Everything one PPO iteration needs about one batch of sampled responses."""
    prompts: list  # B raw prompt strings (as the scorers see them)
    responses: list  # B decoded response strings (eos and padding removed)
    input_ids: torch.Tensor  # (B, T) left-padded prompt, then response, right-padded
    attention_mask: torch.Tensor  # (B, T) 1 on real prompt tokens and on response tokens up to eos
    # (B, R) float, 1 on response tokens up to and including the first eos
    response_mask: torch.Tensor
    logprobs: torch.Tensor  # (B, R) log pi_old(y_t), the policy that sampled
    ref_logprobs: torch.Tensor  # (B, R) log pi_ref(y_t)
    values: torch.Tensor  # (B, R, K) critic values V_i(s_t) before each response token
    scores: torch.Tensor  # (B, K) objective scores (helpful = reward, harmless = -cost), unclipped
    rewards: torch.Tensor  # (B, R, K) KL-shaped per-token rewards
    # Step 4, set by the loop once the values are final (train.py: after the critic's first-rollout
    # start): None until then.
    advantages: torch.Tensor | None  # (B, R, K) raw GAE advantages (not whitened)
    returns: torch.Tensor | None  # (B, R, K) advantages + values, the critic's targets

    @property
    def prompt_length(self):
        return self.input_ids.shape[1] - self.response_mask.shape[1]


def tokenize_prompts(tokenizer, texts, max_prompt_length, padding=True):
    """Left-padded prompt ids (B, P). Adds the tokenizer's special tokens unless the text already
    starts with bos (chat templates often include it). Prompts longer than max_prompt_length keep
    their end, where the question and the assistant tag are. padding="max_length": P is always
    max_prompt_length."""
    bos = tokenizer.bos_token
    add_special = not (bos and all(t.startswith(bos) for t in texts))
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=padding, truncation=True,
                      max_length=max_prompt_length, add_special_tokens=add_special)
    return batch["input_ids"], batch["attention_mask"]


def response_mask_from_ids(response_ids, eos_token_id):
    """(B, R) float mask: 1 up to and including the first eos, 0 after (the padding generate adds
    after eos, even when pad == eos). A response that never emits eos is kept whole (truncated)."""
    is_eos = response_ids == eos_token_id  # (B, R)
    eos_seen_before = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # strictly before position t
    return (~eos_seen_before).float()


@torch.no_grad()
def generate(policy, tokenizer, prompt_texts, max_prompt_length, max_new_tokens, temperature=1.0,
             top_p=1.0, repetition_penalty=1.0, engine="hf"):
    """Sample one response per prompt. Returns input_ids (B, T), attention_mask (B, T),
    response_mask (B, R), P. Uses the global torch RNG (seeded by train.py).

    engine "hf": Hugging Face generate with its dynamic KV cache. "static": a static KV cache of
    one shape for every batch (prompts padded to max_prompt_length), which transformers compiles
    with torch.compile for the decoding steps on a GPU; the columns that are padding in every row
    are cut afterwards, so the output is laid out exactly as "hf" lays it out, and the tokens are
    sampled from the same distribution (the log-probs PPO uses come from the policy's own forward
    pass either way)."""
    static = engine == "static"
    prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompt_texts, max_prompt_length,
                                               "max_length" if static else True)
    device = next(policy.parameters()).device
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    was_training = policy.training
    policy.eval()
    output = policy.generate(
        input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True, temperature=temperature,
        top_p=top_p, top_k=0, repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, use_cache=True,
        cache_implementation="static" if static else None)
    policy.train(was_training)
    if static:  # drop the left columns that are padding in every row: P = the longest prompt
        cut = int((prompt_mask.sum(0) == 0).sum())
        output, prompt_ids, prompt_mask = output[:, cut:], prompt_ids[:, cut:], prompt_mask[:, cut:]
    P = prompt_ids.shape[1]
    response_ids = output[:, P:]  # (B, R)
    if response_ids.shape[1] == 0:
        raise RuntimeError("generation returned no tokens; check max_new_tokens and the eos token")
    response_mask = response_mask_from_ids(response_ids, tokenizer.eos_token_id)
    attention_mask = torch.cat([prompt_mask, response_mask.long()], dim=1)  # (B, T)
    # Tokens after eos become pad so that no later forward ever reads them.
    input_ids = torch.where(attention_mask.bool(), output,
                            torch.full_like(output, tokenizer.pad_token_id))
    assert (input_ids.shape == attention_mask.shape
            and response_mask.shape == (len(prompt_texts), input_ids.shape[1] - P))
    return input_ids, attention_mask, response_mask, P


def decode_responses(tokenizer, input_ids, response_mask):
    """Response strings without eos and padding: what the scorers and the toy judge read."""
    P = input_ids.shape[1] - response_mask.shape[1]
    texts = []
    for ids, mask in zip(input_ids[:, P:], response_mask):
        ids = ids[mask.bool()].tolist()
        if ids and ids[-1] == tokenizer.eos_token_id:
            ids = ids[:-1]
        texts.append(tokenizer.decode(ids, skip_special_tokens=True,
                                      clean_up_tokenization_spaces=False))
    return texts


def response_logprobs(model, input_ids, attention_mask, R):
    """log pi(y_t | x, y_<t) for the last R tokens: (B, R) float32. Differentiable when grads are
    on.

    Positions come from the attention mask so left padding does not shift them (HF computes them
    the same way inside generate). Only the R logit rows that predict response tokens are
    normalised, which keeps the (B, R, V) float32 tensor as small as it can be; the LM head itself
    only runs on the last R + 1 positions (`logits_to_keep`), not on the prompt's."""
    position_ids = position_ids_from_mask(attention_mask)
    # (B, R + 1, V): positions T - R - 1 .. T - 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False, logits_to_keep=R + 1).logits
    logits = logits[:, :-1].float()  # (B, R, V): row P + t - 1 predicts token P + t
    targets = input_ids[:, -R:]  # (B, R)
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert logprobs.shape == targets.shape
    return logprobs


def response_values(critic, input_ids, attention_mask, R):
    """V_i(s_t) for each response token: (B, R, K), read at the index before the token (as
    logits)."""
    values = critic(input_ids=input_ids, attention_mask=attention_mask)  # (B, T, K)
    return values[:, -R - 1:-1].float()


def kl_shaped_rewards(scores, logprobs, ref_logprobs, response_mask, kl_coef, clip_score):
    """Eq. 14 per objective: r_i,t = clip(-beta (log pi - log pi_ref) + score_i [t = last token]).

    Decision (docs/decisions.md, "KL sign"): the KL penalty enters EVERY objective with the same,
    negative sign; the paper's flipped sign on the harmlessness channel is a typo that would reward
    drifting away from the reference. The clip to +-clip_score applies to every shaped per-token
    reward, KL term included, as Safe RLHF clips them (not to the score alone).
    scores (B, K), logprobs / ref_logprobs / response_mask (B, R) -> (B, R, K).
    """
    B, K = scores.shape
    assert logprobs.shape == ref_logprobs.shape == response_mask.shape and logprobs.shape[0] == B
    kl_penalty = -kl_coef * (logprobs - ref_logprobs) * response_mask  # (B, R)
    rewards = kl_penalty.unsqueeze(-1).repeat(1, 1, K)  # (B, R, K)
    last = (response_mask.sum(dim=1).long() - 1).clamp(min=0)  # (B,) index of the final token
    rewards[torch.arange(B), last] += scores.to(rewards.dtype)
    return rewards.clamp(-clip_score, clip_score)


def gae(rewards, values, response_mask, gamma, lam):
    """Generalised advantage estimation per objective (gamma = 1, lambda = 0.95 by default,
    docs/decisions.md, "GAE"). rewards / values (B, R, K), mask (B, R) -> advantages, returns
    (B, R, K).

    delta_t = r_t + gamma V_{t+1} - V_t with V = 0 after the last response token;
    A_t = delta_t + gamma lambda A_{t+1}. Masked positions get advantage 0."""
    mask = response_mask.unsqueeze(-1)  # (B, R, 1)
    values = values * mask
    rewards = rewards * mask
    R = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])  # (B, K)
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(R)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    advantages = advantages * mask
    return advantages, advantages + values


def whiten(x, mask, eps=1e-8):
    """Zero mean, unit variance over the masked tokens, per last-dim channel.
    x (B, R, M), mask (B, R)."""
    m = mask.unsqueeze(-1)
    count = m.sum()
    mean = (x * m).sum(dim=(0, 1)) / count  # (M,)
    var = (((x - mean) ** 2) * m).sum(dim=(0, 1)) / count
    return (x - mean) * torch.rsqrt(var + eps) * m
