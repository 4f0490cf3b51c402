"""Checking an output directory before any work, shared by the builder, the analysis and their CLIs.

A library module, so that the build pipeline need not import the CLI machinery (:mod:`.cli_util`).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` if it is (or can be created as) a writable directory; else a one-line UsageError.

    Run before any work, so that a build or an analysis never computes
    everything only to fail on writing it.
    """
    if not str(path).strip():
        raise UsageError(f"{flag} is blank: give a directory")
    path = Path(path).expanduser()
    try:
        existing = path
        while not os.path.lexists(existing) and existing != existing.parent:
            existing = existing.parent
        if existing == path and not path.is_dir():
            raise UsageError(f"{flag} {path} is a file, not a directory: give a directory (it is created if missing)")
        if not existing.is_dir():
            raise UsageError(f"{flag} {path} cannot be created: {existing} is a file, not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {path} is not writable ({existing}: permission denied): choose another directory")
    except OSError as exc:
        raise UsageError(f"{flag} {path} cannot be used: {exc.strerror or exc}") from None
    return path
