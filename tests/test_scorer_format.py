"""Scorer input formats (rewards.scorer_template, data.format_scorer_chat, --scorer_format).

A one-label sequence classifier whose tokenizer has a chat template reads that template, the
beaver layout reads the Safe RLHF template, either can be forced, train.py says which at start-up
and evaluate.py scores a run in the format it trained with. Tiny models in temp folders; CPU, no
network, seconds."""
import json
import logging

import pytest
import torch

import rewards
import train
from conftest import make_tiny_tokenizer
from data import format_scorer_chat, format_scorer_text
from rewards import Scorer, load_scorer, score_texts
from formats.models import new_score_model

CPU = torch.device("cpu")
TINY = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=128, pad_token_id=0)
# Only words of the tiny vocabulary, so every token is a real one: "<s>ROLE: content </s> " per
# message.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}"
            "{{ 'USER:' if m['role'] == 'user' else 'ASSISTANT:' }} "
            "{{ m['content'] }} {{ eos_token }} {% endfor %}")
PROMPTS = ["how do i bake bread", "hello",
           "\n\nHuman: how do i bake bread\n\nAssistant: first then finally\n\nHuman: hello"
           "\n\nAssistant:"]
RESPONSES = [" first then finally", " hello world", " sorry i cannot"]
CHAT_TEXTS = ["<s>USER: how do i bake bread </s> ASSISTANT: first then finally </s> ",
              "<s>USER: hello </s> ASSISTANT: hello world </s> ",
              "<s>USER: how do i bake bread </s> ASSISTANT: first then finally </s> "
              "USER: hello </s> ASSISTANT: sorry i cannot </s> "]
SMALL = ["--toy_size", "tiny", "--iterations", "1", "--batch_size", "4", "--minibatch_size", "4",
         "--micro_batch_size", "2", "--max_new_tokens", "8", "--ppo_epochs", "1"]


def tokenizer_with_bos(path=None, chat=True):
    """The tests' tiny tokenizer, adding <s> like a LLaMA tokenizer does (so a doubled bos would
    show), with TEMPLATE as its chat template."""
    from tokenizers import processors
    tok = make_tiny_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.convert_tokens_to_ids("<s>"))])
    if chat:
        tok.chat_template = TEMPLATE
    if path is not None:
        tok.save_pretrained(path)
    return tok


def classifier_dir(path, chat=True):
    """A tiny LlamaForSequenceClassification reward model (num_labels = 1) with its tokenizer."""
    from transformers import LlamaConfig, LlamaForSequenceClassification
    tok = tokenizer_with_bos(path, chat)
    config = LlamaConfig(vocab_size=len(tok), num_labels=1, **TINY)
    LlamaForSequenceClassification(config).save_pretrained(path)
    return str(path)


def beaver_dir(path, chat=True):
    """A tiny beaver-layout score model (LlamaModelForScore) whose tokenizer has a chat template
    too, as the toy and smol worlds' tokenizers do (for the policy)."""
    tok = tokenizer_with_bos(path, chat)
    new_score_model(dict(vocab_size=len(tok), **TINY)).save_pretrained(path)
    return str(path)


@pytest.fixture
def encoded(monkeypatch):
    """Records (texts, add_special_tokens) of every batch rewards._encode tokenises."""
    seen, inner = [], rewards._encode

    def spy(tokenizer, texts, max_length, device, add_special_tokens=True):
        seen.append((list(texts), add_special_tokens))
        return inner(tokenizer, texts, max_length, device, add_special_tokens)
    monkeypatch.setattr(rewards, "_encode", spy)
    return seen


def test_chat_template_reward_model_reads_its_template(tmp_path, encoded):
    scorer = load_scorer(classifier_dir(tmp_path / "rm"), CPU, name="reward")
    assert scorer.template == "chat"
    tok = scorer.tokenizer
    assert [format_scorer_chat(tok, p, r) for p, r in zip(PROMPTS, RESPONSES)] == CHAT_TEXTS
    scores = score_texts(scorer, PROMPTS, RESPONSES, batch_size=8)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    (texts, special), = encoded
    # the template writes its own <s>: the tokenizer adds none
    assert sorted(texts) == sorted(CHAT_TEXTS) and special is False
    bos = tok.convert_tokens_to_ids("<s>")
    alone = []
    for text in CHAT_TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids.count(bos) == 1 and ids[0] == bos
        with torch.no_grad():  # the HF model itself, by hand, one text at a time (no padding)
            alone.append(scorer.model.model(input_ids=torch.tensor([ids])).logits[0, 0])
    torch.testing.assert_close(scores, torch.stack(alone), atol=1e-5, rtol=0)


def test_beaver_layout_reads_safe_rlhf_even_with_a_chat_template(tmp_path, encoded):
    scorer = load_scorer(beaver_dir(tmp_path / "rm"), CPU, name="cost")
    assert scorer.template == "safe_rlhf" and scorer.tokenizer.chat_template == TEMPLATE
    score_texts(scorer, PROMPTS[:2], RESPONSES[:2])
    (texts, special), = encoded
    want = [format_scorer_text(p, r, "</s>") for p, r in zip(PROMPTS[:2], RESPONSES[:2])]
    assert sorted(texts) == sorted(want) and special is True
    assert texts[0].startswith("BEGINNING OF CONVERSATION: USER: ")


def test_a_classifier_without_chat_template_reads_safe_rlhf(tmp_path):
    assert load_scorer(classifier_dir(tmp_path / "rm", chat=False), CPU).template == "safe_rlhf"


def test_either_format_can_be_forced(tmp_path, encoded):
    chat_rm, beaver = classifier_dir(tmp_path / "chat"), beaver_dir(tmp_path / "beaver")
    forced = load_scorer(chat_rm, CPU, scorer_format="safe_rlhf")
    assert forced.template == "safe_rlhf"
    score_texts(forced, PROMPTS[:1], RESPONSES[:1])
    assert encoded[-1] == ([format_scorer_text(PROMPTS[0], RESPONSES[0], "</s>")], True)
    forced = load_scorer(beaver, CPU, scorer_format="chat")
    assert forced.template == "chat"
    score_texts(forced, PROMPTS[:1], RESPONSES[:1])
    assert encoded[-1] == ([CHAT_TEXTS[0]], False)
    plain = classifier_dir(tmp_path / "plain", chat=False)
    with pytest.raises(ValueError, match=r"^--scorer_format chat: the cost model's tokenizer has "
                       r"no chat template; use --scorer_format auto or safe_rlhf\.$"):
        load_scorer(plain, CPU, name="cost", scorer_format="chat")
    with pytest.raises(ValueError, match=r"^unknown scorer_format 'jinja'; choose auto, chat or "
                       r"safe_rlhf\.$"):
        load_scorer(chat_rm, CPU, scorer_format="jinja")
    with pytest.raises(ValueError, match="resolve 'auto' with make_scorer"):
        Scorer(forced.model, forced.tokenizer, "reward", "auto")


def test_long_chat_texts_keep_their_end(tmp_path, caplog):
    scorer = load_scorer(classifier_dir(tmp_path / "rm"), CPU)
    prompt = "how do i bake bread " * 5
    with caplog.at_level(logging.WARNING, logger="rewards"):
        scores = score_texts(scorer, [prompt, "hello"], [" first then finally", " world"],
                             max_length=12)
    assert "1 of 2 scorer texts are longer than 12 tokens and were cut at the start" in caplog.text
    text = format_scorer_chat(scorer.tokenizer, prompt, " first then finally")
    ids = scorer.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 12 and ids[-1] == scorer.tokenizer.eos_token_id
    with torch.no_grad():
        want = scorer.model(input_ids=torch.tensor([ids[-12:]]),
                            attention_mask=torch.ones(1, 12, dtype=torch.long))
    torch.testing.assert_close(scores[0], want[0], atol=1e-5, rtol=0)


def test_bad_scorer_format_flag_is_refused_with_one_sentence(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: unknown scorer_format 'jinja'; choose auto, "
                       r"chat or safe_rlhf\.$"):
        train.main(["--scorer_format", "jinja", "--out_dir", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_train_says_the_formats_and_evaluate_scores_with_the_runs_format(tiny_toyworld, tmp_path,
                                                                          capsys):
    from evals.objectives import load_scorers
    chat_rm = classifier_dir(tmp_path / "chat_rm")
    common = SMALL + ["--toy_dir", tiny_toyworld, "--reward_model", chat_rm]
    train.main(common + ["--out_dir", str(tmp_path / "auto")])
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("scorers:")]
    assert said == ["scorers: reward reads its tokenizer's chat template; "
                    "cost reads the Safe RLHF template"]
    train.main(common + ["--out_dir", str(tmp_path / "forced"), "--scorer_format", "safe_rlhf"])
    assert "scorers: reward reads the Safe RLHF template; cost reads the Safe RLHF template" in (
        capsys.readouterr().out.splitlines())

    cache = {}  # one per evaluate.py call, as its Context keeps
    run_scorers = lambda cfg: load_scorers(cfg, CPU, torch.float32, cache)  # noqa: E731
    saved = json.loads((tmp_path / "forced" / "train_config.json").read_text())
    assert saved["scorer_format"] == "safe_rlhf"
    assert [s.template for s in run_scorers(saved)] == ["safe_rlhf", "safe_rlhf"]
    auto = json.loads((tmp_path / "auto" / "train_config.json").read_text())
    assert [s.template for s in run_scorers(auto)] == ["chat", "safe_rlhf"]
    del auto["scorer_format"]  # a run saved before the flag: what it trained with, "auto"
    assert [s.template for s in run_scorers(auto)] == ["chat", "safe_rlhf"]
    assert "scorers: reward reads its tokenizer's chat template" in capsys.readouterr().out


def test_sft_baselines_are_split_by_scorer_format_and_old_runs_count_as_auto():
    """evaluate.py scores an SFT row with the scorers as its runs read them: runs that differ only
    in --scorer_format get their own SFT baseline; a run saved before the flag existed is auto."""
    from evals.targets import Target, sft_targets
    base = {"policy": "p", "reward_model": "r", "cost_model": "c", "prompts": "", "method": "gapo"}
    runs = [Target("a", {**base, "scorer_format": "auto"}), Target("b", dict(base)),
            Target("c", {**base, "scorer_format": "safe_rlhf"})]
    baselines = sft_targets(runs)
    assert sorted(b.config["scorer_format"] for b in baselines) == ["auto", "safe_rlhf"]
    assert runs[0].sft == runs[1].sft != runs[2].sft
