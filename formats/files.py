"""Reading data files: local JSON (one list, or JSON Lines) / .jsonl / .jsonl.gz, parquet and CSV
(through the datasets library's own readers), Hub data sets ("repo" or "repo:data_dir") and local
data set folders, as rows with their place ("row 3", "line 7") so every error names the file, the
row and the field.

- read_rows(source, split) -> (name, rows): the one entry point; data.py reads prompts through it,
  worlds/preference_pairs.py preference pairs, worlds/eval_sets.py the evaluation sets.
- checked_field: one field of a row, with its type checked; a wrong or missing field stops with
  one sentence that names the file, the row and what to fix.
- row_format / parse_prompt / split_hh: which data set a row comes from (PKU-SafeRLHF, HH-RLHF,
  a chat conversation, plain {"prompt": ...}; the first row decides), its prompt, and an HH-RLHF
  record's prompt and replies.

Run: nothing to run; `python -m pytest -q tests/test_data.py` checks it.
Left out on purpose: streaming of huge data sets, and the split argument for single local files
(a file is one split).
"""
import gzip
import json
import os

FILE_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet", ".csv", ".csv.gz")
# read by datasets' own builders (pandas opens a .csv.gz by its name)
TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv"}
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"  # HH-RLHF turn markers


# ---------------------------------------------------------------------------------------------
# Reading rows: yields (name, where, row) so that every error can name the file, row and field.

def read_file(path):
    """Rows of a local .json (a list of objects, one object, or JSON Lines) / .jsonl / .jsonl.gz
    file. A file holding one object spread over several lines (HarmBench's classifier set, a dict
    of lists) is one row, "the object"."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise ValueError(f"{path} is empty; give a file with at least one JSON object.")
    if text.lstrip().startswith("["):  # one JSON list of objects
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); fix the file.") from None
        for i, row in enumerate(rows, 1):
            yield f"row {i}", row
        return
    if text.lstrip().startswith("{") and "\n" in text.strip():
        try:  # JSON Lines of several rows fail here ("Extra data") and are read below
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict):
            yield "the object", whole
            return
    for i, line in enumerate(text.splitlines(), 1):  # JSON Lines; blank lines are not rows
        if line.strip():
            try:
                yield f"line {i}", json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {i} is not valid JSON ({err}); "
                                 f"fix that line.") from None


def _read_hub(source, split):
    """Rows of a Hub data set ("repo" or "repo:data_dir") or a local data set folder."""
    import datasets

    repo, data_dir = source, None
    if not os.path.isdir(source) and ":" in source:
        repo, data_dir = source.split(":", 1)
    try:
        ds = datasets.load_dataset(repo, data_dir=data_dir, split=split)
    except (ConnectionError, FileNotFoundError) as err:  # offline, or no such data set
        raise FileNotFoundError(
            f"data set '{source}' is not a local file or folder and could not be loaded from the "
            f"Hugging Face Hub ({type(err).__name__}, offline?); download it first or pass a local "
            f".json/.jsonl/.jsonl.gz path.") from err
    for i, row in enumerate(ds, 1):
        yield f"row {i}", row


def _read_table(path, builder):
    """Rows of a local parquet or CSV file, through the datasets library's own reader."""
    import datasets
    for i, row in enumerate(datasets.load_dataset(builder, data_files=path, split="train"), 1):
        yield f"row {i}", row


def read_rows(source, split):
    """(name, iterator of (where, row)) for any source; a non-dict row stops with its location."""
    if os.path.isfile(source) or source.endswith(FILE_SUFFIXES):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"data file {source} does not exist; check the path.")
        if not source.endswith(FILE_SUFFIXES):
            raise ValueError(f"{source} is not a .json, .jsonl, .jsonl.gz, .parquet or .csv file; "
                             f"convert it to JSON Lines.")
        table = next((b for s, b in TABLE_SUFFIXES.items() if source.endswith(s)), None)
        name, rows = source, _read_table(source, table) if table else read_file(source)
    else:
        name, rows = f"{source} (split {split})", _read_hub(source, split)

    def checked():
        n = 0
        for where, row in rows:
            if not isinstance(row, dict):
                raise ValueError(f"{name}, {where} is a {type(row).__name__}, not a JSON object; "
                                 f"give one object per row.")
            n += 1
            yield where, row
        if n == 0:
            raise ValueError(f"{name} holds no rows; give a data set with at least one row.")
    return name, checked()


def checked_field(row, key, expected, name, where, fmt):
    """row[key], checked: expected is str (non-empty when key is a prompt), bool, or 'id'
    (0 or 1)."""
    value = row.get(key)
    if value is None:
        raise ValueError(f"{name}, {where}: field '{key}' is missing; "
                         f"every row of a {fmt} file needs it.")
    if expected == "id":
        # bool is an int in Python: refuse it on purpose
        ok = type(value) is int and value in (0, 1)
        want = "0 or 1"
    else:
        ok, want = type(value) is expected, expected.__name__
    if not ok:
        raise ValueError(f"{name}, {where}: field '{key}' should be {want} but is "
                         f"{type(value).__name__} {str(value)[:40]!r}; fix that row.")
    if key == "prompt" and not value.strip():
        raise ValueError(f"{name}, {where}: field 'prompt' is empty; fill it in or remove the row.")
    return value


# ---------------------------------------------------------------------------------------------
# Parsing one row. The first row decides the format; every later row must have its fields.

def row_format(row):
    if "messages" in row or isinstance(row.get("prompt"), list):
        return "chat"  # {"messages": [{"role", "content"}, ...]} or "prompt" as a list of turns
    if "chosen" in row or "rejected" in row:
        return "HH-RLHF"
    if any(k in row for k in ("response_0", "response_1", "better_response_id",
                              "safer_response_id")):
        return "PKU-SafeRLHF"
    return "prompt"


def split_hh(chosen, rejected, name, where):
    """(dialogue prompt, chosen reply, rejected reply) of an HH-RLHF record.

    The prompt ends with the last "\\n\\nAssistant:" that chosen and rejected share. Using their
    common prefix (not just chosen's last marker) matters: a few published replies contain
    "Assistant:" themselves (5 of the 2,312 harmless-base test records).
    """
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    cut = chosen.rfind(ASSISTANT, 0, n)
    if cut < 0:
        raise ValueError(f"{name}, {where}: field 'chosen' has no '\\n\\nAssistant:' turn "
                         f"shared with 'rejected'; HH-RLHF rows are full dialogues.")
    cut += len(ASSISTANT)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _hh_first_turn(dialogue, name, where):
    start = dialogue.find(HUMAN)
    start = 0 if start < 0 else start + len(HUMAN)
    end = dialogue.find(ASSISTANT, start)
    turn = dialogue[start:end].strip()
    if not turn:
        raise ValueError(f"{name}, {where}: field 'chosen' has an empty first human turn; "
                         f"fix that row.")
    return turn


def _chat_prompt(row, name, where):
    """A conversation as the prompt text the rest of the project reads: one user turn -> its
    text; several -> the HH-RLHF dialogue string ("\n\nHuman: q1\n\nAssistant: a1\n\nHuman:
    q2\n\nAssistant:"), which dialogue_turns splits back into turns for the chat templates. A
    trailing assistant turn (the answer a chat data set carries) is dropped; system turns are not
    carried (left out)."""
    key = "messages" if "messages" in row else "prompt"
    turns = row.get(key)
    if not isinstance(turns, list) or not all(
            isinstance(t, dict) and isinstance(t.get("content"), str) for t in turns):
        raise ValueError(f"{name}, {where}: field '{key}' should be a list of "
                         f"{{\"role\": ..., \"content\": ...}} turns; fix that row.")
    turns = [t for t in turns if t.get("role") != "system"]
    if turns and turns[-1].get("role") == "assistant":
        turns = turns[:-1]
    roles = [t.get("role") for t in turns]
    alternating = ["assistant" if i % 2 else "user" for i in range(len(turns))]
    if not turns or roles != alternating or roles[-1] != "user":
        raise ValueError(f"{name}, {where}: field '{key}' should alternate user and assistant "
                         f"turns, starting and ending with a user turn (got {roles}); fix that "
                         f"row.")
    if len(turns) == 1:
        return turns[0]["content"]
    return "".join((HUMAN if t["role"] == "user" else ASSISTANT) + " " + t["content"]
                   for t in turns) + ASSISTANT


def parse_prompt(row, fmt, name, where, hh_first_turn_only):
    if fmt == "chat":
        return _chat_prompt(row, name, where)
    if fmt == "HH-RLHF":
        chosen = checked_field(row, "chosen", str, name, where, fmt)
        rejected = checked_field(row, "rejected", str, name, where, fmt)
        prompt = split_hh(chosen, rejected, name, where)[0]
        return _hh_first_turn(prompt, name, where) if hh_first_turn_only else prompt
    return checked_field(row, "prompt", str, name, where, fmt)
