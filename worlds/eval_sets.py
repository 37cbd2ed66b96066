"""The files of the standard evaluation sets (Safe RLHF red-team, AlpacaEval helpful_base,
XSTest): their names, where each comes from, and one reader per file format.

What it does
- SET_FILES / SOURCES: the file each set is read from, and where to get it.
- load_jsonl_set, load_xstest: EvalPrompt rows of one file, with one-sentence errors that name
  the file (and line) and say what to do.
- load_standard_set(folder, name): the rows of one standard set.
It sits below evals/ because the world builders read these files too: worlds/smol.py keeps the
dialogues that open with an evaluation prompt out of its scorers' data and its RL prompts, and a
world must not import the evaluation code above it. evals/prompt_sets.py builds on it (custom
sets, limits, the command line).

Run: nothing to run; `python -m pytest -q tests/test_prompt_sets.py` checks it.
Left out on purpose: no download (the files are third-party data with their own licences; the
user fetches them), and no de-duplication (the published sets have none to remove).
"""
import csv
import os
from dataclasses import dataclass

from formats.files import read_file  # JSON Lines or a JSON list, with one-sentence errors

SET_FILES = {"redteam": "safe_rlhf_redteam.jsonl", "alpaca": "alpacaeval_helpful_base.jsonl",
             "xstest-safe": "xstest_prompts.csv", "xstest-unsafe": "xstest_prompts.csv"}
SOURCES = {
    "safe_rlhf_redteam.jsonl": "the red-team prompts of PKU-Alignment/safe-rlhf on GitHub, file "
                               "safe_rlhf/evaluate/gpt4/problem.json (fields prompt, category)",
    "alpacaeval_helpful_base.jsonl": "the helpful_base instructions of tatsu-lab/alpaca_eval "
                                     "(fields prompt, category)",
    "xstest_prompts.csv": "xstest_prompts.csv of github.com/paul-rottger/exaggerated-safety",
}
STANDARD_SETS = ["redteam", "alpaca", "xstest-safe", "xstest-unsafe"]
XSTEST_COLUMNS = ["id", "prompt", "type", "label", "focus", "note"]


@dataclass
class EvalPrompt:
    prompt: str
    set: str  # redteam, alpaca, xstest-safe, xstest-unsafe, or a custom file's name
    label: str | None  # XSTest's "safe" / "unsafe"; None where the source gives no label
    category: str  # red-team harm category, XSTest type ("homonyms", "contrast_privacy"), ...


# ---------------------------------------------------------------------------------------------
# One reader per file format; each error names the file (and line) and says what to do.

def _require(path):
    """Fail with one sentence that names the missing file and where to get it."""
    if os.path.isfile(path):
        return
    name = os.path.basename(path)
    folder = os.path.dirname(path) or "."
    where = f"the folder {folder} does not exist" if not os.path.isdir(folder) else f"in {folder}"
    if name not in SOURCES:  # a custom prompt file
        raise FileNotFoundError(f"prompt file {path} does not exist ({where}); check the path.")
    raise FileNotFoundError(f"evaluation file {name} is missing ({where}); get it from "
                            f"{SOURCES[name]} and put it there.")


def _prompt_of(path, where, row):
    if not isinstance(row, dict):
        raise ValueError(f"{path}, {where} is a {type(row).__name__}, not a JSON object; "
                         f"write one object with a \"prompt\" field per prompt.")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{path}, {where} has no non-empty string field \"prompt\"; "
                         f"fill it in or remove the row.")
    return prompt


def load_jsonl_set(path, set_name, default_category=""):
    """EvalPrompts of a JSON Lines file with a "prompt" field and an optional "category"."""
    _require(path)
    rows = list(read_file(path))  # JSON Lines, or one JSON list (the upstream problem.json)
    return [EvalPrompt(_prompt_of(path, where, row), set_name, None,
                       str(row.get("category") or default_category)) for where, row in rows]


def load_xstest(path):
    """(safe, unsafe) EvalPrompts of XSTest's CSV, each in file order; category = its type."""
    _require(path)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("prompt", "type", "label") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} has no column {', '.join(missing)}; XSTest's CSV has the "
                             f"columns {', '.join(XSTEST_COLUMNS)}.")
        sets = {"safe": [], "unsafe": []}
        for i, row in enumerate(reader, 2):  # line 1 is the header
            label = (row["label"] or "").strip()
            if label not in sets:
                raise ValueError(f"{path}, line {i} has label {label!r}; XSTest labels are "
                                 f"'safe' or 'unsafe'.")
            if not (row["prompt"] or "").strip():
                raise ValueError(f"{path}, line {i} has an empty prompt; fill it in or remove "
                                 f"the row.")
            sets[label].append(EvalPrompt(row["prompt"], f"xstest-{label}", label, row["type"]))
    return sets["safe"], sets["unsafe"]


def load_standard_set(folder, name) -> list[EvalPrompt]:
    """EvalPrompts of one standard set (one of STANDARD_SETS) from its file in folder."""
    if name in ("redteam", "alpaca"):
        return load_jsonl_set(os.path.join(folder, SET_FILES[name]), name)
    if name in ("xstest-safe", "xstest-unsafe"):
        safe, unsafe = load_xstest(os.path.join(folder, SET_FILES[name]))
        return safe if name == "xstest-safe" else unsafe
    raise ValueError(f"unknown standard evaluation set {name!r}; use one of "
                     f"{', '.join(STANDARD_SETS)}.")
