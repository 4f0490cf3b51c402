"""Issue 23 item 9: progress written to a file or a pipe is plain lines, not a redrawn bar with escape codes."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from qk_spectra_ds.progress import progress_bar

ROOT = Path(__file__).resolve().parents[2]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_each_status_is_its_own_line():
    out = io.StringIO()
    for _ in progress_bar(range(50), file=out, desc="models", unit="model", leave=False, position=1):
        pass
    with progress_bar(total=3, file=out, desc="report", unit="task") as bar:
        bar.update(3)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text, repr(text)
    lines = text.splitlines()
    assert lines[0].startswith("models:   0%") and lines[1].startswith("models: 100%") and "50/50" in lines[1]
    assert lines[-1].startswith("report: 100%") and len(lines) == 4, lines  # first and last only: no per-item spam


def test_on_a_terminal_the_bar_is_tqdms():
    out = _Tty()
    for _ in progress_bar(range(3), file=out, desc="models"):
        pass
    assert "\r" in out.getvalue()
    silent = io.StringIO()
    for _ in progress_bar(range(3), enabled=False, file=silent):
        pass
    assert silent.getvalue() == ""


@pytest.mark.slow
def test_a_build_into_a_pipe_logs_plain_lines(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "build_dataset.py",
            "--family",
            "MiniLM",
            "--out",
            str(tmp_path / "ds"),
            "--variants",
            "raw",
            "--offsets",
            "none",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\r" not in done.stderr and "\x1b" not in done.stderr, repr(done.stderr[:500])
    assert any(line.startswith("MiniLM models: 100%") for line in done.stderr.splitlines()), done.stderr
