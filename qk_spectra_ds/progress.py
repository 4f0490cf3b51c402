"""Progress bars that suit where they are written: tqdm's bar on a terminal, plain periodic lines elsewhere.

Written to a file or a pipe (a CI log, ``2> build.log``, a SLURM output file),
tqdm's redrawn bar fills the log with carriage returns and cursor escapes. Off
a terminal, :func:`progress_bar` keeps tqdm but with ASCII bars, one status at
most every :data:`LOG_INTERVAL_S` seconds, no nested-bar cursor moves
(``position``/``leave=False`` need them), and a small file wrapper that ends
each status with a newline instead of returning the carriage: one readable
line per update.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm

LOG_INTERVAL_S = 30.0
"""Off a terminal: at most one progress line per this many seconds (plus the first and the last)."""


class LineWriter:
    """A text stream for tqdm that writes each status as its own line (no ``\\r``, no trailing padding)."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Iterable | None = None, enabled: bool = True, file: TextIO | None = None, **kwargs):
    """``tqdm(iterable, **kwargs)`` on ``file`` (default stderr): the usual bar on a terminal, else plain lines."""
    stream = sys.stderr if file is None else file
    if not enabled:
        return tqdm(iterable, disable=True, **kwargs)
    if is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.pop("position", None)
    plain = {
        "mininterval": LOG_INTERVAL_S,
        "maxinterval": LOG_INTERVAL_S,
        "ascii": True,
        "ncols": 100,
        "position": 0,
        "dynamic_ncols": False,
        "leave": True,
    }
    return tqdm(iterable, file=LineWriter(stream), **{**kwargs, **plain})
