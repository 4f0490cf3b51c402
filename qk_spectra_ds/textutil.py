"""Parsing the comma-separated lists users type (``--models a,b``), shared by both halves and their CLIs.

A library module, so that the loader and the builder need not import the CLI machinery (:mod:`.cli_util`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import UsageError


def as_list(value: Any, flag: str | None = None) -> list[str] | None:
    """A comma-separated flag as a list of its non-blank items; None when not given.

    With ``flag``, a value that was given but names nothing (``""``, ``",,"``) is
    refused instead of read as "not given" (which would silently mean "all").
    """
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        items = str(value).split(",")
    else:
        items = [str(v) for v in value]
    items = [item.strip() for item in items if str(item).strip()]
    if not items and flag is not None:
        raise UsageError(f"{flag} {value!r} names nothing: give comma-separated names, or leave the flag out")
    return items or None
