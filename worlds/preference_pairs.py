"""Preference pairs for the worlds' score models: (prompt, better, worse) from PKU-SafeRLHF or
HH-RLHF rows, with the safe/unsafe labels where the data has them.

What it does
- PreferencePair: one pair; better_safe / worse_safe are the labels the cost model's sign term
  needs (cost > 0 means unsafe), None where the data has none.
- load_preference_pairs: the pairs of a Hub data set or a local file; kind="helpful" ranks by
  helpfulness, kind="safety" by harmlessness. Rows are read and checked by formats/files.py
  (read_rows, row_format, checked_field, split_hh), so a bad row gets the same one-sentence error
  as in load_prompts, naming the file, row and field.
Only the world builders read pairs (worlds/smol.py from HH-RLHF; worlds/toytext.py makes its own
PreferencePairs), to train their scorers with worlds/score_training.py; training and evaluation
read only prompts (data.load_prompts), so none of this is on their path.

Run: nothing to run; `python -m pytest -q tests/test_preference_pairs.py` checks it.
Left out on purpose: no plain {"prompt": ...} rows (they hold no responses to rank), no ties
(pairs with identical responses are skipped and counted), and no PKU-SafeRLHF safety row whose
labels contradict its ranking (skipped and counted).
"""
from dataclasses import dataclass

from formats.files import checked_field, read_rows, row_format, split_hh


@dataclass
class PreferencePair:
    prompt: str
    better: str  # kind="safety": the safer response
    worse: str
    better_safe: bool | None = None  # safe labels (PKU-SafeRLHF is_response_*_safe); None = unknown
    worse_safe: bool | None = None


def _parse_pair(row, fmt, name, where, kind):
    """One PreferencePair, or None for a PKU safety row whose labels contradict its ranking."""
    # HH-RLHF: chosen = more helpful (helpful-*) or less harmful (harmless-base); no labels
    if fmt == "HH-RLHF":
        chosen = checked_field(row, "chosen", str, name, where, fmt)
        rejected = checked_field(row, "rejected", str, name, where, fmt)
        return PreferencePair(*split_hh(chosen, rejected, name, where))
    if fmt != "PKU-SafeRLHF":
        raise ValueError(f"{name}, {where} holds a prompt but no responses; preference pairs need "
                         f"PKU-SafeRLHF or HH-RLHF rows.")
    prompt = checked_field(row, "prompt", str, name, where, fmt)
    responses = [checked_field(row, f"response_{i}", str, name, where, fmt) for i in (0, 1)]
    if kind == "helpful":
        b = checked_field(row, "better_response_id", "id", name, where, fmt)
        return PreferencePair(prompt, responses[b], responses[1 - b])
    b = checked_field(row, "safer_response_id", "id", name, where, fmt)
    safe = [checked_field(row, f"is_response_{i}_safe", bool, name, where, fmt) for i in (0, 1)]
    if not safe[b] and safe[1 - b]:  # "safer" one labelled unsafe, the other safe: labels disagree
        return None
    return PreferencePair(prompt, responses[b], responses[1 - b], safe[b], safe[1 - b])


def load_preference_pairs(source: str, split: str = "train",
                          kind: str = "helpful") -> list[PreferencePair]:
    """Preference pairs for score-model training (worlds/score_training.py).

    kind="helpful": PKU better_response_id / HH chosen-vs-rejected. kind="safety": better = PKU
    safer_response_id's response with both is_response_*_safe labels (rows where the safer response
    is labelled unsafe and the other safe are skipped and counted); HH-RLHF harmless-base's chosen
    is the less harmful reply, labels None. Pairs with identical responses carry no signal and are
    skipped and counted.
    """
    if kind not in ("helpful", "safety"):
        raise ValueError(f"kind must be 'helpful' or 'safety', not {kind!r}.")
    if kind == "safety" and ":helpful" in source:
        raise ValueError(f"{source} ranks by helpfulness, not harmlessness; use kind='helpful' "
                         f"or the harmless-base data dir for safety pairs.")
    name, rows = read_rows(source, split)
    pairs, fmt, n_rows, inconsistent, identical = [], None, 0, 0, 0
    for where, row in rows:
        fmt = fmt or row_format(row)
        n_rows += 1
        pair = _parse_pair(row, fmt, name, where, kind)
        if pair is None:
            inconsistent += 1
        elif pair.better == pair.worse:
            identical += 1
        else:
            pairs.append(pair)
    # "data:" like load_prompts' count line: in a build log both say what the data held
    print(f"data: {len(pairs)} {kind} pairs from {name} ({fmt} rows: {n_rows}, "
          f"skipped: {inconsistent} inconsistent safety labels, {identical} identical responses)")
    return pairs
