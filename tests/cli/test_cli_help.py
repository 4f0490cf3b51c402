"""Issue 23 item 10: ``analyze.py --help`` answers without importing the analysis stack (it took 3.3 s)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from qk_spectra_ds.analysis import cli_defaults

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("numpy", "pandas", "sklearn", "scipy", "matplotlib", "datasets", "qk_spectra_ds.analysis.report")

PROBE = """
import sys
from qk_spectra_ds.analysis.cli import main
try:
    code = main([{args}])
except SystemExit as exc:
    code = exc.code
print("LOADED", *sorted(m for m in {heavy!r} if m in sys.modules))
print("CODE", code)
"""


def _help(*args: str) -> tuple[str, str]:
    script = PROBE.format(args=", ".join(repr(a) for a in args), heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return done.stdout, done.stderr


@pytest.mark.slow
def test_help_does_not_import_the_analysis_stack():
    for args in (("--help",), ("report", "--help"), ("compare", "--help")):
        out, err = _help(*args)
        loaded = next(line for line in out.splitlines() if line.startswith("LOADED"))
        assert loaded == "LOADED", (args, loaded, err[-500:])
        assert "CODE 0" in out or "CODE None" in out, (args, out, err[-500:])
    out, err = _help("report", "--help")
    assert (
        "--n-clusters" in out + err and "--permutations" in out + err
    )  # the help is still the whole help (flags with hyphens since issue 19)


def test_cli_defaults_equal_params_defaults():
    from qk_spectra_ds.analysis.report import Params

    assert cli_defaults.as_dict() == dataclasses.asdict(Params())
