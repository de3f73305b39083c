"""A bare JSON-RPC client over a server process's stdio, for tests that must send what a proper
client library never would (malformed frames, bursts without waiting, raw bytes)."""
import json
import queue
import subprocess
import threading
import time

TIMEOUT = 120  # seconds; a hang fails the test instead of blocking CI forever


class RawServer:
    def __init__(self, cmd, env=None):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.inbox = queue.Queue()
        self.pending = {}
        self.notifications = []
        self.next_id = 1
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        out = self.proc.stdout
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    self.inbox.put(None)
                    return
                line = line.strip()
                if not line:
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            self.inbox.put(json.loads(out.read(length)))

    def send_bytes(self, data: bytes):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send_body(self, body: bytes):
        self.send_bytes(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def send(self, msg):
        self.send_body(json.dumps(msg).encode("utf-8"))

    def notify(self, method, params=None):
        self.send({"jsonrpc": "2.0", "method": method, "params": params if params is not None else {}})

    def send_request(self, method, params=None):
        rid = self.next_id
        self.next_id += 1
        msg = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return rid

    def next_message(self, timeout=TIMEOUT):
        try:
            msg = self.inbox.get(timeout=max(timeout, 0))
        except queue.Empty:
            raise TimeoutError(f"no message from the server in {timeout:.0f} s") from None
        if msg is None:
            raise EOFError("the server closed its output")
        return msg

    def response(self, rid):
        """Waits for the response with id `rid` (keeping others), answering server requests; at
        most TIMEOUT seconds in all, however many other messages arrive meanwhile."""
        self._read_until(lambda: rid in self.pending, f"no response to request {rid}")
        return self.pending.pop(rid)

    def notification(self, matches):
        """Waits for a notification for which `matches(msg)` holds, received before or after this
        call (the server may send a notification after the response it belongs to); at most
        TIMEOUT seconds."""
        found = lambda: next((n for n in self.notifications if matches(n)), None)
        self._read_until(lambda: found() is not None, "no such notification")
        return found()

    def _read_until(self, done, what):
        """Reads messages until `done()`, answering server requests, keeping notifications and
        responses; at most TIMEOUT seconds in all."""
        deadline = time.monotonic() + TIMEOUT
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{what} in {TIMEOUT} s")
            msg = self.next_message(remaining)
            if "method" in msg:
                if "id" in msg:
                    self.send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
                else:
                    self.notifications.append(msg)
                continue
            self.pending[msg.get("id")] = msg

    def request(self, method, params=None):
        return self.response(self.send_request(method, params))

    def initialize(self, encodings=("utf-16",), options=None):
        r = self.request("initialize", {"processId": None, "rootUri": None,
                                        "capabilities": {"general": {"positionEncodings": list(encodings)}},
                                        "initializationOptions": options or {}})
        self.notify("initialized", {})
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.request("foresight/stats")["result"]["model"] is not None:
                return r
            time.sleep(0.01)
        raise AssertionError(f"the model did not load in {TIMEOUT} s")

    def open(self, uri, text, language="python", version=1):
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language, "version": version, "text": text}})

    def change(self, uri, version, start, end, text):
        self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                               "contentChanges": [{"range": {"start": {"line": start[0], "character": start[1]},
                                                                             "end": {"line": end[0], "character": end[1]}}, "text": text}]})

    def inline_params(self, uri, line, character):
        return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}, "context": {"triggerKind": 2}}

    def inline(self, uri, line, character):
        return self.request("textDocument/inlineCompletion", self.inline_params(uri, line, character))

    def stats(self):
        return self.request("foresight/stats")["result"]

    def close(self):
        """shutdown + exit; returns the exit code."""
        r = self.request("shutdown")
        assert "error" not in r, r
        self.notify("exit")
        return self.proc.wait(timeout=TIMEOUT)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
