#!/usr/bin/env python3
"""Helix through tmux, against the real server, configured by editors/helix/languages.toml.

Opens the sample at the end of its last line, asks for completion (Ctrl-x) until the menu shows the
suggestion that the server gives for this buffer (FORESIGHT_SAMPLE.expected.json, fetched from the
server over LSP by pick_sample.py), accepts it, writes the file and checks what was inserted.
Environment: FORESIGHT_BIN, FORESIGHT_MODEL, FORESIGHT_SAMPLE, FORESIGHT_REPO, FORESIGHT_CONFIG,
HX (the hx command), WORK (a scratch folder).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

passes = failures = 0


def check(name, ok, detail=""):
    global passes, failures
    if ok:
        passes += 1
        print(f"PASS {name}", flush=True)
    else:
        failures += 1
        print(f"FAIL {name}: {detail}", flush=True)
    return ok


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v))


def main():
    env = os.environ
    repo, work, hx = env["FORESIGHT_REPO"], env["WORK"], env["HX"]
    sample_src = env["FORESIGHT_SAMPLE"]
    expected = json.load(open(sample_src + ".expected.json"))
    want = expected["suggestion"]

    # Helix's user config: the project's languages.toml, pointed at this build and model.
    cfg_home = os.path.join(work, "helix-config")
    os.makedirs(os.path.join(cfg_home, "helix"), exist_ok=True)
    toml = open(os.path.join(repo, "editors/helix/languages.toml")).read()
    settings = {"model": env["FORESIGHT_MODEL"], **json.loads(env.get("FORESIGHT_CONFIG") or "{}")}
    inline = "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in settings.items()) + " }"
    toml, n1 = re.subn(r'(?m)^command = "foresight"$', f"command = {json.dumps(env['FORESIGHT_BIN'])}", toml)
    toml, n2 = re.subn(r"(?m)^config = \{.*$", f"config = {inline}", toml)
    check("languages.toml has the command and config lines the README describes", n1 == 1 and n2 == 1, toml)
    open(os.path.join(cfg_home, "helix", "languages.toml"), "w").write(toml)
    open(os.path.join(cfg_home, "helix", "config.toml"), "w").write('[editor]\nauto-completion = false\n')

    sample = os.path.join(work, "helix_sample.py")
    shutil.copyfile(sample_src, sample)
    original = open(sample).read()
    line_no = expected["line"] + 1
    line = original.split("\n")[expected["line"]]

    sock = ["tmux", "-L", f"foresight-e2e-{os.getpid()}"]
    run_env = dict(env, XDG_CONFIG_HOME=cfg_home, TERM="xterm-256color", COLORTERM="truecolor")
    log = os.path.join(work, "helix.log")
    cmd = f"{hx} --log {log} {sample}:{line_no}"
    subprocess.run(sock + ["new-session", "-d", "-x", "120", "-y", "30", cmd], env=run_env, check=True)

    def screen():
        return subprocess.run(sock + ["capture-pane", "-p"], capture_output=True, text=True).stdout

    def keys(*k):
        subprocess.run(sock + ["send-keys", *k], check=True)

    def wait(seconds, pred):
        deadline = time.time() + seconds
        while True:
            v = pred()
            if v or time.time() >= deadline:
                return v
            time.sleep(0.2)

    try:
        check("helix starts and shows the file", wait(30, lambda: line.strip() in screen()), screen())
        # Ask for completion until the menu shows the suggestion (the model loads in the background).
        shown = None
        deadline = time.time() + 120
        while time.time() < deadline and not shown:
            keys("Escape")
            keys("A")                      # append at the end of the line
            time.sleep(0.3)
            keys("C-x")                    # ask for completion
            shown = wait(5, lambda: want in screen().split("\n", line_no)[-1] and screen())
        check("the completion menu shows the server's suggestion", shown, screen())
        if shown:
            print("screen with the menu:\n" + "\n".join(l.rstrip() for l in shown.splitlines() if l.strip()), flush=True)
            menu_lines = [l for l in shown.splitlines() if want in l and l.strip() != (line + want).strip()]
            check("the suggestion is a menu entry (not only text in the buffer)", menu_lines, shown)
        keys("C-n")                        # select the (only) entry
        time.sleep(0.3)
        keys("Enter")                      # and accept it
        time.sleep(0.5)
        keys("Escape")
        keys(":w", "Enter")
        # Helix saves through a temporary file and a rename: between the two the path may not
        # exist, which is "not saved yet", not a failure.
        def saved():
            try:
                with open(sample) as f:
                    text = f.read()
            except FileNotFoundError:
                return None
            return text if text != original else None

        got = wait(10, saved) or open(sample).read()
        want_text = original.replace(line, line + want, 1)
        check("accepting inserts the suggestion", got == want_text, f"file is {got!r}, want {want_text!r}")
        keys(":q!", "Enter")
    finally:
        subprocess.run(sock + ["kill-server"], capture_output=True)
    print(f"{passes} passed, {failures} failed")
    return 0 if failures == 0 and passes > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
