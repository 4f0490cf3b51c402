"""Issue 19 item 5: the docs name each flag one way (hyphens), and every flag they name exists.

The README, the dataset card's template and the CLI modules (their help)
are what users copy command lines from: a flag spelled ``--n_clusters`` in
one place and ``--push-to-hub`` in another, or a flag that was renamed,
would be copied as it stands.
"""

from __future__ import annotations

import re
from pathlib import Path

from qk_spectra_ds.analysis import cli as analysis_cli
from qk_spectra_ds.builder import cli as builder_cli
from qk_spectra_ds.cli_util import long_flag, signature_flags

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "README.md",
    ROOT / "qk_spectra_ds" / "templates" / "dataset_card.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
CLI_MODULES = [
    ROOT / "qk_spectra_ds" / name
    for name in (
        "cli_util.py",
        "builder/cli.py",
        "analysis/cli.py",
        "analysis/cli_commands.py",
        "analysis/cli_flags.py",
        "analysis/cli_defaults.py",
    )
]
MENTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]")  # not the "--" inside a file slug (Qwen--Qwen3)
OTHER_TOOLS = {
    "--array",
    "--gres",
    "--time",
    "--job-name",
    "--dependency",  # the README's SLURM lines (sbatch)
    "--strict-markers",
    "--check",  # ruff format --check
}  # pytest's


def _cli_flags() -> set[str]:
    functions = [builder_cli.build, *analysis_cli.COMMANDS.values()]
    return {long_flag(name) for function in functions for name in signature_flags(function)} | {"--help"}


def _benchmark_flags() -> set[str]:
    """The flags of the benchmark scripts the README runs (argparse ``add_argument("--...")``)."""
    found = set()
    for path in (ROOT / "benchmarks").glob("*.py"):
        found |= set(re.findall(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", path.read_text(encoding="utf-8")))
    return found


def test_docs_spell_flags_with_hyphens_only():
    for path in DOCS + CLI_MODULES:
        underscored = [m for m in MENTION.findall(path.read_text(encoding="utf-8")) if "_" in m]
        assert not underscored, (path.relative_to(ROOT).as_posix(), underscored)


def test_every_flag_the_docs_name_exists():
    known = _cli_flags() | _benchmark_flags() | OTHER_TOOLS
    for path in DOCS:
        unknown = sorted(set(MENTION.findall(path.read_text(encoding="utf-8"))) - known)
        assert not unknown, (path.relative_to(ROOT).as_posix(), unknown)


def test_the_mention_pattern_finds_flags_and_skips_slugs():
    text = (
        "run `--n-clusters 3` or --push-to-hub ORG/x; the file Qwen--Qwen3-0.6B and sentence-transformers--all-MiniLM"
    )
    assert MENTION.findall(text) == ["--n-clusters", "--push-to-hub"]
