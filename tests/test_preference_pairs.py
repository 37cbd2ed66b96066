"""worlds/preference_pairs.py: helpful and safety pairs of PKU-SafeRLHF (both schemas) and HH-RLHF
rows written in tmp_path (the rows of tests/test_data.py), skipped rows and their counts, error
messages; the real HH-RLHF sample when present."""
import gzip
import json

import pytest

from test_data import HH_DIALOGUES, HH_SAMPLE, pku_rows, write_jsonl
from worlds.preference_pairs import load_preference_pairs


@pytest.mark.parametrize("schema", [2023, 2024])
def test_pku_pairs(tmp_path, capsys, schema):
    path = write_jsonl(tmp_path / f"pku{schema}.jsonl", pku_rows(schema))
    helpful = load_preference_pairs(path, kind="helpful")
    assert len(helpful) == 5
    assert (helpful[1].better, helpful[1].worse) == ("Break the window.", "I cannot help with that.")
    assert (helpful[2].better, helpful[2].worse) == ("Knead it, then bake.", "Buy some.")
    assert all(p.better_safe is None and p.worse_safe is None for p in helpful)
    capsys.readouterr()

    safety = load_preference_pairs(path, kind="safety")
    out = capsys.readouterr().out
    assert "1 inconsistent" in out and len(out.strip().splitlines()) == 1
    assert [p.prompt for p in safety] == ["How do I bake bread?", "How do I steal a car?",
                                          "How do I bake bread?", "How do I hurt someone?"]
    steal = safety[1]
    assert (steal.better, steal.worse, steal.better_safe, steal.worse_safe) == (
        "I cannot help with that.", "Break the window.", True, False)
    assert (safety[3].better, safety[3].better_safe, safety[3].worse_safe) == (
        "Punch them.", False, False)


def test_hh_gzip_pairs(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl.gz",
                       [{"chosen": c, "rejected": r} for c, r in HH_DIALOGUES], gz=True)
    pairs = load_preference_pairs(path, kind="safety")
    for pair, (chosen, rejected) in zip(pairs, HH_DIALOGUES, strict=True):
        assert pair.prompt + pair.better == chosen and pair.prompt + pair.worse == rejected
        assert pair.better_safe is None and pair.worse_safe is None
    assert pairs[0].better == " I can't help with that."
    assert pairs[3].better == " Here it is:\n\nAssistant:"


def test_plain_prompt_files_hold_no_pairs(tmp_path):
    rows = [{"prompt": "a"}, {"prompt": "b", "category": "x"}, {"prompt": "a"}]
    as_lines = write_jsonl(tmp_path / "prompts.jsonl", rows)
    with pytest.raises(ValueError, match=r"prompts\.jsonl, line 1 holds a prompt but no responses"):
        load_preference_pairs(as_lines)


def test_safety_pairs_refuse_a_helpfulness_subset(monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: calls.append(a) or [])
    with pytest.raises(ValueError, match="ranks by helpfulness"):
        load_preference_pairs("Anthropic/hh-rlhf:helpful-base", kind="safety")
    assert calls == []  # refused before anything is loaded


@pytest.mark.parametrize("schema", [2023, 2024])
def test_bad_rows_name_file_row_and_field(tmp_path, schema):
    def bad(change, kind="safety"):
        rows = pku_rows(schema)
        change(rows[1])  # the second row: line 2 of the file
        path = write_jsonl(tmp_path / "bad.jsonl", rows)
        with pytest.raises(ValueError) as err:
            load_preference_pairs(path, kind=kind)
        msg = str(err.value)
        assert "bad.jsonl, line 2: field" in msg and msg.count(". ") == 0, msg  # one sentence
        return msg

    assert "'safer_response_id' is missing" in bad(lambda r: r.pop("safer_response_id"))
    assert "'response_1' is missing" in bad(lambda r: r.pop("response_1"), kind="helpful")
    assert "'better_response_id' should be 0 or 1 but is str" in bad(
        lambda r: r.update(better_response_id="1"), kind="helpful")
    assert "'better_response_id' should be 0 or 1 but is int" in bad(
        lambda r: r.update(better_response_id=2), kind="helpful")
    assert "'is_response_0_safe' should be bool but is str" in bad(
        lambda r: r.update(is_response_0_safe="yes"))


def test_empty_file_and_unknown_kind(tmp_path):
    empty_gz = write_jsonl(tmp_path / "empty.jsonl.gz", [], gz=True)
    with pytest.raises(ValueError, match="is empty"):
        load_preference_pairs(empty_gz)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(ValueError, match="kind must be"):
        load_preference_pairs(str(broken), kind="harmless")


def test_real_hh_rlhf_harmless_base_test_sample():
    if not HH_SAMPLE.exists():
        pytest.skip(f"{HH_SAMPLE} is absent (only the development machine has ../shared/data)")
    with gzip.open(HH_SAMPLE, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 2312
    pairs = load_preference_pairs(str(HH_SAMPLE), split="test", kind="safety")
    assert len(pairs) == 2312
    for pair, rec in zip(pairs, records):
        assert pair.prompt.endswith("\n\nAssistant:") and pair.prompt.startswith("\n\nHuman:")
        assert pair.prompt + pair.better == rec["chosen"]
        assert pair.prompt + pair.worse == rec["rejected"]
