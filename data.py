"""Prompt data for GAPO: PKU-SafeRLHF, HH-RLHF, local JSON/JSONL files, and the templates.

What it does
- load_prompts: the RL / evaluation prompts of a data set (the paper: PKU-SafeRLHF train for
  training, its test split and HH-RLHF test for evaluation), de-duplicated in order (PKU-SafeRLHF
  repeats each prompt across several rows).
- read_rows / read_file / row_format / checked_field / split_hh: the row reader and its field
  checks, shared with the worlds so that every data file gets the same one-sentence errors:
  worlds/preference_pairs.py reads the (prompt, better, worse) pairs for score-model training
  through them, worlds/eval_sets.py the evaluation files.
- format_policy_prompt / format_scorer_text / format_scorer_chat: the policy's own chat template,
  the Safe RLHF template the beaver reward and cost models were trained on, and a chat-template
  reward model's text (its template, the response as the last assistant turn); rewards.py picks a
  scorer's (docs/decisions.md, "Scorer input"). A multi-turn HH-RLHF prompt ("\n\nHuman: q1
  \n\nAssistant: a1\n\nHuman: q2\n\nAssistant:") reaches all three as alternating turns
  (dialogue_turns), never as one user message with the markers inside.

Sources: a Hugging Face Hub id ("PKU-Alignment/PKU-SafeRLHF", "Anthropic/hh-rlhf", or
"Anthropic/hh-rlhf:harmless-base" to pick a data dir), a local folder that load_dataset can read,
or a local .json / .jsonl / .jsonl.gz / .parquet / .csv file. Hub rows and file rows go through
the same row parser; a row's format (PKU-SafeRLHF, HH-RLHF, plain {"prompt": ...}, or a chat
conversation: {"messages": [{"role", "content"}, ...]} or "prompt" as such a list, a trailing
assistant turn dropped) is told by its fields. Both PKU-SafeRLHF schemas work: the 2024 fields
(sources, hashes, harm categories, severity) are ignored.

Run: python data.py Anthropic/hh-rlhf:harmless-base test   (prints counts and the first prompt)

Left out on purpose: no preference pairs (worlds/preference_pairs.py), no tokenisation here
(rollout.py and rewards.py own it), no streaming of huge data sets, and the split argument is
ignored for single local files (a file is one split).
"""
import gzip
import json
import os
import re
import sys

SAFE_RLHF_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
SAFE_RLHF_BEGIN = "BEGINNING OF CONVERSATION: "  # Safe RLHF's dialogue pieces (format_prompt)
SAFE_RLHF_USER, SAFE_RLHF_ASSISTANT = "USER: {} ", "ASSISTANT:"
TURN_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")  # HH-RLHF turn: at start or after \n\n
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"  # HH-RLHF turn markers
FILE_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet", ".csv")
TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv"}  # read by datasets' own builders


# ---------------------------------------------------------------------------------------------
# Reading rows: yields (name, where, row) so that every error can name the file, row and field.

def read_file(path):
    """Rows of a local .json (a list of objects, or JSON Lines) / .jsonl / .jsonl.gz file."""
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


def _parse_prompt(row, fmt, name, where, hh_first_turn_only):
    if fmt == "chat":
        return _chat_prompt(row, name, where)
    if fmt == "HH-RLHF":
        chosen = checked_field(row, "chosen", str, name, where, fmt)
        rejected = checked_field(row, "rejected", str, name, where, fmt)
        prompt = split_hh(chosen, rejected, name, where)[0]
        return _hh_first_turn(prompt, name, where) if hh_first_turn_only else prompt
    return checked_field(row, "prompt", str, name, where, fmt)


# ---------------------------------------------------------------------------------------------
# Public API

def load_prompts(source: str, split: str = "train", *, hh_first_turn_only=False,
                 limit=None) -> list[str]:
    """De-duplicated prompts (first occurrence order) of a Hub data set or a local file.

    HH-RLHF prompts are the dialogue up to and including the last "\\n\\nAssistant:", or only the
    first human turn's text with hh_first_turn_only=True. limit keeps the first `limit` prompts.
    """
    if limit is not None and (type(limit) is not int or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, not {limit!r}.")
    name, rows = read_rows(source, split)
    prompts, fmt = [], None
    for where, row in rows:
        fmt = fmt or row_format(row)
        prompts.append(_parse_prompt(row, fmt, name, where, hh_first_turn_only))
    unique = list(dict.fromkeys(prompts))  # dict keeps insertion order
    kept = unique[:limit] if limit is not None else unique
    print(f"data: {len(kept)} prompts from {name} ({fmt} rows: {len(prompts)}, duplicates removed: "
          f"{len(prompts) - len(unique)}, cut by limit: {len(unique) - len(kept)})")
    return kept


def dialogue_turns(prompt: str) -> list[str]:
    """A prompt's turns, user first, alternating: [q1, a1, q2, ...], ending with a user turn.

    An HH-RLHF dialogue ("\n\nHuman: q1\n\nAssistant: a1\n\nHuman: q2\n\nAssistant:") is split
    at its markers, each turn stripped, the empty final assistant slot dropped and consecutive turns
    of one speaker joined. Any other prompt (PKU-SafeRLHF, plain text) is one user turn.
    """
    if not TURN_MARKER.match(prompt.lstrip()):
        return [prompt]
    pieces = TURN_MARKER.split(prompt.lstrip())  # ["", "Human", " q1", "Assistant", " a1", ...]
    turns, roles = [], []
    for role, text in zip(pieces[1::2], pieces[2::2]):
        text = text.strip()
        if roles and roles[-1] == role:
            turns[-1] = f"{turns[-1]}\n\n{text}".strip()
        else:
            roles.append(role)
            turns.append(text)
    if roles[-1] == "Assistant" and not turns[-1]:  # the slot the response fills
        roles.pop()
        turns.pop()
    if not roles or roles[0] != "Human" or roles[-1] != "Human":
        return [prompt]  # not a dialogue that ends with a question: keep the text as it is
    return turns


def format_safe_rlhf_dialogue(turns: list[str], eos_token: str) -> str:
    """Safe RLHF's prompt format for a dialogue:
    BEGINNING OF CONVERSATION: USER: q1 ASSISTANT:a1</s>USER: q2 ASSISTANT:
    (each earlier reply follows "ASSISTANT:" directly and ends with eos, as
    Safe RLHF's format_prompt joins them)."""
    assert len(turns) % 2 == 1, f"a dialogue prompt ends with a user turn, got {len(turns)} turns"
    parts = [SAFE_RLHF_BEGIN]
    for i, turn in enumerate(turns):
        user = i % 2 == 0
        parts += [SAFE_RLHF_USER.format(turn), SAFE_RLHF_ASSISTANT] if user else [turn, eos_token]
    return "".join(parts)


def _messages(turns: list[str]) -> list[dict]:
    """Alternating turns, user first -> chat messages."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t}
            for i, t in enumerate(turns)]


def format_policy_prompt(tokenizer, prompt: str) -> str:
    """The policy's input text: its own chat template when it has one (the dialogue's turns as
    alternating user / assistant messages), else the Safe RLHF template."""
    turns = dialogue_turns(prompt)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(_messages(turns), add_generation_prompt=True,
                                             tokenize=False)
        assert isinstance(text, str), type(text)
        return text
    return format_safe_rlhf_dialogue(turns, tokenizer.eos_token or "")


def format_scorer_text(prompt: str, response: str, eos_token: str) -> str:
    """Text for the beaver reward/cost models: the Safe RLHF dialogue, then the response and eos.
    No space after "ASSISTANT:" (Safe RLHF convention; sampled responses usually start with one)."""
    return format_safe_rlhf_dialogue(dialogue_turns(prompt), eos_token) + response + eos_token


def format_scorer_chat(tokenizer, prompt: str, response: str) -> str:
    """Text for a reward model trained on its tokenizer's chat template: the prompt's turns as
    alternating user / assistant messages, the response as the final assistant message, and no
    generation prompt (the conversation is finished). The template writes its own special tokens
    (bos, end of turn), so the text is tokenised without adding any. The response is stripped
    like the prompt's turns: the leading space of a Safe RLHF-style sample is no message
    content."""
    messages = _messages(dialogue_turns(prompt) + [response.strip()])
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert isinstance(text, str), type(text)
    return text


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python data.py SOURCE [SPLIT]")
    found = load_prompts(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "train")
    print(repr(found[0]))
