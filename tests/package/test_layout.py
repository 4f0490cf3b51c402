"""The package's two halves: the analysis imports without torch and never imports the builder."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import qk_spectra_ds
from qk_spectra_ds import analysis, builder

ROOT = Path(__file__).resolve().parents[2]

BLOCKED_IMPORT = textwrap.dedent(
    """
    import importlib, importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "safetensors", "transformers"}:
                raise ImportError(f"{name} is blocked for this test", name=name)
            return None

    sys.meta_path.insert(0, Block())
    for name in NAMES:
        importlib.import_module(name)
    leaked = sorted(m for m in sys.modules if m.startswith("qk_spectra_ds.builder") or m.split(".")[0] in {"torch", "safetensors", "transformers"})
    print("LEAKED", leaked)
    """
)


def _modules(package) -> list[str]:
    return [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]


def test_the_tree_shows_the_two_halves():
    assert {"cli", "loading", "legacy", "features", "taxonomy", "layer_boxplots", "plots", "report"} <= {
        name.rsplit(".", 1)[1] for name in _modules(analysis)
    }
    assert {
        "catalog",
        "weights",
        "safetensors_io",
        "architectures",
        "spectra",
        "kernel",
        "pipeline",
        "publish",
        "cli",
    } <= {name.rsplit(".", 1)[1] for name in _modules(builder)}


@pytest.mark.slow
def test_analysis_and_core_import_without_torch_safetensors_or_transformers():
    core = [f"qk_spectra_ds.{m.name}" for m in pkgutil.iter_modules(qk_spectra_ds.__path__) if not m.ispkg]
    names = ["qk_spectra_ds", *core, *_modules(analysis)]
    code = f"NAMES = {names!r}\n" + BLOCKED_IMPORT
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LEAKED []" in proc.stdout, proc.stdout


def test_the_blocker_really_blocks():
    """Guard: the same harness fails when asked to import the builder (so the test above can fail)."""
    code = "NAMES = ['qk_spectra_ds.builder.kernel']\n" + BLOCKED_IMPORT
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_no_analysis_module_imports_the_builder_or_torch():
    for path in (ROOT / "qk_spectra_ds" / "analysis").glob("*.py"):
        text = path.read_text()
        for bad in (
            "from ..builder",
            "qk_spectra_ds.builder",
            "import torch",
            "import safetensors",
            "import transformers",
        ):
            assert bad not in text, (path.name, bad)
    for path in (ROOT / "qk_spectra_ds").glob("*.py"):  # the shared core
        if path.name == "__init__.py":
            continue  # names both halves' modules for its lazy exports; tests/package/test_python_api.py checks what it imports
        text = path.read_text()
        for bad in (
            "from .builder",
            "from .analysis",
            "qk_spectra_ds.builder",
            "qk_spectra_ds.analysis",
            "import torch",
        ):
            assert bad not in text, (path.name, bad)


def test_installed_commands_are_declared():
    text = (ROOT / "setup.cfg").read_text()
    assert "qk-spectra-build = qk_spectra_ds.builder.cli:cli" in text
    assert "qk-spectra-analyze = qk_spectra_ds.analysis.cli:main" in text
