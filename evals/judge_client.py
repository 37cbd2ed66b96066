"""One LLM judge behind an OpenAI-compatible URL: its messages, its replies read, every call cached.

What evals/judge.py's pairwise protocol (the paper's GPT-4o comparison, Sec. 4.2) sends and keeps:
- render_messages: the judge prompt of one criterion (evals/judge_prompts.py) around a question and
  the answers shown as assistants A and B. The judge ends each reply with one line
  `Scores: A=<1-10> B=<1-10>`; parse_scores reads it, or gives None rather than guess.
- JudgeClient: any OpenAI-compatible chat-completions server (OpenAI, vLLM, llama.cpp, ...) through
  the official `openai` client: temperature 0, a max_tokens cap, the API key read from an
  environment variable (OPENAI_API_KEY by default, "none" when unset, for local servers) and never
  printed or stored. Rate limits (429), timeouts, dropped connections and 5xx answers are retried
  with exponential backoff up to max_retries times; then one error sentence (JudgeError) names the
  URL. Before the first call a quick probe (check_timeout seconds) turns an unreachable URL into
  one sentence. It counts requests and tokens for the dry run and the report.
- judge_once: one order of one pair; an unreadable reply is asked again with a reminder of the
  format (parse_retries times), then it is "unparsed".
- The disk cache: one JSON file per (judge model, criterion, prompt, run answer, SFT answer, order,
  max_tokens, judge prompt version) under cache_dir, written atomically (temporary file, then
  os.replace), so an interrupted evaluation resumes where it stopped and a rerun makes no call.
  Cached: parsed replies, and the final UNPARSED verdict after the retries (the judge is
  deterministic at temperature 0, asking again would cost the same). Never cached: failed HTTP
  calls and answers that are not chat completions. The judge prompt version is a hash of
  evals/judge_prompts.py's texts, so editing a prompt re-judges. The key holds the model name, not
  the URL: give two different judges two different names.

Run: nothing to run here (python -m evals.judge, evaluate.py --judge); tests/test_judge.py checks it
against small http.server judges and a real llama.cpp server.
Left out on purpose: both orders, the verdicts and the win rates (evals/judge.py), and the judge's
cost in money (the dry run counts tokens; prices change).
"""
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field

from evals import judge_prompts

CRITERIA = tuple(judge_prompts.CRITERIA)  # ("helpfulness", "harmlessness")


def prompt_version():
    """A hash of evals/judge_prompts.py's texts: any edit of a prompt changes it (and the keys)."""
    texts = [judge_prompts.SYSTEM, judge_prompts.CRITERIA, judge_prompts.USER,
             judge_prompts.REMINDER]
    return hashlib.sha256(json.dumps(texts, sort_keys=True).encode()).hexdigest()[:12]


PROMPT_VERSION = prompt_version()


class JudgeError(RuntimeError):
    """The judge cannot be used (unreachable, refuses, answers garbage); the message is one
    sentence saying what is wrong and what to do."""


# ----------------------------------------------------------------------------- messages and replies

# One line "Scores: A=7 B=4": case, spaces, "=" or ":", a comma or semicolon between the two and a
# final period are tolerated; markdown emphasis (* and `) is removed first.
SCORE_LINE = re.compile(r"scores?\s*:\s*a\s*[=:]\s*(\d+)\s*[,;]?\s*b\s*[=:]\s*(\d+)\s*\.?",
                        re.IGNORECASE)


def parse_scores(reply):
    """The (score A, score B) in a judge reply, or None when it cannot be read without guessing.

    Read: a line that is wholly `Scores: A=<n> B=<n>` (see SCORE_LINE), both whole numbers in
    1..10. Rejected: no such line, numbers out of range, and two such lines that disagree (repeats
    of one line are fine). Reasoning text around the line is ignored."""
    if not isinstance(reply, str):
        return None
    found = set()
    for line in reply.splitlines():
        line = line.replace("*", "").replace("`", "").strip()
        match = SCORE_LINE.fullmatch(line)
        if match:
            found.add((int(match.group(1)), int(match.group(2))))
    if len(found) != 1:
        return None
    a, b = found.pop()
    return (a, b) if 1 <= a <= 10 and 1 <= b <= 10 else None


def render_messages(criterion, prompt, answer_a, answer_b):
    """The chat messages that ask the judge to score answer A and answer B on one criterion."""
    system = judge_prompts.SYSTEM.format(criterion=judge_prompts.CRITERIA[criterion])
    user = judge_prompts.USER.format(prompt=prompt, answer_a=answer_a, answer_b=answer_b)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# ----------------------------------------------------------------------------- the cache

def cache_key(model, criterion, prompt, run_answer, sft_answer, order, max_tokens,
              version=PROMPT_VERSION):
    """SHA-256 hex of everything that decides one judge reply."""
    fields = {"model": model, "criterion": criterion, "prompt": prompt, "run_answer": run_answer,
              "sft_answer": sft_answer, "order": order, "max_tokens": max_tokens,
              "version": version}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir, key):
    return os.path.join(cache_dir, key[:2], key + ".json")


def read_entry(cache_dir, key):
    """The cached verdict for key, or None when there is none or the file is not a whole entry."""
    try:
        with open(cache_path(cache_dir, key), encoding="utf-8") as f:
            entry = json.load(f)
    except (OSError, ValueError):  # missing, or cut short by a crash outside os.replace's guard
        return None
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    if entry.get("status") == "parsed":
        scores = entry.get("scores")
        return entry if isinstance(scores, list) and len(scores) == 2 else None
    return entry if entry.get("status") == "unparsed" else None


def write_entry(cache_dir, key, entry):
    """Write one entry atomically: a reader sees the old state or the whole new file."""
    path = cache_path(cache_dir, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(entry, f, ensure_ascii=False, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the client

def _reason(err):
    """A few words on why a call failed: 'connection refused', 'HTTP 429', 'timed out', ..."""
    status = getattr(err, "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    text = " ".join(str(e) for e in _causes(err)).lower()
    for needle, words in (("refused", "connection refused"), ("timed out", "timed out"),
                          ("timeout", "timed out"), ("name or service", "host name not found"),
                          ("nodename", "host name not found"), ("reset", "connection reset")):
        if needle in text:
            return words
    return type(err).__name__


def _causes(err):
    seen = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _retryable(err):
    import openai

    if isinstance(err, openai.APIConnectionError):  # includes APITimeoutError
        return True
    status = getattr(err, "status_code", None)
    return isinstance(err, openai.APIStatusError) and (status in (408, 409, 429) or status >= 500)


def _retry_after(err):
    """Seconds from a Retry-After header, or None."""
    response = getattr(err, "response", None)
    try:
        return float(response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return None


def _reply_text(response):
    """The text of a chat completion's first choice; ValueError for anything else."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise ValueError("no 'choices'")
    message = getattr(choices[0], "message", None)
    if message is None:
        raise ValueError("no 'message' in the first choice")
    content = getattr(message, "content", None)
    return content if isinstance(content, str) else ""  # None (a refusal, say): unreadable


@dataclass
class JudgeClient:
    """One judge: a model behind an OpenAI-compatible /v1 URL, with call counters.

    Retries here, not in the openai client (its own retries are off), so that every request is
    counted and the backoff is ours: backoff * 2^i seconds (at most max_backoff, or the server's
    Retry-After) before retry i + 1 of max_retries."""
    model: str
    base_url: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0  # seconds for one judge reply
    max_retries: int = 6  # per request, for 429 / 5xx / timeouts / dropped connections
    backoff: float = 2.0
    max_backoff: float = 60.0
    max_tokens: int = 512  # the judge's reply: a few sentences and the score line
    parse_retries: int = 2  # follow-ups with the format reminder after an unreadable reply
    check_timeout: float = 5.0
    calls: int = field(default=0, init=False)  # chat requests sent, failed ones included
    prompt_tokens: int = field(default=0, init=False)  # as the server reports them
    completion_tokens: int = field(default=0, init=False)
    _client: object = field(default=None, init=False, repr=False)
    _lock: object = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self):
        import openai

        self.base_url = self.base_url.rstrip("/")
        self._client = openai.OpenAI(base_url=self.base_url, timeout=self.timeout, max_retries=0,
                                     api_key=os.environ.get(self.api_key_env) or "none")

    def _fatal(self, err):
        """The one sentence for a failed call that retrying will not fix (or did not)."""
        reason, status = _reason(err), getattr(err, "status_code", None)
        if status in (401, 403):
            return JudgeError(f"the judge at {self.base_url} refused the API key ({reason}); "
                              f"set {self.api_key_env} to a valid key.")
        if status == 404:
            return JudgeError(f"the judge at {self.base_url} has no chat endpoint or no model "
                              f"{self.model!r} ({reason}); check --judge_url (it usually ends in "
                              "/v1) and --judge_model.")
        if status is not None and not _retryable(err):
            detail = " ".join(str(getattr(err, "message", err)).split())
            detail = re.sub(r"^Error code: \d+ - ", "", detail)[:200]  # the server's own words
            return JudgeError(f"the judge at {self.base_url} rejected the request ({reason}: "
                              f"{detail}); check --judge_model and --judge_max_tokens.")
        if status is None:
            return JudgeError(f"the judge at {self.base_url} did not answer ({reason}); start the "
                              "server or check --judge_url.")
        return JudgeError(f"the judge at {self.base_url} kept failing ({reason}, "
                          f"{self.max_retries + 1} tries); wait and rerun (finished pairs are "
                          "cached) or check the server.")

    def check(self):
        """Quick probe of the URL (GET /models, check_timeout seconds, no retry). Returns the
        served model ids, or None when the server answers but does not list them; raises
        JudgeError when nothing answers or the key is refused."""
        import openai

        client = self._client.with_options(timeout=self.check_timeout, max_retries=0)
        try:
            return [m.id for m in client.models.list().data]
        except openai.APIConnectionError as err:
            raise self._fatal(err) from None
        except openai.APIStatusError as err:
            if err.status_code in (401, 403):
                raise self._fatal(err) from None
            return None  # it answered: /models is optional for OpenAI-compatible servers
        except (ValueError, TypeError, AttributeError):
            return None

    def complete(self, messages):
        """One chat completion at temperature 0: the reply's text. Transient failures are retried
        with backoff; anything else, or too many, raises JudgeError."""
        import openai

        for attempt in range(self.max_retries + 1):
            with self._lock:
                self.calls += 1
            try:
                response = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=0,
                    max_tokens=self.max_tokens)
                text = _reply_text(response)
            except openai.APIError as err:
                if not _retryable(err) or attempt == self.max_retries:
                    raise self._fatal(err) from None
                wait = min(self.backoff * 2 ** attempt, self.max_backoff)
                time.sleep(min(_retry_after(err) or wait, self.max_backoff))
                continue
            except (ValueError, TypeError, KeyError) as err:  # a 200 that is no chat completion
                raise JudgeError(f"the judge at {self.base_url} answered, but not with a chat "
                                 f"completion ({err}); check that --judge_url is an OpenAI-"
                                 "compatible /v1 URL.") from None
            usage = getattr(response, "usage", None)
            with self._lock:
                self.prompt_tokens += getattr(usage, "prompt_tokens", 0) or 0
                self.completion_tokens += getattr(usage, "completion_tokens", 0) or 0
            return text


def judge_once(client, criterion, prompt, answer_a, answer_b):
    """Ask for the two scores of one order, with up to client.parse_retries reminders after an
    unreadable reply. Returns {'status': 'parsed' | 'unparsed', 'scores', 'replies'}."""
    messages = render_messages(criterion, prompt, answer_a, answer_b)
    replies = []
    for _ in range(client.parse_retries + 1):
        reply = client.complete(messages)
        replies.append(reply)
        scores = parse_scores(reply)
        if scores is not None:
            return {"status": "parsed", "scores": list(scores), "replies": replies}
        messages = messages + [{"role": "assistant", "content": reply},
                               {"role": "user", "content": judge_prompts.REMINDER}]
    return {"status": "unparsed", "scores": None, "replies": replies}
