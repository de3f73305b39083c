#!/usr/bin/env python3
"""Assemble the default model's training corpus offline, from what the package registries give.

Sources (all permissively licensed, pinned so the corpus is reproducible):
  - the Rust standard library (`rustup component add rust-src`), tests and benches left out;
  - `cargo vendor` of two fixed lists of MIT/Apache crates (each resolved on its own, so their pins
    cannot conflict), with their dependencies;
  - the Python standard library of the local interpreter, without its tests;
  - pure-Python wheels from PyPI (`pip download --no-deps --only-binary=:all:`).
Excluded on purpose: the dev set's sources (ripgrep and its workspace crates, click) and benchmark
data (HumanEval, MBPP and the like, which none of these sources carry; a name check guards it).
Also excluded: the candle crates (the held-out repository of the finetuning test). Exact duplicates
are removed (by SHA-256 of the content), then near-duplicates (another version of the same file, a
vendored copy: estimated Jaccard similarity of their 3-line shingles at least 0.8, by bottom-k MinHash),
and generated or minified files (a generated-code marker in the first lines, very long lines, or mostly
numeric tables). Writes OUT/files/<source>/... and OUT/manifest.json with each source's name, version,
license, file count and bytes, and what each filter removed.

Usage: scripts/build_corpus.py OUT_DIR
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

CRATES = {
    # name: exact version
    "serde": "1.0.219", "serde_json": "1.0.140", "regex": "1.11.1", "regex-syntax": "0.8.5",
    "regex-automata": "0.4.9", "aho-corasick": "1.1.3", "memchr": "2.7.4", "anyhow": "1.0.98",
    "thiserror": "2.0.12", "itertools": "0.14.0", "rand": "0.9.1", "rand_core": "0.9.3",
    "hashbrown": "0.15.3", "indexmap": "2.9.0", "bytes": "1.10.1", "log": "0.4.27",
    "smallvec": "1.15.0", "either": "1.15.0", "once_cell": "1.21.3", "tokio": "1.45.0",
    "futures-util": "0.3.31", "clap_builder": "4.5.38", "clap_lex": "0.7.4", "toml_edit": "0.22.26",
    "semver": "1.0.26", "url": "2.5.4", "unicode-width": "0.2.0", "crossbeam-channel": "0.5.15",
    "rayon-core": "1.12.1", "rayon": "1.10.0", "chrono": "0.4.41", "uuid": "1.16.0",
    "base64": "0.22.1", "tracing-core": "0.1.33", "tracing-subscriber": "0.3.19", "walkdir": "2.5.0",
    "tempfile": "3.20.0", "num-traits": "0.2.19", "parking_lot_core": "0.9.10", "lock_api": "0.4.12",
    "petgraph": "0.8.1", "nom": "8.0.0", "syn": "2.0.101", "quote": "1.0.40", "proc-macro2": "1.0.95",
}
CRATES_2 = {
    # the second list (2026-12-01): resolved apart from the first
    "arrayvec": "0.7.8", "async-trait": "0.1.92", "axum": "0.8.9", "bincode": "3.0.0", "bitflags": "2.13.2",
    "byteorder": "1.5.0", "camino": "1.2.6", "clap": "4.6.9", "codespan-reporting": "0.13.1",
    "crossbeam-deque": "0.8.8", "crossbeam-epoch": "0.9.21", "crossbeam-utils": "0.8.23", "csv": "1.4.0",
    "dashmap": "6.2.1", "env_logger": "0.11.12", "fs-err": "3.3.2", "futures-channel": "0.3.34",
    "futures-core": "0.3.34", "futures-executor": "0.3.34", "glob": "0.3.4", "heck": "0.5.0", "hex": "0.4.3",
    "http": "1.5.0", "humantime": "2.4.0", "hyper": "1.12.0", "indicatif": "0.18.6", "itoa": "1.0.19",
    "logos": "0.16.1", "lru": "0.19.1", "lsp-types": "0.97.0", "miette": "7.6.0", "mio": "1.2.5",
    "ndarray": "0.17.2", "notify": "8.2.2", "num-bigint": "0.5.1", "num-complex": "0.4.6",
    "parking_lot": "0.13.0", "pest": "2.9.6", "postcard": "1.2.0", "proptest": "1.12.0", "reqwest": "0.13.5",
    "ron": "0.12.3", "rowan": "0.17.0", "rusqlite": "0.43.0", "ryu": "1.0.23", "serde_derive": "1.0.229",
    "sha2": "0.11.1", "similar": "3.2.1", "slab": "0.4.12", "termcolor": "1.4.1", "textwrap": "0.16.4",
    "time": "0.3.55", "tokio-stream": "0.1.19", "tokio-util": "0.7.20", "toml": "1.2.2", "tower": "0.5.3",
    "tower-lsp": "0.20.0", "tracing": "0.1.44", "ureq": "3.5.2", "winnow": "1.0.5",
}
WHEELS = {
    "requests": "2.32.3", "attrs": "25.3.0", "idna": "3.10", "packaging": "25.0", "pyparsing": "3.2.3",
    "six": "1.17.0", "rich": "14.0.0", "pygments": "2.19.1", "more-itertools": "10.7.0",
    "sortedcontainers": "2.4.0", "toolz": "1.0.0", "boltons": "25.0.0", "jinja2": "3.1.6",
    "werkzeug": "3.1.3", "flask": "3.1.1", "itsdangerous": "2.2.0", "urllib3": "2.4.0",
    "certifi": "2025.4.26", "charset-normalizer": "3.4.2", "tomli": "2.2.1", "pluggy": "1.6.0",
    "typing-extensions": "4.13.2", "platformdirs": "4.3.8", "python-dateutil": "2.9.0.post0",
    "markdown": "3.8", "docutils": "0.21.2", "networkx": "3.4.2", "sympy": "1.14.0", "mpmath": "1.3.0",
    "pyyaml": None,  # not pure Python; listed to document that it is skipped
    # the second list (2026-12-01)
    "alembic": "1.20.1", "amqp": "5.4.2", "annotated-types": "0.8.0", "anyio": "4.16.0", "apscheduler": "3.11.3",
    "arrow": "1.4.0", "astroid": "4.3.4", "asttokens": "3.0.2", "beautifulsoup4": "4.15.0", "bleach": "6.4.0",
    "blinker": "1.9.0", "bottle": "0.13.4", "build": "1.6.1", "cachetools": "8.0.2", "cattrs": "26.2.1",
    "cloudpickle": "3.1.3", "colorama": "0.4.6", "dataclasses-json": "0.6.7", "decorator": "5.3.1",
    "deepdiff": "9.1.0", "dill": "0.4.1", "distlib": "0.4.4", "executing": "2.3.0", "fastapi": "0.165.0",
    "fastjsonschema": "2.22.3", "filelock": "4.3.1", "flake8": "7.5.0", "flit-core": "4.2.0",
    "freezegun": "1.5.5", "h11": "0.16.0", "h2": "4.4.1", "hatchling": "1.33.0", "hpack": "4.2.0",
    "html5lib": "1.1", "httpcore": "1.0.9", "httpx": "0.28.1", "humanize": "4.17.0", "hyperframe": "6.1.0",
    "importlib-metadata": "10.2.0", "inflect": "7.6.0", "iniconfig": "2.3.1", "invoke": "3.0.3",
    "jedi": "0.20.1", "jmespath": "1.1.0", "joblib": "1.6.0", "jsonpatch": "1.48", "jsonpointer": "3.12",
    "jsonschema": "4.26.0", "kombu": "5.7.0", "lark": "1.3.1", "loguru": "0.7.3", "lsprotocol": "2025.0.0",
    "mako": "1.4.3", "markdown-it-py": "4.3.0", "marshmallow": "4.4.0", "mccabe": "0.7.0", "mdurl": "0.1.2",
    "mistune": "3.4.0", "mock": "5.2.0", "nbformat": "5.11.1", "nox": "2026.10.20", "oauthlib": "4.0.1",
    "outcome": "1.3.0.post0", "paramiko": "5.1.0", "parso": "0.8.7", "pathspec": "1.1.1", "peewee": "4.5.3",
    "pexpect": "4.9.0", "ply": "3.11", "prompt-toolkit": "3.0.53", "ptyprocess": "0.7.0", "pyasn1": "0.6.5",
    "pycodestyle": "2.15.0", "pycparser": "3.12", "pydantic": "2.14.4", "pyflakes": "4.1.0", "pygls": "2.1.1",
    "pyjwt": "2.15.1", "pylint": "4.1.4", "pyproject-hooks": "1.3.3", "pytest": "9.2.0",
    "python-multipart": "0.0.34", "pytz": "2026.6", "redis": "8.1.0", "referencing": "0.37.0",
    "requests-toolbelt": "1.0.0", "responses": "0.26.3", "rope": "1.15.2", "rsa": "4.9.1", "schedule": "1.2.2",
    "sniffio": "1.3.1", "soupsieve": "4.1.3", "sphinx": "9.0.4", "sqlparse": "0.6.1", "starlette": "1.10.0",
    "structlog": "26.1.0", "tabulate": "0.10.0", "tinydb": "4.9.0", "tomli-w": "1.2.0", "tomlkit": "0.15.2",
    "tox": "4.67.15", "tqdm": "4.70.1", "traitlets": "5.16.1", "trio": "0.35.0", "typer": "0.29.2",
    "vine": "5.1.0", "virtualenv": "21.15.11", "wheel": "0.48.0", "zipp": "4.1.2",
}
EXCLUDED_NAMES = re.compile(r"(^|[-_/])(ripgrep|grep|grep-[a-z]+|ignore|globset|click|candle(-[a-z-]+)?|human[-_]?eval|mbpp)([-_/.]|$)", re.I)
PERMISSIVE = re.compile(r"MIT|Apache|BSD|ISC|Unlicense|Zlib|PSF|Python Software Foundation|0BSD|MPL", re.I)
GENERATED_CRATES = ("windows", "winapi", "wasi", "wasm-bindgen", "js-sys", "web-sys", "linux-raw-sys", "libc",
                    "r-efi", "redox_syscall", "core-foundation-sys", "android", "iana-time-zone", "wit-bindgen")
MAX_FILE_BYTES = 300_000  # larger files are nearly always generated tables
# A file-level notice on a comment line, not prose that mentions generated code.
GENERATED_MARKER = re.compile(
    rb"^[ \t]*(#|//!?|/?\*+)[^\n]*?(@generated|DO NOT EDIT"
    rb"|(this (file|code|module) (is|was|has been) )?(automatically |auto-?)generated (by|from|with|using)"
    rb"|this (file|code|module) (is|was|has been) generated (by|from|with|using))",
    re.I | re.M)
NUMERIC_LINE = re.compile(r"^[\s\[\](){},;:0-9xX_.+\-'\"]*(0x[0-9a-fA-F_]+[\s\[\](){},;:0-9xX_.+\-'\"]*)*$")
NEAR_DUP_JACCARD = 0.8
SKETCH = 64  # bottom-k MinHash size
RUST_EXT = {".rs"}
PY_EXT = {".py"}


def generated_reason(data: bytes):
    """Why a file looks generated or minified (None if it does not): a generated-file notice on a
    comment line in its first 1 KB, more than half of its bytes in lines over 500 characters or
    lines of 150 on average, or more than half of its lines numeric table rows."""
    if GENERATED_MARKER.search(data[:1024]):
        return "generated marker"
    lines = data.decode("utf-8", errors="replace").splitlines()
    if not lines:
        return None
    if sum(len(l) for l in lines if len(l) > 500) > len(data) / 2 or sum(map(len, lines)) / len(lines) > 150:
        return "minified or long lines"
    body = [l for l in lines if l.strip()]
    if len(body) >= 50 and sum(1 for l in body if NUMERIC_LINE.match(l) and any(c.isdigit() for c in l)) > len(body) / 2:
        return "numeric table"
    return None


def sketch(data: bytes):
    """Bottom-k MinHash of a file's 3-line shingles (stripped, blank lines dropped): the SKETCH
    smallest 64-bit hashes, sorted."""
    lines = [l.strip() for l in data.decode("utf-8", errors="replace").splitlines() if l.strip()]
    shingles = {"\n".join(lines[i:i + 3]) for i in range(max(1, len(lines) - 2))}
    hashes = {int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") for s in shingles}
    return sorted(hashes)[:SKETCH]


def jaccard_estimate(a, b):
    """Bottom-k estimate of the shingle sets' Jaccard similarity from their sketches."""
    union = sorted(set(a) | set(b))[:SKETCH]
    both = set(a) & set(b)
    return sum(1 for h in union if h in both) / len(union) if union else 1.0


class NearDuplicates:
    """Files seen so far, indexed by each sketch's 4 smallest hashes: a near-duplicate (Jaccard at
    least 0.8) almost surely shares one of them."""

    def __init__(self):
        self.sketches = []
        self.index = {}

    def find_or_add(self, s):
        candidates = {i for h in s[:4] for i in self.index.get(h, ())}
        if any(jaccard_estimate(s, self.sketches[i]) >= NEAR_DUP_JACCARD for i in candidates):
            return True
        for h in s[:4]:
            self.index.setdefault(h, []).append(len(self.sketches))
        self.sketches.append(s)
        return False


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def skip_dir(rel: str) -> bool:
    parts = rel.replace("\\", "/").split("/")
    return any(p in {"tests", "test", "benches", "examples", "idle_test", "site-packages", "__pycache__", "testing"} for p in parts)


class Corpus:
    def __init__(self, out: Path):
        self.out = out
        self.files = out / "files"
        self.seen = set()
        self.near = NearDuplicates()
        self.sources = []
        self.duplicates = 0
        self.near_duplicates = 0
        self.generated = {}

    def add_tree(self, name, version, license_, root: Path, exts, rel_prefix=""):
        count = size = 0
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            if rel_dir != "." and (skip_dir(rel_dir) or EXCLUDED_NAMES.search("/" + rel_dir.replace(os.sep, "/") + "/")):
                dirnames.clear()
                continue
            for fn in sorted(filenames):
                path = Path(dirpath) / fn
                if path.suffix not in exts or EXCLUDED_NAMES.search(fn):
                    continue
                data = path.read_bytes()
                if b"\0" in data or len(data) > MAX_FILE_BYTES:
                    continue
                digest = hashlib.sha256(data).hexdigest()
                if digest in self.seen:
                    self.duplicates += 1
                    continue
                self.seen.add(digest)
                reason = generated_reason(data)
                if reason:
                    self.generated[reason] = self.generated.get(reason, 0) + 1
                    continue
                if self.near.find_or_add(sketch(data)):
                    self.near_duplicates += 1
                    continue
                dest = self.files / name / rel_prefix / os.path.relpath(path, root)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
                count += 1
                size += len(data)
        self.sources.append({"name": name, "version": version, "license": license_, "files": count, "bytes": size})
        log(f"  {name} {version}: {count} files, {size / 1e6:.1f} MB ({license_})")


def rust_std(corpus: Corpus):
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True).stdout.strip()
    lib = Path(sysroot) / "lib/rustlib/src/rust/library"
    if not lib.is_dir():
        subprocess.run(["rustup", "component", "add", "rust-src"], check=True)
    version = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.split()[1]
    for member in ["core", "alloc", "std"]:
        corpus.add_tree(f"rust-{member}", version, "MIT OR Apache-2.0", lib / member / "src", RUST_EXT)


def vendored_crates(corpus: Corpus, work: Path, crates: dict, project: str):
    proj = work / project
    (proj / "src").mkdir(parents=True, exist_ok=True)
    (proj / "src/lib.rs").write_text("")
    deps = "\n".join(f'{name} = "={ver}"' for name, ver in crates.items())
    (proj / "Cargo.toml").write_text(f'[package]\nname = "corpus"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\n{deps}\n')
    subprocess.run(["cargo", "vendor", "--quiet", "--versioned-dirs", str(proj / "vendor")], cwd=proj, check=True,
                   stdout=subprocess.DEVNULL)
    for crate_dir in sorted((proj / "vendor").iterdir()):
        manifest = (crate_dir / "Cargo.toml").read_text(errors="replace")
        name = re.search(r'^name = "([^"]+)"', manifest, re.M).group(1)
        version = re.search(r'^version = "([^"]+)"', manifest, re.M).group(1)
        lic = re.search(r'^license = "([^"]+)"', manifest, re.M)
        lic = lic.group(1) if lic else "unknown"
        if EXCLUDED_NAMES.search(name) or not PERMISSIVE.search(lic) or re.search(r"GPL", lic) and not re.search(r"MIT|Apache", lic):
            log(f"  skip crate {name} {version} ({lic})")
            continue
        if name.startswith(GENERATED_CRATES):
            continue  # platform bindings and tables: huge and generated, not code people write
        corpus.add_tree(f"crate-{name}", version, lic, crate_dir, RUST_EXT)


def python_std(corpus: Corpus):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    version = ".".join(map(str, sys.version_info[:3]))
    corpus.add_tree("python-stdlib", version, "PSF-2.0", stdlib, PY_EXT)


def wheel_license(z: zipfile.ZipFile) -> str:
    meta = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
    if not meta:
        return "unknown"
    text = z.read(meta).decode(errors="replace")
    m = re.search(r"^License-Expression: (.+)$", text, re.M) or re.search(r"^License: (.+)$", text, re.M)
    if m and m.group(1).strip() and len(m.group(1)) < 80:
        return m.group(1).strip()
    classifiers = re.findall(r"^Classifier: License :: (.+)$", text, re.M)
    return "; ".join(classifiers) or "unknown"


def wheels(corpus: Corpus, work: Path):
    dl = work / "wheels"
    dl.mkdir(exist_ok=True)
    for name, ver in WHEELS.items():
        if ver is None or EXCLUDED_NAMES.search(name):
            continue
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                            "--no-binary=:none:", "-d", str(dl), f"{name}=={ver}"], capture_output=True, text=True)
        if r.returncode != 0:
            log(f"  skip wheel {name}=={ver}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'download failed'}")
            continue
    for whl in sorted(dl.glob("*.whl")):
        if not whl.name.endswith("-none-any.whl"):
            log(f"  skip {whl.name}: not pure Python")
            continue
        with zipfile.ZipFile(whl) as z:
            lic = wheel_license(z)
            if not PERMISSIVE.search(lic):
                log(f"  skip {whl.name}: license {lic!r}")
                continue
            target = work / "unpacked" / whl.stem
            z.extractall(target)
        name, version = whl.name.split("-")[:2]
        corpus.add_tree(f"pypi-{name.lower()}", version, lic, target, PY_EXT)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1]).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    corpus = Corpus(out)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log("Rust standard library")
        rust_std(corpus)
        log("vendored crates")
        vendored_crates(corpus, work, CRATES, "vendor-project")
        log("vendored crates, second list")
        vendored_crates(corpus, work, CRATES_2, "vendor-project-2")
        log("Python standard library")
        python_std(corpus)
        log("PyPI wheels")
        wheels(corpus, work)
    total_files = sum(s["files"] for s in corpus.sources)
    total_bytes = sum(s["bytes"] for s in corpus.sources)
    manifest = {"sources": corpus.sources, "files": total_files, "bytes": total_bytes,
                "exact_duplicates_removed": corpus.duplicates,
                "near_duplicates_removed": corpus.near_duplicates,
                "generated_removed": corpus.generated,
                "excluded": "ripgrep and its workspace crates (grep*, ignore, globset), click, candle (the finetuning "
                            "test's held-out repository), HumanEval, MBPP"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"corpus: {total_files} files, {total_bytes / 1e6:.1f} MB, {corpus.duplicates} duplicates, "
        f"{corpus.near_duplicates} near-duplicates and {sum(corpus.generated.values())} generated files removed -> {out}")


if __name__ == "__main__":
    main()
