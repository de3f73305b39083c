"""Robustness: the server stays up and correct under bad input and load. Each test ends by
checking that the server still answers a real completion request, then exits cleanly.
Driven with a bare JSON-RPC client (rawclient.py), since a proper client library would never
send most of this."""
import os
import time

import pytest

from conftest import MODEL, foresight_bin, server_command
from rawclient import TIMEOUT, RawServer

GOOD_TEXT = "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"


@pytest.fixture
def server():
    s = RawServer(server_command())
    s.initialize(("utf-16",), {"lines": "multi"})
    yield s
    s.kill()


def one_suggestion_at(r, line, character):
    """`r` is an inline completion response with exactly one non-blank item at (line, character)."""
    assert "result" in r, r
    items = r["result"]["items"]
    assert len(items) == 1, r
    assert items[0]["range"]["start"] == {"line": line, "character": character}, r
    assert items[0]["range"]["end"] == items[0]["range"]["start"], r
    assert items[0]["insertText"].strip(), r
    return items[0]


def wait_for_stats(s: RawServer, ready, what):
    """Polls foresight/stats (answered without queueing behind the worker) until `ready(stats)`;
    a wait bounded by rawclient.TIMEOUT that fails with `what` and the last counters."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        stats = s.stats()
        if ready(stats):
            return stats
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (waited {TIMEOUT} s): {stats}")
        time.sleep(0.002)


def hold(s: RawServer, closed: bool):
    """Closes or opens the worker's hold gate (foresight/debugHold, a --test-hooks method)."""
    r = s.request("foresight/debugHold", {"closed": closed})
    assert r.get("result") is closed, r


def still_answers(s: RawServer):
    """A real completion still works, then shutdown/exit ends the process with code 0."""
    s.open("file:///alive.py", GOOD_TEXT)
    r = s.inline("file:///alive.py", 4, 0)
    assert "result" in r, r
    assert len(r["result"]["items"]) == 1 and r["result"]["items"][0]["insertText"].strip(), r
    assert s.close() == 0


def test_malformed_json_rpc(server):
    s = server
    s.send_body(b'{"jsonrpc": "2.0", "id": 1, "method": ')           # truncated JSON
    s.send_body(b"\xff\xfe not utf-8 at all")                          # not even text
    s.send_body(b'[{"jsonrpc": "2.0", "id": 2, "method": "x"}]')       # a batch
    s.send_body(b'{"jsonrpc": "1.0", "id": 3, "method": "x"}')         # wrong version
    s.send_body(b'{"jsonrpc": "2.0", "id": 4, "method": 17}')          # method not a string
    s.send_bytes(b"Content-Type: nothing\r\n\r\n")                     # no Content-Length
    s.send_bytes(b"Content-Length: banana\r\n\r\n")                    # bad Content-Length
    errors = []
    for _ in range(100):  # bounded: the server's own notifications are skipped, not awaited forever
        if len(errors) == 7:
            break
        m = s.next_message()
        if "method" not in m:
            errors.append(m)
    codes = sorted(e["error"]["code"] for e in errors)
    assert codes == [-32700, -32700, -32700, -32700, -32600, -32600, -32600], errors
    assert {e["id"] for e in errors if e["error"]["code"] == -32600} == {None, 3, 4}
    still_answers(s)


def test_unknown_methods(server):
    s = server
    r = s.request("foresight/noSuchMethod", {"x": 1})
    assert r["error"]["code"] == -32601, r
    s.notify("$/noSuchNotification", {"x": 1})
    s.notify("noSuchNotification")
    r = s.request("textDocument/hover", {"textDocument": {"uri": "file:///x.py"}, "position": {"line": 0, "character": 0}})
    assert r["error"]["code"] == -32601, r  # not implemented: answered with an error, not silence
    still_answers(s)


def test_requests_for_documents_never_opened(server):
    s = server
    r = s.inline("file:///never/opened.py", 3, 7)
    assert r["result"] == {"items": []}, r
    r = s.request("textDocument/completion", {"textDocument": {"uri": "file:///never/opened.py"}, "position": {"line": 0, "character": 0}})
    assert r["result"]["items"] == [], r
    s.change("file:///never/opened.py", 2, (0, 0), (0, 0), "x")   # didChange for it: ignored
    s.notify("textDocument/didClose", {"textDocument": {"uri": "file:///never/opened.py"}})
    r = s.request("textDocument/inlineCompletion", {"textDocument": {"uri": "not a uri at all"}, "position": {"line": 0, "character": 0}, "context": {"triggerKind": 1}})
    assert r["error"]["code"] == -32602, r  # not a URI: invalid params
    r = s.request("textDocument/inlineCompletion", {"bogus": True})
    assert r["error"]["code"] == -32602, r  # invalid params
    still_answers(s)


def test_positions_past_the_end_and_inside_a_surrogate_pair(server):
    s = server
    s.open("file:///p.py", "a🦀b\nxy")
    # Inside the crab's surrogate pair (UTF-16 column 2): clamped to the crab's start (column 1).
    one_suggestion_at(s.inline("file:///p.py", 0, 2), 0, 1)
    # Past the end of the line: the end of that line.
    one_suggestion_at(s.inline("file:///p.py", 0, 999), 0, 4)
    # Past the end of the document: the end of the document.
    one_suggestion_at(s.inline("file:///p.py", 99, 5), 1, 2)
    # An edit with a range past the end appends; one inside the pair starts at the crab.
    s.change("file:///p.py", 2, (50, 0), (60, 3), "!")
    s.change("file:///p.py", 3, (0, 2), (0, 3), "")      # removes the crab: "ab\nxy!"
    one_suggestion_at(s.inline("file:///p.py", 0, 999), 0, 2)
    one_suggestion_at(s.inline("file:///p.py", 1, 999), 1, 3)
    inline = one_suggestion_at(s.inline("file:///p.py", 0, 1), 0, 1)
    r = s.request("textDocument/completion", {"textDocument": {"uri": "file:///p.py"}, "position": {"line": 0, "character": 1}})
    items = r["result"]["items"]
    assert len(items) == 1, r
    # The word before the cursor ("a") is replaced by itself plus the same suggestion.
    assert items[0]["textEdit"] == {"range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 1}},
                                    "newText": "a" + inline["insertText"]}, r
    # Negative numbers are not positions: an invalid-params error, not a crash.
    r = s.request("textDocument/inlineCompletion", s.inline_params("file:///p.py", -1, -1))
    assert r["error"]["code"] == -32602, r
    still_answers(s)


def test_ten_megabyte_document(server):
    s = server
    line = "    value = compute(alpha, beta) + 1  # é 🦀\n"
    text = "def big():\n" + line * (10 * 1024 * 1024 // len(line.encode()))
    assert len(text.encode()) > 10_000_000
    s.open("file:///big.py", text)
    n_lines = text.count("\n")
    one_suggestion_at(s.inline("file:///big.py", n_lines, 0), n_lines, 0)
    one_suggestion_at(s.inline("file:///big.py", n_lines // 2, 10), n_lines // 2, 10)
    s.change("file:///big.py", 2, (n_lines // 2, 0), (n_lines // 2, 0), "x = 1\n")
    one_suggestion_at(s.inline("file:///big.py", n_lines // 2, 5), n_lines // 2, 5)
    # A whole 10 MB line too.
    s.open("file:///oneline.js", "x" * 10_000_000, "javascript")
    one_suggestion_at(s.inline("file:///oneline.js", 0, 5_000_000), 0, 5_000_000)
    still_answers(s)


def test_binary_content(server):
    s = server
    binary = "".join(chr(c) for c in range(0, 32)) + "\x00\x00\ufffd\x7f" * 100
    s.open("file:///bin.dat", binary, "plaintext")
    r = s.inline("file:///bin.dat", 0, 10)
    assert r["result"] == {"items": []}, r  # no suggestion inside binary content
    s.change("file:///bin.dat", 2, (0, 0), (0, 0), "\x00\x01")
    r = s.inline("file:///bin.dat", 0, 2)
    assert r["result"] == {"items": []}, r
    still_answers(s)


def test_edits_arriving_during_a_generation(server):
    s = server
    s.open("file:///e.py", GOOD_TEXT)
    hold(s, True)  # jobs the worker takes wait before generating until the gate opens
    before = s.stats()
    first = s.send_request("textDocument/inlineCompletion", s.inline_params("file:///e.py", 4, 0))
    wait_for_stats(s, lambda st: st["completions"] == before["completions"] + 1, "the first job never started")
    # The first job is running (held): an edit and a newer request arrive.
    s.change("file:///e.py", 2, (4, 0), (4, 0), "y")
    second = s.send_request("textDocument/inlineCompletion", s.inline_params("file:///e.py", 4, 1))
    r1 = s.response(first)
    assert r1["result"] == {"items": []}, ("the older request is superseded and its text is stale", r1)
    mid = wait_for_stats(s, lambda st: st["completions"] == before["completions"] + 2, "the second job never started")
    assert mid["cancelled"] == before["cancelled"] + 1, (before, mid)
    assert mid["modelCalls"] == before["modelCalls"], ("the superseded job never reached the model", before, mid)
    hold(s, False)
    one_suggestion_at(s.response(second), 4, 1)  # after the edit: "y|"
    after = s.stats()
    assert after["cancelled"] == before["cancelled"] + 1 and after["modelCalls"] == before["modelCalls"] + 1, (before, after)
    still_answers(s)


def test_an_edit_during_a_generation_makes_its_result_stale(server):
    s = server
    s.open("file:///stale.py", GOOD_TEXT)
    hold(s, True)
    before = s.stats()
    first = s.send_request("textDocument/inlineCompletion", s.inline_params("file:///stale.py", 4, 0))
    wait_for_stats(s, lambda st: st["completions"] == before["completions"] + 1, "the job never started")
    # An edit, and no newer request: the job is not cancelled, it generates for the old text.
    s.change("file:///stale.py", 2, (0, 0), (0, 0), "# edited\n")
    hold(s, False)
    r1 = s.response(first)
    assert r1["result"] == {"items": []}, ("a suggestion for text that has changed is not shown", r1)
    after = s.stats()
    assert after["cancelled"] == before["cancelled"] and after["modelCalls"] == before["modelCalls"] + 1, (before, after)
    still_answers(s)


def test_a_burst_of_a_thousand_requests(server):
    s = server
    s.notify("workspace/didChangeConfiguration", {"settings": {"maxTokens": 8}})
    s.open("file:///burst.py", GOOD_TEXT)
    # The gate holds the first job, so every request but the newest is superseded before its job
    # can generate: the outcome is exact, however fast the worker is.
    hold(s, True)
    before = s.stats()
    ids = [s.send_request("textDocument/inlineCompletion", s.inline_params("file:///burst.py", 4, 0)) for _ in range(1000)]
    # Every job reached the worker; all but the newest ended cancelled, the newest waits at the gate.
    mid = wait_for_stats(s, lambda st: st["completions"] == before["completions"] + 1000, "not every job reached the worker")
    assert mid["cancelled"] == before["cancelled"] + 999, (before, mid)
    hold(s, False)
    responses = [s.response(i) for i in ids]
    assert len(responses) == 1000
    # Superseded requests show nothing; the newest one gets the suggestion.
    for r in responses[:-1]:
        assert r["result"] == {"items": []}, r
    one_suggestion_at(responses[-1], 4, 0)
    after = s.stats()
    assert after["completions"] == before["completions"] + 1000, (before, after)  # each got one answer
    assert after["cancelled"] == before["cancelled"] + 999, (before, after)
    assert after["modelCalls"] == before["modelCalls"] + 1, (before, after)
    still_answers(s)


def test_a_panic_inside_a_request_is_contained(server):
    s = server
    r = s.request("foresight/debugPanic", {})
    assert r["error"]["code"] == -32603 and "panic" in r["error"]["message"], r
    r = s.request("foresight/debugPanic", {"where": "worker"})
    assert r["result"] == "sent"
    s.open("file:///after.py", GOOD_TEXT)
    r = s.inline("file:///after.py", 4, 0)
    assert len(r["result"]["items"]) == 1, r
    assert s.stats()["panics"] == 1
    still_answers(s)


def test_test_hooks_exist_only_when_asked_for():
    env = {k: v for k, v in os.environ.items() if k != "FORESIGHT_TEST_HOOKS"}
    s = RawServer([foresight_bin(), "serve", "--model", MODEL], env=env)
    try:
        s.initialize()
        for method, params in [("foresight/debugHold", {"closed": True}), ("foresight/debugPanic", {})]:
            r = s.request(method, params)
            assert r.get("error", {}).get("code") == -32601, (method, r)  # method not found
        still_answers(s)
    finally:
        s.kill()


def test_requests_before_initialize_and_exit_without_shutdown():
    s = RawServer(server_command())
    try:
        r = s.request("textDocument/inlineCompletion", s.inline_params("file:///x.py", 0, 0))
        assert r["error"]["code"] == -32002, r  # server not initialized
        s.initialize()
        s.notify("exit")
        assert s.proc.wait(timeout=60) == 1  # exit without shutdown: code 1, as the spec says
    finally:
        s.kill()


def test_end_of_input_ends_the_server():
    s = RawServer(server_command())
    try:
        s.initialize()
        s.proc.stdin.close()
        assert s.proc.wait(timeout=60) == 1
    finally:
        s.kill()
