"""Issue 19, item 4: no library module imports a CLI module, and none uses another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "qk_spectra_ds"
CLI_MODULES = {"cli_util.py", "builder/cli.py", "analysis/cli.py", "analysis/cli_defaults.py"}


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        yield str(path.relative_to(ROOT)), ast.parse(path.read_text(encoding="utf-8"))


def _is_package(node: ast.ImportFrom) -> bool:
    return node.level > 0 or (node.module or "").startswith("qk_spectra_ds")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@pytest.mark.slow
def test_library_modules_import_no_cli_module():
    found = []
    for rel, tree in _modules():
        if rel in CLI_MODULES:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _is_package(node):
                names = [node.module or ""] + [alias.name for alias in node.names]
                if any(name.split(".")[-1] in ("cli", "cli_util") for name in names):
                    found.append(f"{rel}:{node.lineno}")
    assert not found, found


@pytest.mark.slow
def test_no_module_uses_another_modules_private_names():
    found = []
    for rel, tree in _modules():
        modules = set()  # local names bound to package modules: ``from . import plots``
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _is_package(node):
                for alias in node.names:
                    if _private(alias.name):
                        found.append(f"{rel}:{node.lineno} imports {alias.name}")
                    if node.module is None or node.module == "qk_spectra_ds":
                        modules.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                if _private(node.attr):
                    found.append(f"{rel}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not found, found


def test_the_scan_sees_what_it_looks_for():
    """The checks above find the patterns they forbid (so a passing run means something)."""
    tree = ast.parse("from . import plots\nfrom .folding import _cfg\nplots._save(1)\n")
    node = tree.body[1]
    assert _is_package(node) and _private(node.names[0].name)
    assert isinstance(tree.body[2].value.func, ast.Attribute) and _private(tree.body[2].value.func.attr)
    assert not _private("__version__")


# ---------------------------------------------------------------- drift


def _map_sections() -> dict[str, str]:
    """The package docstring's module map, cut into its three sections (build, core, analysis)."""
    import qk_spectra_ds

    doc = qk_spectra_ds.__doc__
    build, rest = doc.split("\n  core ", 1)
    core, analysis = rest.split("qk_spectra_ds.analysis ", 1)
    return {"builder": build, "": core, "analysis": analysis.split("The public Python API")[0]}


def test_module_map_lists_every_module():
    """The package docstring names every module, in the section of its folder (11 were missing)."""
    import re

    missing = []
    for folder, text in _map_sections().items():
        words = set(re.findall(r"\w+", text))
        for path in sorted((ROOT / folder).glob("*.py")):
            if path.stem != "__init__" and path.stem not in words:
                missing.append(str(path.relative_to(ROOT)))
    assert not missing, missing


@pytest.mark.slow
def test_no_reference_to_files_outside_the_repository():
    """Docstrings cite the README or the card, not DESIGN.md or shared/legacy (absent from the repository)."""
    stale = ("DESIGN.md", "shared/legacy", "qk_spectra_ds.legacy`", "qk_spectra_ds.legacy ")
    found = [
        f"{rel}: {word}" for rel, _ in _modules() for word in stale if word in (ROOT / rel).read_text(encoding="utf-8")
    ]
    assert not found, found


def test_schema_constants_are_not_repeated():
    """The variant and statistic names come from schema; the unused duplicates stay removed."""
    source = {
        rel: (ROOT / rel).read_text(encoding="utf-8")
        for rel in ("builder/variants.py", "builder/folding.py", "analysis/layer_boxplots.py")
    }
    assert '"folded"' not in source["builder/variants.py"] and "\nVARIANTS =" not in source["builder/variants.py"]
    assert "FOLDING_MODEL_TYPES" not in source["builder/folding.py"]
    assert '"KURTOSIS"' not in source["analysis/layer_boxplots.py"]
    from qk_spectra_ds import schema
    from qk_spectra_ds.analysis import layer_boxplots

    assert layer_boxplots.STAT_NAMES == tuple(s.upper() for s in schema.STATISTICS)


@pytest.mark.slow
def test_no_undeclared_transport_library_is_imported():
    """httpx/httpx2/requests are huggingface_hub's, not declared by this package: reach them through its export."""
    found = []
    for rel, tree in _modules():
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            found += [f"{rel}:{node.lineno} {n}" for n in names if n.split(".")[0] in ("httpx", "httpx2", "requests")]
    assert not found, found


@pytest.mark.slow
def test_no_test_file_imports_another():
    """Shared test helpers live in helper modules (helpers, tiny_models, variant_cases, planted_models), not in tests."""
    found = []
    for path in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            found += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert not found, found
