"""Prompt data for GAPO: PKU-SafeRLHF, HH-RLHF, local JSON/JSONL files, and the templates.

What it does
- load_prompts: the RL / evaluation prompts of a data set (the paper: PKU-SafeRLHF train for
  training, its test split and HH-RLHF test for evaluation), de-duplicated in order (PKU-SafeRLHF
  repeats each prompt across several rows).
- the rows themselves (JSON, JSON Lines, parquet, CSV, Hub data sets) and each data set's
  schema are read by formats/files.py.
- format_policy_prompt / format_scorer_text / format_scorer_chat: the policy's own chat template,
  the Safe RLHF template the beaver reward and cost models were trained on, and a chat-template
  reward model's text (its template, the response as the last assistant turn); rewards.py picks a
  scorer's (docs/decisions.md, "Scorer input"). A multi-turn HH-RLHF prompt ("\n\nHuman: q1
  \n\nAssistant: a1\n\nHuman: q2\n\nAssistant:") reaches all three as alternating turns
  (dialogue_turns), never as one user message with the markers inside.

Sources: a Hugging Face Hub id ("PKU-Alignment/PKU-SafeRLHF", "Anthropic/hh-rlhf", or
"Anthropic/hh-rlhf:harmless-base" to pick a data dir), a local folder that load_dataset can read,
or a local .json / .jsonl / .jsonl.gz / .parquet / .csv file. Hub rows and file rows go through
the same row parser (formats/files.py); a row's format (PKU-SafeRLHF, HH-RLHF, plain
{"prompt": ...}, or a chat conversation: {"messages": [{"role", "content"}, ...]} or "prompt" as
such a list, a trailing assistant turn dropped) is told by its fields. Both PKU-SafeRLHF schemas
work: the 2024 fields (sources, hashes, harm categories, severity) are ignored.

Run: python data.py Anthropic/hh-rlhf:harmless-base test   (prints counts and the first prompt)

Left out on purpose: no preference pairs (worlds/preference_pairs.py), no tokenisation here
(rollout.py and rewards.py own it).
"""
import re
import sys

from formats.files import parse_prompt, read_rows, row_format

SAFE_RLHF_TEMPLATE = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
SAFE_RLHF_BEGIN = "BEGINNING OF CONVERSATION: "  # Safe RLHF's dialogue pieces (format_prompt)
SAFE_RLHF_USER, SAFE_RLHF_ASSISTANT = "USER: {} ", "ASSISTANT:"
TURN_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")  # HH-RLHF turn: at start or after \n\n


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
        prompts.append(parse_prompt(row, fmt, name, where, hh_first_turn_only))
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
    try:
        found = load_prompts(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "train")
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    print(repr(found[0]))
