"""Shared fixtures for the LSP integration tests: the foresight binary and the tiny fixture model.

FORESIGHT_BIN points at the binary (default: the release build in CARGO_TARGET_DIR or target/).
FORESIGHT_MODEL points at a model directory (default: the tiny random-weights fixture model,
written once per session with `foresight tiny-model`).
"""
import os
import pathlib
import subprocess
import tempfile


ROOT = pathlib.Path(__file__).resolve().parents[2]


def foresight_bin() -> str:
    if os.environ.get("FORESIGHT_BIN"):
        return os.environ["FORESIGHT_BIN"]
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return str(target / "release" / "foresight")


def _model_dir() -> str:
    if os.environ.get("FORESIGHT_MODEL"):
        return os.environ["FORESIGHT_MODEL"]
    d = pathlib.Path(tempfile.mkdtemp(prefix="foresight-tiny-")) / "model"
    subprocess.run([foresight_bin(), "tiny-model", str(d)], check=True)
    return str(d)


# Written once when the tests are collected: pytest-lsp fixtures need the command up front.
MODEL = _model_dir()


def server_command(*extra: str):
    return [foresight_bin(), "serve", "--model", MODEL, "--test-hooks", *extra]
