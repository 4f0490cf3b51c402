"""Issue 19, item 4: every exception class of the package is defined in errors.py, under QKSpectraError."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from qk_spectra_ds import errors

ROOT = Path(__file__).resolve().parents[2] / "qk_spectra_ds"


def _error_classes() -> list[tuple[str, str]]:
    """(module path, class name) of each public class whose base's name ends in Error or Exception."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = [ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases]
            if any(base.endswith(("Error", "Exception")) for base in bases):
                found.append((str(path.relative_to(ROOT)), node.name))
    return found


@pytest.mark.slow
def test_every_exception_class_is_defined_in_errors():
    outside = [f"{path}:{name}" for path, name in _error_classes() if path != "errors.py"]
    assert not outside, outside
    assert len(_error_classes()) >= 20  # the scan sees them (20 when errors were gathered in one place)


def test_every_exception_is_a_qkspectra_error():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, BaseException)]
    assert len(classes) >= 20
    for cls in classes:
        assert issubclass(cls, errors.QKSpectraError), cls
    assert issubclass(errors.SchemaError, ValueError)  # callers that catch ValueError keep working
    assert issubclass(errors.AnalysisError, ValueError)


@pytest.mark.parametrize(
    "module, names",
    [
        ("qk_spectra_ds.schema", ["SchemaError"]),
        ("qk_spectra_ds.cli_util", ["UsageError"]),
        ("qk_spectra_ds.hub_access", ["HubAccessError"]),
        ("qk_spectra_ds.integrity", ["IntegrityError"]),
        ("qk_spectra_ds.atomic", ["DiskWriteError"]),
        ("qk_spectra_ds.dataset_repo", ["DatasetRepoError", "CardError"]),
        ("qk_spectra_ds.analysis.loading", ["AnalysisError", "LoadError"]),
        ("qk_spectra_ds.analysis.verification", ["FileChecksumError"]),
        ("qk_spectra_ds.analysis.recompute", ["StoredValueError"]),
        ("qk_spectra_ds.analysis.compare", ["CompareError"]),
        ("qk_spectra_ds.analysis.legacy", ["UnsafePickleError", "LegacyFormatError"]),
        ("qk_spectra_ds.builder.publish", ["PublishError"]),
        ("qk_spectra_ds.builder.behaviour", ["BehaviourError"]),
        ("qk_spectra_ds.builder.spectra", ["WeightRangeError"]),
    ],
)
def test_old_import_paths_keep_working(module, names):
    """The modules that raise an error re-export it: existing ``from X import SomeError`` lines still work."""
    loaded = importlib.import_module(module)
    for name in names:
        assert getattr(loaded, name) is getattr(errors, name)


def test_schema_error_is_one_line_for_the_cli():
    """A SchemaError is now a QKSpectraError, so the CLIs print it as ``error: ...`` with no traceback."""
    from qk_spectra_ds import schema

    with pytest.raises(errors.QKSpectraError, match="schema_version 99"):
        schema.validate_columns(schema.COLUMNS, [99])
