"""Issue 19, item 4: no library module imports a CLI module, and none uses another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "qk_spectra_ds"
CLI_MODULES = {"cli_util.py", "build/cli.py", "analysis/cli.py", "analysis/cli_defaults.py"}


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        yield str(path.relative_to(ROOT)), ast.parse(path.read_text(encoding="utf-8"))


def _is_package(node: ast.ImportFrom) -> bool:
    return node.level > 0 or (node.module or "").startswith("qk_spectra_ds")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


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
