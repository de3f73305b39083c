"""End to end with headless Neovim 0.12 (Debian sid's build, installed by
scripts/install_nvim.sh): ghost text from `foresight serve` appears and is accepted.
FORESIGHT_NVIM names the nvim to run (default: the install script's wrapper). Without it the test
fails and says how to install it; set FORESIGHT_SKIP_NVIM=1 to skip it deliberately."""
import json
import os
import pathlib
import subprocess

import pytest

from conftest import MODEL, foresight_bin

HERE = pathlib.Path(__file__).resolve().parent
CACHE = pathlib.Path(os.environ.get("FORESIGHT_CACHE", pathlib.Path.home() / ".cache/foresight"))
NVIM = os.environ.get("FORESIGHT_NVIM", str(CACHE / "bin/nvim-0.12"))


def run_nvim(sample: pathlib.Path, model, init_options=None) -> str:
    """Runs nvim_ghost.lua on `sample` with `foresight serve --model MODEL` and the extra
    initializationOptions; asserts it passed and returns the suggestion it showed and accepted."""
    assert os.access(NVIM, os.X_OK), f"no Neovim 0.12 at {NVIM}: run scripts/install_nvim.sh"
    env = dict(os.environ, FORESIGHT_BIN=foresight_bin(), FORESIGHT_MODEL=str(model), FORESIGHT_SAMPLE=str(sample),
               FORESIGHT_INIT_OPTIONS=json.dumps(init_options or {}))
    r = subprocess.run([NVIM, "--headless", "-u", "NONE", "-i", "NONE", "-S", str(HERE / "nvim_ghost.lua")],
                       env=env, capture_output=True, text=True, timeout=300, cwd=sample.parent)
    print(r.stdout, r.stderr)
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr
    return next(line for line in r.stdout.splitlines() if line.startswith("suggestion: "))[len("suggestion: "):]


@pytest.mark.skipif(os.environ.get("FORESIGHT_SKIP_NVIM") == "1", reason="FORESIGHT_SKIP_NVIM=1")
def test_ghost_text_appears_and_is_accepted(tmp_path):
    sample = tmp_path / "sample.py"
    # A context where the tiny fixture model's 4-token suggestion is printable ASCII.
    sample.write_text("def f(a, b):\n    return a + b\n\nx = f56(\n")
    run_nvim(sample, MODEL)
