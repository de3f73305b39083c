#!/usr/bin/env python3
"""Assemble the default model's training corpus offline, from what the package registries give.

Sources (all permissively licensed, pinned so the corpus is reproducible):
  - the Rust standard library (`rustup component add rust-src`), tests and benches left out;
  - `cargo vendor` of a fixed list of MIT/Apache crates;
  - the Python standard library of the local interpreter, without its tests;
  - pure-Python wheels from PyPI (`pip download --no-deps --only-binary=:all:`).
Excluded on purpose: the dev set's sources (ripgrep and its workspace crates, click) and benchmark
data (HumanEval, MBPP and the like, which none of these sources carry; a name check guards it).
Exact duplicates are removed (by SHA-256 of the content). Writes OUT/files/<source>/... and
OUT/manifest.json with each source's name, version, license, file count and bytes.

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
WHEELS = {
    "requests": "2.32.3", "attrs": "25.3.0", "idna": "3.10", "packaging": "25.0", "pyparsing": "3.2.3",
    "six": "1.17.0", "rich": "14.0.0", "pygments": "2.19.1", "more-itertools": "10.7.0",
    "sortedcontainers": "2.4.0", "toolz": "1.0.0", "boltons": "25.0.0", "jinja2": "3.1.6",
    "werkzeug": "3.1.3", "flask": "3.1.1", "itsdangerous": "2.2.0", "urllib3": "2.4.0",
    "certifi": "2025.4.26", "charset-normalizer": "3.4.2", "tomli": "2.2.1", "pluggy": "1.6.0",
    "typing-extensions": "4.13.2", "platformdirs": "4.3.8", "python-dateutil": "2.9.0.post0",
    "markdown": "3.8", "docutils": "0.21.2", "networkx": "3.4.2", "sympy": "1.14.0", "mpmath": "1.3.0",
    "pyyaml": None,  # not pure Python; listed to document that it is skipped
}
EXCLUDED_NAMES = re.compile(r"(^|[-_/])(ripgrep|grep|grep-[a-z]+|ignore|globset|click|human[-_]?eval|mbpp)([-_/.]|$)", re.I)
PERMISSIVE = re.compile(r"MIT|Apache|BSD|ISC|Unlicense|Zlib|PSF|Python Software Foundation|0BSD|MPL", re.I)
GENERATED_CRATES = ("windows", "winapi", "wasi", "wasm-bindgen", "js-sys", "web-sys", "linux-raw-sys", "libc",
                    "r-efi", "redox_syscall", "core-foundation-sys", "android", "iana-time-zone", "wit-bindgen")
MAX_FILE_BYTES = 300_000  # larger files are nearly always generated tables
RUST_EXT = {".rs"}
PY_EXT = {".py"}


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
        self.sources = []
        self.duplicates = 0

    def add_tree(self, name, version, license_, root: Path, exts, rel_prefix=""):
        count = size = 0
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            if rel_dir != "." and skip_dir(rel_dir):
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


def vendored_crates(corpus: Corpus, work: Path):
    proj = work / "vendor-project"
    (proj / "src").mkdir(parents=True, exist_ok=True)
    (proj / "src/lib.rs").write_text("")
    deps = "\n".join(f'{name} = "={ver}"' for name, ver in CRATES.items())
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
        vendored_crates(corpus, work)
        log("Python standard library")
        python_std(corpus)
        log("PyPI wheels")
        wheels(corpus, work)
    total_files = sum(s["files"] for s in corpus.sources)
    total_bytes = sum(s["bytes"] for s in corpus.sources)
    manifest = {"sources": corpus.sources, "files": total_files, "bytes": total_bytes,
                "exact_duplicates_removed": corpus.duplicates,
                "excluded": "ripgrep and its workspace crates (grep*, ignore, globset), click, HumanEval, MBPP"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"corpus: {total_files} files, {total_bytes / 1e6:.1f} MB, {corpus.duplicates} duplicates removed -> {out}")


if __name__ == "__main__":
    main()
