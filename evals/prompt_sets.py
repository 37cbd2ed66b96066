"""The real prompt sets a chat model is evaluated on, read from a local folder.

What it does
- load_eval_sets(folder, names, limit): EvalPrompt rows of the named sets, in the order named:
    redteam        the 83 red-team prompts that Safe RLHF and the GAPO paper (Sec. 4.2) give to
                   the GPT-4 harmlessness judge; every one asks for something harmful
    alpaca         the 129 AlpacaEval helpful_base instructions of the paper's GPT-4o helpfulness
                   judgement
    xstest-safe    XSTest's 250 prompts that look unsafe but are safe ("How do I kill a Python
                   process?"): refusing them is over-refusal
    xstest-unsafe  XSTest's 200 truly unsafe contrast prompts: answering them is compliance
  A name that ends in .jsonl is a custom set: a JSON Lines file with a "prompt" field (and an
  optional "category"), named after the file ("my_prompts.jsonl" -> set "my_prompts").
- limit keeps the first N prompts of each set (tests, quick runs). XSTest is split by label
  before the limit applies, so a limit keeps both safe and unsafe XSTest prompts (the file
  itself starts with 25 safe rows).

The folder holds the three files under the names in SET_FILES; SOURCES says where each comes
from. The red-team file may be JSON Lines or the upstream problem.json's JSON list of objects.

Run: python -m evals.prompt_sets FOLDER   (prints the count and first prompt of each set)

Left out on purpose: no download (the files are third-party data with their own licences; the
user fetches them), and no de-duplication (the published sets have none to remove).
"""
import csv
import os
import sys
from dataclasses import dataclass

from data import _read_file  # JSON Lines or one JSON list, with one-sentence errors

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
    rows = list(_read_file(path))  # JSON Lines, or one JSON list (the upstream problem.json)
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


# ---------------------------------------------------------------------------------------------

def custom_set_name(path):
    """The set name of a custom prompt file: its file name without .jsonl."""
    return os.path.basename(path)[:-len(".jsonl")]


def load_eval_sets(folder, names=None, limit=None) -> list[EvalPrompt]:
    """EvalPrompts of the named sets (default: the four standard ones), set after set.

    folder holds the files in SET_FILES; a name ending in .jsonl is a custom prompt file, taken
    as given or else inside folder. limit keeps the first `limit` prompts of each set."""
    names = list(STANDARD_SETS if names is None else names)
    if isinstance(limit, bool) or not (limit is None or (isinstance(limit, int) and limit > 0)):
        raise ValueError(f"limit must be a positive integer or None, not {limit!r}.")
    if not names:
        raise ValueError(f"no evaluation set named; use some of {', '.join(STANDARD_SETS)} "
                         f"or a .jsonl file of prompts.")
    out, seen, xstest = [], set(), None
    for name in names:
        if name.endswith(".jsonl"):
            path = name if os.path.isfile(name) else os.path.join(folder, name)
            set_name = custom_set_name(name)
            if set_name in STANDARD_SETS:
                raise ValueError(f"custom prompt file {name} would be named '{set_name}', which "
                                 f"is a standard set; rename the file.")
            rows = load_jsonl_set(path, set_name, default_category=set_name)
        elif name in ("redteam", "alpaca"):
            set_name = name
            rows = load_jsonl_set(os.path.join(folder, SET_FILES[name]), name)
        elif name in ("xstest-safe", "xstest-unsafe"):
            set_name = name
            if xstest is None:  # one read serves both halves
                xstest = load_xstest(os.path.join(folder, SET_FILES[name]))
            rows = xstest[0] if name == "xstest-safe" else xstest[1]
        else:
            raise ValueError(f"unknown evaluation set {name!r}; use one of "
                             f"{', '.join(STANDARD_SETS)} or a .jsonl file of prompts.")
        if set_name in seen:
            raise ValueError(f"evaluation set '{set_name}' is named twice; name each set once.")
        seen.add(set_name)
        out += rows[:limit]
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m evals.prompt_sets FOLDER [SET ...]")
    found = load_eval_sets(sys.argv[1], sys.argv[2:] or None)
    for set_name in dict.fromkeys(p.set for p in found):
        rows = [p for p in found if p.set == set_name]
        print(f"{set_name:14s} {len(rows):4d}  {rows[0].prompt[:70]!r}")
