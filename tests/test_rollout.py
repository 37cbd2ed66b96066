"""rollout.py: GAE against a plain double loop, KL shaping sign, masks, log-probs, generation."""
import torch

from rollout import (decode_responses, gae, generate, kl_shaped_rewards, response_logprobs,
                     response_mask_from_ids, whiten)


def reference_gae(rewards, values, lengths, gamma, lam):
    """Textbook GAE, one sequence and one objective at a time, with plain Python loops."""
    B, R, K = rewards.shape
    advantages = torch.zeros(B, R, K, dtype=torch.float64)
    for b in range(B):
        for k in range(K):
            n = lengths[b]
            for t in range(n):
                total = 0.0
                for l in range(t, n):
                    next_value = values[b, l + 1, k].item() if l + 1 < n else 0.0
                    delta = rewards[b, l, k].item() + gamma * next_value - values[b, l, k].item()
                    total += (gamma * lam) ** (l - t) * delta
                advantages[b, t, k] = total
    return advantages


def test_gae_matches_double_loop():
    B, R, K = 4, 7, 3
    rewards, values = torch.randn(B, R, K, dtype=torch.float64), torch.randn(B, R, K, dtype=torch.float64)
    lengths = [7, 3, 1, 5]
    mask = torch.zeros(B, R, dtype=torch.float64)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    for gamma, lam in [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)]:
        advantages, returns = gae(rewards, values, mask, gamma, lam)
        expected = reference_gae(rewards, values, lengths, gamma, lam)
        assert torch.allclose(advantages, expected, atol=1e-10)
        assert torch.allclose(returns, (expected + values) * mask.unsqueeze(-1), atol=1e-10)
        assert (advantages[mask == 0] == 0).all()


def test_kl_shaping_sign_and_score_position():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref_logprobs = torch.tensor([[-2.0, -2.0, -2.0], [-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    scores = torch.tensor([[3.0, -100.0], [0.5, 2.0]])
    rewards = kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=0.1, clip_score=50.0)
    assert rewards.shape == (2, 3, 2)
    # A token the policy likes more than the reference is PENALISED in every objective (same sign).
    assert torch.allclose(rewards[0, 0], torch.tensor([-0.1, -0.1]))
    assert torch.allclose(rewards[1, 0], torch.tensor([-0.05, -0.05]))
    # The score sits on the last real response token only; the clip applies to the shaped
    # per-token reward (score + KL term), as Safe RLHF clips it: -100 + 0.1 -> -50, not -49.9.
    assert torch.allclose(rewards[0, 2], torch.tensor([3.0 + 0.1, -50.0]))
    assert torch.allclose(rewards[1, 1], torch.tensor([0.5, 2.0]))
    assert (rewards[1, 2] == 0).all()
    # A KL term alone beyond the clip is clipped too (a policy far from the reference).
    far = kl_shaped_rewards(scores, logprobs + 1000.0, ref_logprobs, mask, kl_coef=0.1,
                            clip_score=50.0)
    assert torch.equal(far[0, 0], torch.tensor([-50.0, -50.0]))
    assert far.abs().max() == 50.0


def test_response_mask_ends_at_first_eos_even_when_pad_is_eos():
    eos = 2
    ids = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 7, 2, 0], [5, 6, 7, 8, 9]])
    mask = response_mask_from_ids(ids, eos)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_whiten_per_channel_over_masked_tokens():
    x = torch.randn(3, 5, 2) * torch.tensor([1.0, 10.0]) + 4
    mask = torch.ones(3, 5)
    mask[0, 3:] = 0
    w = whiten(x, mask)
    values = w[mask.bool()]  # (N, 2)
    assert torch.allclose(values.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(values.var(0, unbiased=False), torch.ones(2), atol=1e-4)
    assert (w[0, 3:] == 0).all()


def test_left_padding_does_not_change_response_logprobs(tiny_policy_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir).eval()
    seq = torch.tensor([[7, 8, 9, 10, 11, 12]])
    alone = response_logprobs(model, seq, torch.ones_like(seq), R=3)
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), seq], dim=1)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones_like(seq)], dim=1)
    assert torch.allclose(alone, response_logprobs(model, padded, mask, R=3), atol=1e-5)


def test_generate_shapes_masks_and_decoding(tiny_policy_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    tok = AutoTokenizer.from_pretrained(tiny_policy_dir)
    torch.manual_seed(0)
    ids, attn, rmask, P = generate(model, tok, ["how do i bake bread", "hello"], 16, 6)
    B, T = ids.shape
    R = rmask.shape[1]
    assert B == 2 and T == P + R and R <= 6
    assert (attn[:, P:] == rmask.long()).all()
    assert (ids[attn == 0] == tok.pad_token_id).all()  # nothing after eos leaks into later forwards
    texts = decode_responses(tok, ids, rmask)
    assert len(texts) == 2 and all("</s>" not in t for t in texts)
    torch.manual_seed(0)
    again = generate(model, tok, ["how do i bake bread", "hello"], 16, 6)[0]
    assert torch.equal(ids, again)  # same seed, same samples


def test_static_cache_engine_lays_out_and_samples_exactly_as_the_dynamic_one(tiny_policy_dir):
    """engine="static" pads every batch to max_prompt_length (one cache shape), then cuts the
    all-padding columns: the same ids, masks and P as "hf", and the same samples for one seed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    tok = AutoTokenizer.from_pretrained(tiny_policy_dir)
    prompts = ["how do i bake bread", "hello", "a b c d e f g h"]
    out = {}
    for engine in ("hf", "static"):
        torch.manual_seed(3)
        out[engine] = generate(model, tok, prompts, 24, 8, temperature=0.7,
                               repetition_penalty=1.05, engine=engine)  # the paper's sampling
    (ids, attn, rmask, P), (s_ids, s_attn, s_rmask, s_P) = out["hf"], out["static"]
    assert P == s_P < 24 and attn[:, 0].any()  # cut back to the longest prompt, not 24
    for a, b in ((ids, s_ids), (attn, s_attn), (rmask, s_rmask)):
        assert torch.equal(a, b)


def test_lm_head_runs_on_response_positions_only(tiny_policy_dir):
    from model import load_policy
    policy = load_policy(tiny_policy_dir, "cpu").eval()
    rows = []
    policy.lm_head.register_forward_hook(lambda m, inp, out: rows.append(inp[0].shape[1]))
    ids = torch.randint(3, 20, (2, 10))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        got = response_logprobs(policy, ids, mask, 4)
        full = torch.log_softmax(policy(input_ids=ids).logits[:, -5:-1].float(), -1)
    assert rows[0] == 5  # R + 1 positions, not T
    torch.testing.assert_close(got, full.gather(-1, ids[:, -4:, None])[..., 0], atol=1e-6, rtol=0)


def test_rollout_generates_the_batch_in_one_call_and_scores_sorted_batches(tiny_toyworld, tmp_path,
                                                                             monkeypatch):
    import rewards
    import train
    calls, lengths = [], []
    inner, encode = train.generate, rewards._encode
    monkeypatch.setattr(train, "generate", lambda *a, **k: calls.append(len(a[2])) or inner(*a, **k))
    monkeypatch.setattr(rewards, "_encode", lambda tok, texts, *a: lengths.append([len(t) for t in texts])
                        or encode(tok, texts, *a))
    train.main(["--toy_size", "tiny", "--toy_dir", tiny_toyworld, "--out_dir", str(tmp_path / "run"),
                "--iterations", "1", "--batch_size", "8", "--minibatch_size", "4", "--micro_batch_size", "2",
                "--max_new_tokens", "8", "--score_batch_size", "2", "--ppo_epochs", "1"])
    assert calls == [8]  # one generate call for the rollout batch, not 4 of micro_batch_size
    for batches in (lengths[:4], lengths[4:8]):  # reward then cost: batches in increasing length
        assert all(max(a) <= min(b) for a, b in zip(batches, batches[1:]))
