"""The remote backend (`engineUrl`) end to end, against a real engine: llama.cpp's server serving
the f32 GGUF that `foresight export` wrote from models/default (engine.py). Neovim shows the same ghost
text through the engine as through the local model; an engine killed mid-session costs
suggestions only while it is down, and the server keeps running."""
import os

import pytest

from conftest import ROOT, foresight_bin
from engine import LlamaServer, export_gguf, llama_python
from rawclient import RawServer
from test_nvim import run_nvim

DEFAULT = ROOT / "models/default"
# Ends in a line whose completion the default model writes in plain code.
SAMPLE = ("def mean(values):\n    total = sum(values)\n    return total / len(values)\n\n\n"
          "def variance(values):\n    m = mean(values)\n    return sum((v - m) ** 2 for v in values) / len(\n")
SETTINGS = {"lines": "single", "maxTokens": 12, "resultCache": False}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    python = llama_python()
    tmp = tmp_path_factory.mktemp("engine")
    gguf = export_gguf(DEFAULT, tmp / "default-f32.gguf")
    server = LlamaServer(python, gguf, n_ctx=512, log=tmp / "llama.log").start()
    yield server
    server.kill()


def completions_served(engine) -> int:
    """Completion requests the engine has answered (its access log)."""
    return engine.log.read_text(errors="replace").count("POST /v1/completions")


@pytest.mark.skipif(os.environ.get("FORESIGHT_SKIP_NVIM") == "1", reason="FORESIGHT_SKIP_NVIM=1")
def test_neovim_shows_the_same_ghost_text_through_the_remote_engine(tmp_path, engine):
    sample = tmp_path / "sample.py"
    sample.write_text(SAMPLE)
    local = run_nvim(sample, DEFAULT, {"maxTokens": 12})
    before = completions_served(engine)
    remote = run_nvim(sample, DEFAULT, {"maxTokens": 12, "engineUrl": engine.url})
    assert completions_served(engine) > before, "the suggestion did not come through the engine"
    assert remote == local and local.strip('"'), (local, remote)


def test_an_engine_killed_mid_session_costs_suggestions_only_while_it_is_down(engine):
    s = RawServer([foresight_bin(), "serve", "--model", str(DEFAULT)])
    try:
        s.initialize(("utf-16",), dict(SETTINGS, engineUrl=engine.url))
        assert s.stats()["model"]["engine"] == engine.url + "/v1/completions"
        uri = "file:///variance.py"
        s.open(uri, SAMPLE)
        line, character = SAMPLE.count("\n") - 1, len(SAMPLE.splitlines()[-1])
        first = s.inline(uri, line, character)
        items = first["result"]["items"]
        assert len(items) == 1 and items[0]["insertText"].strip(), first

        engine.kill()
        down = s.inline(uri, line, character)
        assert "error" not in down, down
        assert down["result"] in (None, {"items": []}) or down["result"]["items"] == [], down
        # The log message may follow the response it belongs to: wait for it.
        s.notification(lambda n: n["method"] == "window/logMessage"
                       and "remote engine" in n["params"]["message"]
                       and "request failed" in n["params"]["message"])
        assert s.stats()["failed"] == 1

        engine.start()
        again = s.inline(uri, line, character)
        assert again["result"]["items"] == items, (again, first)
        assert s.close() == 0
    finally:
        s.kill()


def test_an_engine_down_at_start_is_reported_then_used_once_it_is_up(engine, tmp_path):
    late = LlamaServer(engine.python, engine.gguf, engine.n_ctx, tmp_path / "late.log")  # not started
    s = RawServer([foresight_bin(), "serve", "--model", str(DEFAULT)])
    try:
        s.initialize(("utf-16",), dict(SETTINGS, engineUrl=late.url))
        s.notification(lambda n: n["method"] == "window/showMessage" and n["params"]["type"] == 2
                       and "may be down" in n["params"]["message"] and late.url in n["params"]["message"])
        uri = "file:///variance.py"
        s.open(uri, SAMPLE)
        line, character = SAMPLE.count("\n") - 1, len(SAMPLE.splitlines()[-1])
        assert s.inline(uri, line, character)["result"]["items"] == []
        late.start()
        items = s.inline(uri, line, character)["result"]["items"]
        assert len(items) == 1 and items[0]["insertText"].strip(), items
        assert s.close() == 0
    finally:
        s.kill()
        late.kill()
