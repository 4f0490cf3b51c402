"""Issue 19 item 6: the package imports what setup.cfg declares, and declares what it imports.

Each half may import the core requirements and its own extras only: the
shared core install_requires; the builder also ``build`` and ``behaviour``
(transformers, for ``--behaviour``); the analysis also ``analysis``, ``umap``
and ``original``. And every requirement of those is imported somewhere (psutil
was declared and never imported). Test-only packages (safetensors, pytest,
...) stay in ``test``.
"""

from __future__ import annotations

import ast
import configparser
import functools
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "qk_spectra_ds"
SCOPES = {
    "core": ("install_requires",),
    "builder": ("install_requires", "build", "behaviour"),
    "analysis": ("install_requires", "analysis", "umap", "original"),
}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(section: str) -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    if section == "install_requires":
        text = config.get("options", "install_requires", raw=True)
    else:
        text = config.get("options.extras_require", section, raw=True)
    return {_normal(re.split(r"[<>=!~\[ ;]", line.strip())[0]) for line in text.splitlines() if line.strip()}


@functools.cache
def _third_party_imports() -> dict[str, set[str]]:
    """Distribution -> the halves (core, builder, analysis) whose modules import it, at any depth of a module."""
    providers = packages_distributions()
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).parts
        half = relative[0] if len(relative) > 1 else "core"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in ("__future__", "qk_spectra_ds"):
                    continue
                for dist in providers.get(top, [top]):
                    found.setdefault(_normal(dist), set()).add(half)
    return found


@pytest.mark.slow  # the scan of every module: about 1.3 s
def test_every_import_is_declared_for_its_half():
    imports = _third_party_imports()
    assert {"numpy", "torch", "scikit-learn", "pyyaml"} <= set(imports)  # the scan sees imports at every depth
    for dist, halves in sorted(imports.items()):
        for half in halves:
            allowed = set().union(*(_requirements(section) for section in SCOPES[half]))
            assert dist in allowed, f"{half} imports {dist}, which setup.cfg does not declare for it"


@pytest.mark.slow
@pytest.mark.parametrize("section", ["install_requires", "build", "analysis", "umap", "original", "behaviour"])
def test_every_declared_requirement_is_imported(section):
    imported = set(_third_party_imports())
    unused = _requirements(section) - imported
    assert not unused, f"setup.cfg's {section} declares {sorted(unused)}, which the package never imports"


def test_test_only_packages_stay_in_the_test_extra():
    runtime = set().union(*(_requirements(s) for s in ("install_requires", "build", "analysis", "behaviour")))
    assert not runtime & {"safetensors", "pytest", "psutil", "ruff"}


def test_behaviour_without_transformers_is_one_line(monkeypatch, capsys, tmp_path):
    from qk_spectra_ds.builder import cli

    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    rc = cli.cli(["--family", "F", "--models", str(tmp_path), "--out", str(tmp_path / "out"), "--behaviour"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "qk-spectra-ds[behaviour]" in err, err
    assert not (tmp_path / "out").exists()
