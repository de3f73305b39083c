#!/usr/bin/env python3
"""Split a repository for a finetuning experiment: hold out a tenth of its source files (by a
stable hash of the path), copy the rest to OUT/train/ for `foresight train --repo`, and cut
fill-in-the-middle completion tasks from the held-out files into OUT/tasks.jsonl, in the format of
the dev set (`../shared/eval/README.md`: id, language, kind, path, prefix, middle, suffix) that
`foresight eval` reads.

Tasks: in each held-out file, lines are drawn at random (seeded) among those with at least 8
non-blank characters after their indentation that are not comments; the cursor stands after the
indentation. `single`: the middle is the rest of the line; `multi`: the rest of the line and the
next 1 to 3 lines. Prefix at most 8 KB, suffix at most 4 KB, cut at line boundaries.

Usage: scripts/repo_fim_tasks.py REPO OUT [--holdout 0.1] [--per-file 8] [--seed 0]
Prints a summary to stderr; writes OUT/train/..., OUT/tasks.jsonl and OUT/split.json.
"""
import argparse
import hashlib
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

LANGUAGES = {".rs": "rust", ".py": "python"}
COMMENT = {"rust": "//", "python": "#"}
PREFIX_BYTES, SUFFIX_BYTES = 8192, 4096


SKIP_DIRS = {".git", "target", "node_modules", "vendor", "__pycache__", ".venv", "dist", "build"}


def source_files(repo: Path):
    """The repository's files: `git ls-files` in a git checkout (so .gitignore holds), otherwise a
    walk that leaves out VCS, build and vendored folders."""
    if (repo / ".git").exists():
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, check=True).stdout
        return sorted(repo / p for p in out.decode().split("\0") if p and (repo / p).is_file())
    return sorted(p for p in repo.rglob("*")
                  if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(repo).parts[:-1]))


def held_out(rel: str, fraction: float) -> bool:
    """Stable across runs and machines: the first 8 bytes of SHA-256 of the relative path."""
    bucket = int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big") % 1_000_000
    return bucket < fraction * 1_000_000


def clip_prefix(text: str) -> str:
    if len(text.encode()) <= PREFIX_BYTES:
        return text
    cut = text.encode()[-PREFIX_BYTES:].decode(errors="ignore")
    nl = cut.find("\n")
    return cut[nl + 1:] if nl >= 0 else cut


def clip_suffix(text: str) -> str:
    if len(text.encode()) <= SUFFIX_BYTES:
        return text
    cut = text.encode()[:SUFFIX_BYTES].decode(errors="ignore")
    nl = cut.rfind("\n")
    return cut[:nl + 1] if nl >= 0 else cut


def tasks_for(rel: str, text: str, language: str, per_file: int, rng: random.Random):
    lines = text.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    candidates = []
    for i, line in enumerate(lines):
        body = line.lstrip()
        if len(body) >= 8 and not body.startswith(COMMENT[language]) and i + 1 < len(lines):
            candidates.append(i)
    rng.shuffle(candidates)
    out = []
    for n, i in enumerate(sorted(candidates[:per_file])):
        kind = "single" if n % 2 == 0 else "multi"
        extra = 0 if kind == "single" else rng.randint(1, 3)
        last = min(i + extra, len(lines) - 1)
        indent = len(lines[i]) - len(lines[i].lstrip())
        cursor = starts[i] + indent
        end = starts[last] + len(lines[last])
        middle = text[cursor:end]
        if kind == "multi" and "\n" not in middle:
            kind = "single"
        out.append({
            "id": f"{rel}:{i + 1}:{kind}",
            "language": language,
            "kind": kind,
            "path": rel,
            "prefix": clip_prefix(text[:cursor]),
            "middle": middle,
            "suffix": clip_suffix(text[end:]),
        })
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("repo", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--per-file", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.repo.is_dir():
        sys.exit(f"error: {args.repo} is not a directory")
    if not 0 < args.holdout < 1:
        sys.exit("error: --holdout must be between 0 and 1")
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"error: {args.out} exists and is not empty")
    train_dir = args.out / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    tasks, kept, held = [], [], []
    for path in source_files(args.repo):
        rel = path.relative_to(args.repo).as_posix()
        language = LANGUAGES.get(path.suffix)
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if language and held_out(rel, args.holdout):
            held.append(rel)
            tasks.extend(tasks_for(rel, text, language, args.per_file, rng))
        else:
            dest = train_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            if language:
                kept.append(rel)
    with open(args.out / "tasks.jsonl", "w") as f:
        for t in tasks:
            f.write(json.dumps(t) + "\n")
    (args.out / "split.json").write_text(json.dumps({"repo": str(args.repo), "holdout": args.holdout, "seed": args.seed,
                                                     "held_out": held, "train_source_files": len(kept)}, indent=1))
    singles = sum(t["kind"] == "single" for t in tasks)
    print(f"{len(kept)} source files to train on, {len(held)} held out, {len(tasks)} tasks "
          f"({singles} single, {len(tasks) - singles} multi) -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
