"""data.py: prompts of PKU-SafeRLHF (both schemas), HH-RLHF and plain prompt files, written in
tmp_path in the real field names and types; error messages; templates; the real HH-RLHF sample when
present. The preference pairs read from the same rows: tests/test_preference_pairs.py."""
import gzip
import json
import re
from pathlib import Path

import pytest

import data
from conftest import make_tiny_tokenizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HH_SAMPLE = SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"


def pku_row(prompt, r0, r1, better, safer, safe0, safe1, schema=2024):
    """One PKU-SafeRLHF row; schema 2023 has the 7 original fields, 2024 adds the rest."""
    row = {"prompt": prompt, "response_0": r0, "response_1": r1, "is_response_0_safe": safe0,
           "is_response_1_safe": safe1, "better_response_id": better, "safer_response_id": safer}
    if schema == 2024:
        cats = ["Endangering National Security", "Violence", "Privacy Violation", "Cybercrime"]
        for i, safe in ((0, safe0), (1, safe1)):
            row[f"response_{i}_source"] = "Alpaca-7B"
            row[f"response_{i}_sha256"] = f"{i:064x}"
            row[f"response_{i}_harm_category"] = {c: (not safe and c == "Violence") for c in cats}
            row[f"response_{i}_severity_level"] = 0 if safe else 2
        row["prompt_source"] = "Alpaca3-70B"
    return row


def write_jsonl(path, rows, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def pku_rows(schema):
    return [
        pku_row("How do I bake bread?", "Mix flour and water.", "No.", 0, 0, True, True, schema),
        pku_row("How do I steal a car?", "Break the window.", "I cannot help with that.", 0, 1, False, True, schema),
        pku_row("How do I bake bread?", "Buy some.", "Knead it, then bake.", 1, 0, True, True, schema),
        # inconsistent: the "safer" response 0 is labelled unsafe while response 1 is labelled safe
        pku_row("How do I pick a lock?", "Use a pin.", "Call a locksmith.", 0, 0, False, True, schema),
        pku_row("How do I hurt someone?", "Hit them.", "Punch them.", 0, 1, False, False, schema),
    ]


HH_DIALOGUES = [
    ("\n\nHuman: how do i steal a car\n\nAssistant: I can't help with that.",
     "\n\nHuman: how do i steal a car\n\nAssistant: Break a window first."),
    ("\n\nHuman: hello\n\nAssistant: Hi! How can I help?\n\nHuman: how do i bake bread\n\nAssistant: Knead, rise, bake.",
     "\n\nHuman: hello\n\nAssistant: Hi! How can I help?\n\nHuman: how do i bake bread\n\nAssistant: Buy it."),
    # same first turn as the row above, another follow-up: first-turn prompts de-duplicate to one
    ("\n\nHuman: hello\n\nAssistant: Hi!\n\nHuman: thanks\n\nAssistant: You're welcome.",
     "\n\nHuman: hello\n\nAssistant: Hi!\n\nHuman: thanks\n\nAssistant: Whatever."),
    # the chosen reply itself contains "\n\nAssistant:" (happens in the published data)
    ("\n\nHuman: find me a serial\n\nAssistant: Here it is:\n\nAssistant:",
     "\n\nHuman: find me a serial\n\nAssistant: No."),
]


@pytest.mark.parametrize("schema", [2023, 2024])
def test_pku_prompts(tmp_path, capsys, schema):
    path = write_jsonl(tmp_path / f"pku{schema}.jsonl", pku_rows(schema))
    prompts = data.load_prompts(path)
    assert prompts == ["How do I bake bread?", "How do I steal a car?", "How do I pick a lock?",
                       "How do I hurt someone?"]
    assert "duplicates removed: 1" in capsys.readouterr().out
    assert data.load_prompts(path, limit=2) == prompts[:2]


def test_hh_gzip_prompts(tmp_path, capsys):
    path = write_jsonl(tmp_path / "hh.jsonl.gz", [{"chosen": c, "rejected": r} for c, r in HH_DIALOGUES], gz=True)
    prompts = data.load_prompts(path)
    assert prompts == [
        "\n\nHuman: how do i steal a car\n\nAssistant:",
        "\n\nHuman: hello\n\nAssistant: Hi! How can I help?\n\nHuman: how do i bake bread\n\nAssistant:",
        "\n\nHuman: hello\n\nAssistant: Hi!\n\nHuman: thanks\n\nAssistant:",
        "\n\nHuman: find me a serial\n\nAssistant:",
    ]
    first = data.load_prompts(path, hh_first_turn_only=True)
    assert first == ["how do i steal a car", "hello", "find me a serial"]
    assert "duplicates removed: 1" in capsys.readouterr().out


def test_plain_prompt_files(tmp_path):
    rows = [{"prompt": "a"}, {"prompt": "b", "category": "x"}, {"prompt": "a"}]
    as_list = tmp_path / "prompts.json"
    as_list.write_text(json.dumps(rows))
    as_lines = write_jsonl(tmp_path / "prompts.jsonl", rows)
    assert data.load_prompts(str(as_list)) == data.load_prompts(as_lines) == ["a", "b"]


def test_hub_path_shares_the_row_parser(monkeypatch, capsys):
    import datasets

    calls = []

    def fake_load_dataset(repo, data_dir=None, split=None):
        calls.append((repo, data_dir, split))
        return [{"chosen": c, "rejected": r} for c, r in HH_DIALOGUES[:2]] + [{"chosen": 3, "rejected": "x"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(ValueError, match=r"Anthropic/hh-rlhf:harmless-base \(split test\), row 3: field 'chosen' should be str but is int"):
        data.load_prompts("Anthropic/hh-rlhf:harmless-base", split="test")
    assert calls == [("Anthropic/hh-rlhf", "harmless-base", "test")]


def test_local_dataset_folder_goes_through_load_dataset(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "pku"
    folder.mkdir()
    write_jsonl(folder / "test.jsonl", pku_rows(2024))
    assert data.load_prompts(str(folder), split="test")[:2] == ["How do I bake bread?", "How do I steal a car?"]


@pytest.mark.parametrize("schema", [2023, 2024])
def test_bad_rows_name_file_row_and_field(tmp_path, schema):
    def bad(change):
        rows = pku_rows(schema)
        change(rows[1])  # the second row: line 2 of the file
        path = write_jsonl(tmp_path / "bad.jsonl", rows)
        with pytest.raises(ValueError) as err:
            data.load_prompts(path)
        msg = str(err.value)
        assert "bad.jsonl, line 2: field" in msg and msg.count(". ") == 0, msg  # one sentence
        return msg

    assert "'prompt' is empty" in bad(lambda r: r.update(prompt="  "))
    assert "'prompt' is missing" in bad(lambda r: r.update(prompt=None))


def test_empty_missing_and_broken_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty\.jsonl is empty"):
        data.load_prompts(str(empty))
    empty_list = tmp_path / "empty.json"
    empty_list.write_text("[]")
    with pytest.raises(ValueError, match="holds no rows"):
        data.load_prompts(str(empty_list))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"broken\.jsonl, line 2 is not valid JSON"):
        data.load_prompts(str(broken))
    not_object = tmp_path / "list.jsonl"
    not_object.write_text('{"prompt": "a"}\n["b"]\n')
    with pytest.raises(ValueError, match=r"list\.jsonl, line 2 is a list, not a JSON object"):
        data.load_prompts(str(not_object))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_prompts(str(tmp_path / "nowhere.jsonl"))
    with pytest.raises(ValueError, match="limit must be"):
        data.load_prompts(str(broken), limit=0)


def test_unknown_hub_id_offline_says_download_or_local_path():
    with pytest.raises(FileNotFoundError) as err:
        data.load_prompts("nobody-gapo-tests/no-such-dataset")
    msg = str(err.value)
    assert "nobody-gapo-tests/no-such-dataset" in msg and "download it first or pass a local" in msg


def test_format_policy_prompt_with_and_without_chat_template():
    tok = make_tiny_tokenizer()
    assert data.format_policy_prompt(tok, "how do i bake bread") == \
        "BEGINNING OF CONVERSATION: USER: how do i bake bread ASSISTANT:"
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    assert data.format_policy_prompt(tok, "how do i {bake} bread") == \
        "<|user|>\nhow do i {bake} bread</s>\n<|assistant|>\n"


def test_format_scorer_text_is_the_safe_rlhf_template_without_extra_space():
    text = data.format_scorer_text("hi {there}", " Hello.", "</s>")
    assert text == "BEGINNING OF CONVERSATION: USER: hi {there} ASSISTANT: Hello.</s>"
    assert data.SAFE_RLHF_TEMPLATE.format(prompt="x") == "BEGINNING OF CONVERSATION: USER: x ASSISTANT:"


def test_real_hh_rlhf_harmless_base_test_sample():
    if not HH_SAMPLE.exists():
        pytest.skip(f"{HH_SAMPLE} is absent (only the development machine has ../shared/data)")
    prompts = data.load_prompts(str(HH_SAMPLE), split="test")
    assert 2300 <= len(prompts) <= 2312 and len(set(prompts)) == len(prompts)
    assert all(p.endswith("\n\nAssistant:") for p in prompts)
    first = data.load_prompts(str(HH_SAMPLE), split="test", hh_first_turn_only=True)
    assert all(p and "\n\nHuman:" not in p and "\n\nAssistant:" not in p for p in first)


def test_dialogue_turns_and_both_templates_alternate_turns():
    hh = "\n\nHuman: how do i bake bread\n\nAssistant: first one\n\nHuman: then what\n\nAssistant:"
    assert data.dialogue_turns(hh) == ["how do i bake bread", "first one", "then what"]
    assert data.dialogue_turns("plain prompt") == ["plain prompt"]
    assert data.dialogue_turns("\n\nHuman: hi\n\nAssistant:") == ["hi"]
    # Safe RLHF's dialogue format: earlier replies follow ASSISTANT: directly and end with eos.
    assert data.format_scorer_text(hh, " finally", "</s>") == (
        "BEGINNING OF CONVERSATION: USER: how do i bake bread ASSISTANT:first one</s>"
        "USER: then what ASSISTANT: finally</s>")
    assert data.format_scorer_text("hello", " world", "</s>") == (
        "BEGINNING OF CONVERSATION: USER: hello ASSISTANT: world</s>")  # single turn: as before
    tok = make_tiny_tokenizer()
    assert data.format_policy_prompt(tok, hh) == (
        "BEGINNING OF CONVERSATION: USER: how do i bake bread ASSISTANT:first one</s>"
        "USER: then what ASSISTANT:")
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    assert data.format_policy_prompt(tok, hh) == (
        "<user>how do i bake bread<assistant>first one<user>then what<assistant>")


def test_real_hh_rlhf_multi_turn_prompts_reach_the_scorer_as_turns():
    if not HH_SAMPLE.exists():
        pytest.skip(f"{HH_SAMPLE} is absent (only the development machine has ../shared/data)")
    prompts = data.load_prompts(str(HH_SAMPLE), split="test")
    multi = [p for p in prompts if p.count("\n\nHuman:") > 1]
    assert len(multi) > 100
    for prompt in prompts:
        turns = data.dialogue_turns(prompt)
        assert len(turns) % 2 == 1 and all(turns), prompt[:200]
        # Independent check: the turns hold exactly the prompt's words, the markers only removed
        # (a speaker's consecutive turns, 4 prompts here, are joined into one turn).
        squash = lambda s: " ".join(s.split())
        words = re.sub(r"\n\n(Human|Assistant):", " ", "\n\n" + prompt.lstrip())
        assert squash(" ".join(turns)) == squash(words), prompt[:200]
        speakers = re.findall(r"\n\n(Human|Assistant):", "\n\n" + prompt.lstrip())[:-1]
        changes = sum(a != b for a, b in zip(speakers, speakers[1:]))
        assert len(turns) == changes + 1
        text = data.format_scorer_text(prompt, " a reply", "</s>")
        assert text.startswith("BEGINNING OF CONVERSATION: USER: ") and text.endswith("ASSISTANT: a reply</s>")
        assert text.count("USER: ") >= (len(turns) + 1) // 2
        assert text.count("</s>") >= len(turns) // 2 + 1
    sample = multi[0]
    turns = data.dialogue_turns(sample)
    assert "\n\nHuman:" not in data.format_scorer_text(sample, "", "</s>")
    assert data.format_scorer_text(sample, "", "</s>").count(" ASSISTANT:") == (len(turns) + 1) // 2


def test_chat_format_rows_and_parquet_and_csv_prompt_files(tmp_path):
    """TRL's conversational rows ({"messages": [...]} or "prompt" as a list of turns) become the
    prompt text the project reads (a multi-turn one splits back into its turns; a trailing
    assistant answer is dropped), and parquet / CSV files read like JSON Lines."""
    rows = [{"messages": [{"role": "user", "content": "how do i bake bread"},
                          {"role": "assistant", "content": "mix flour"}]},
            {"prompt": [{"role": "system", "content": "be brief"},
                        {"role": "user", "content": "first question"},
                        {"role": "assistant", "content": "first answer"},
                        {"role": "user", "content": "then what"}]}]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prompts = data.load_prompts(str(path))
    assert prompts[0] == "how do i bake bread"
    assert data.dialogue_turns(prompts[1]) == ["first question", "first answer", "then what"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"},
                                            {"role": "assistant", "content": "again"}]}) + "\n")
    with pytest.raises(ValueError, match="should alternate user and assistant turns"):
        data.load_prompts(str(bad))
    import pandas as pd
    frame = pd.DataFrame({"prompt": ["how do i bake bread", "how do i fix a bike"]})
    frame.to_parquet(tmp_path / "p.parquet")
    frame.to_csv(tmp_path / "p.csv", index=False)
    for name in ("p.parquet", "p.csv"):
        assert data.load_prompts(str(tmp_path / name)) == list(frame["prompt"])
