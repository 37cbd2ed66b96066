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
from (both, with the file readers, in worlds/eval_sets.py, which the world builders share). The
red-team file may be JSON Lines or the upstream problem.json's JSON list of objects.

Run: python -m evals.prompt_sets FOLDER   (prints the count and first prompt of each set)

Left out on purpose: no download (the files are third-party data with their own licences; the
user fetches them), and no de-duplication (the published sets have none to remove).
"""
import os
import sys

# The files and their readers live below evals/ so that worlds/smol.py can keep evaluation
from worlds.eval_sets import (SET_FILES, STANDARD_SETS, EvalPrompt,
                              load_jsonl_set, load_xstest)


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
