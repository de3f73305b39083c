"""llama.cpp's OpenAI-compatible server (llama-cpp-python's, from scripts/install_llama_cpp.sh)
serving the GGUF that `foresight export` writes from a model directory: the real remote engine
of the remote-backend tests. Missing llama.cpp fails those tests, unless
FORESIGHT_ALLOW_MISSING_LLAMA=1 says the developer knowingly runs without it (they are skipped)."""
import os
import pathlib
import socket
import subprocess
import time

import pytest

from conftest import ROOT, foresight_bin

SERVER = ROOT / "tests/fixtures/llama_server.py"
START_TIMEOUT = 180  # seconds: the first start imports the server stack and maps the model


def llama_python() -> str:
    r = subprocess.run(["bash", str(ROOT / "scripts/install_llama_cpp.sh")], capture_output=True, text=True)
    last = (r.stdout.strip().splitlines() or [""])[-1]
    if r.returncode == 0 and last.startswith("python="):
        return last[len("python="):]
    why = f"scripts/install_llama_cpp.sh failed ({r.returncode}): {r.stdout}\n{r.stderr}"
    if os.environ.get("FORESIGHT_ALLOW_MISSING_LLAMA") == "1":
        pytest.skip(f"FORESIGHT_ALLOW_MISSING_LLAMA=1: {why}")
    raise AssertionError(why + "\nset FORESIGHT_ALLOW_MISSING_LLAMA=1 to skip the remote-engine tests knowingly")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_gguf(model_dir, out: pathlib.Path, dtype: str = "f32") -> pathlib.Path:
    """f32 by default: these tests are of the path through the engine, not of f16 rounding (which
    tests/gguf_export.rs measures, and which can flip a near-tie between two tokens)."""
    subprocess.run([foresight_bin(), "export", str(model_dir), "--to", "gguf", str(out), "--dtype", dtype],
                   check=True, capture_output=True)
    return out


class LlamaServer:
    """One llama.cpp server process on a fixed port: `start()` again after `kill()` restarts it
    on the same port, as an engine that crashed and came back."""

    def __init__(self, python: str, gguf: pathlib.Path, n_ctx: int, log: pathlib.Path):
        self.python, self.gguf, self.n_ctx, self.log = python, gguf, n_ctx, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        # One thread, an f32 KV cache, no flash attention: llama.cpp's path closest to Foresight's.
        cmd = [self.python, str(SERVER), "--model", str(self.gguf), "--host", "127.0.0.1", "--port", str(self.port),
               "--n_ctx", str(self.n_ctx), "--n_threads", "1", "--type_k", "0", "--type_v", "0", "--flash_attn", "false"]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"the llama.cpp server exited ({self.proc.returncode}); log: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the llama.cpp server did not listen in {START_TIMEOUT} s")
            time.sleep(0.1)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
