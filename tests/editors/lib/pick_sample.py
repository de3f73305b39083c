#!/usr/bin/env python3
"""Chooses the buffer that the editor tests type into.

The test model has random weights, so most of what it suggests is control characters and stray
bytes, which no terminal editor shows faithfully. This script talks to `foresight serve` directly
(plain JSON-RPC over stdio through tests/lsp/rawclient.py, standard library only), offers it candidate buffers in turn, and writes
the first one whose suggestion is plain printable ASCII (3 or more characters, preferably a word
and then punctuation) to OUT_FILE, with
the suggestion beside it in OUT_FILE.expected.json. The editor tests still ask the server again
from inside each editor; this suggestion is only what they should find.

usage: pick_sample.py FORESIGHT_BIN MODEL_DIR CONFIG_JSON OUT_FILE
"""
import json
import os
import pathlib
import re
import sys
import threading

# The one Python JSON-RPC client of the tests (Content-Length framing and all).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "lsp"))
from rawclient import RawServer  # noqa: E402

# Letters, digits and the punctuation that no editor, terminal or shell treats specially.
PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_+\-*/=.,:;()\[\]{}<>!?%&|^@# ]*[A-Za-z0-9_+\-*/=.,:;()\[\]{}<>!?%&|^@#]$")


def score(s):
    """2: plain text with a word and then punctuation (so "accept a word" takes a part of it);
    1: plain text; 0: unusable."""
    if len(s) < 3 or not PLAIN.match(s):
        return 0
    return 2 if re.match(r"^[A-Za-z0-9_]+[^A-Za-z0-9_]", s) else 1


def candidates():
    names = ["total", "count", "value", "result", "items", "size", "name", "data", "index", "key"]
    ops = ["+", "-", "*", "(", "[", ".", "=", ",", " if ", " and "]
    for i, n in enumerate(names):
        for j, op in enumerate(ops):
            for k in range(3):
                head = f"def compute_{n}_{k}(a, b):\n    {n} = a{op}b\n"
                yield head + f"    return {n}{op}"


def result(c, method, params):
    """The result of a request; the server's error fails the pick."""
    r = c.request(method, params)
    if "error" in r:
        raise RuntimeError(f"{method}: {r['error']}")
    return r.get("result")


def main():
    exe, model, config, out = sys.argv[1:5]
    opts = json.loads(config)
    c = RawServer([exe, "serve", "--model", model])
    timer = threading.Timer(300, c.kill)
    timer.start()
    try:
        result(c, "initialize", {"processId": os.getpid(), "rootUri": None, "capabilities": {}, "initializationOptions": opts})
        c.notify("initialized", {})
        best = None
        for n, body in enumerate(candidates()):
            text = body + "\n"
            uri = f"file:///tmp/foresight-pick-{n}.py"
            c.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}})
            lines = body.split("\n")
            pos = {"line": len(lines) - 1, "character": len(lines[-1])}
            res = None
            for _ in range(100):  # the model loads in the background: the first answers may be empty
                res = result(c, "textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "position": pos, "context": {"triggerKind": 1}})
                if res and res.get("items") or n > 0:
                    break
                import time; time.sleep(0.1)
            c.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
            items = (res or {}).get("items") or []
            if not items:
                continue
            s = items[0]["insertText"]
            sc = score(s)
            if sc and (best is None or sc > best[0]):
                best = (sc, n, text, pos, s)
                if sc == 2:
                    break
        if best is None:
            print("pick_sample: no candidate gave a plain printable suggestion", file=sys.stderr)
            return 1
        _, n, text, pos, s = best
        with open(out, "w") as f:
            f.write(text)
        with open(out + ".expected.json", "w") as f:
            json.dump({"line": pos["line"], "character": pos["character"], "suggestion": s}, f)
        print(f"pick_sample: candidate {n}: {text.splitlines()[-1]!r} -> {s!r}")
        return 0
    finally:
        timer.cancel()
        try:
            c.request("shutdown", None)
            c.notify("exit", None)
        except Exception:
            pass
        c.kill()


if __name__ == "__main__":
    sys.exit(main())
