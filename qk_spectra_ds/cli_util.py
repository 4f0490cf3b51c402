"""Small helpers shared by the two fire CLIs: list flags and one-line errors."""

from __future__ import annotations

import sys
from typing import Any, Callable


def as_list(value: Any) -> list[str] | None:
    """A comma-separated flag as a list of strings (fire may hand over a str, tuple or number)."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        items = str(value).split(",")
    items = [item.strip() for item in items if str(item).strip()]
    return items or None


def run_cli(main: Callable[[], Any]) -> int:
    """Run a CLI; a user error prints ``error: <one line>`` on stderr and exits 1."""
    from .errors import BuildError, QKSpectraError

    try:
        main()
    except BuildError as exc:
        from .build import summarize

        if exc.results:
            print(summarize(exc.results), file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (QKSpectraError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except SystemExit as exc:  # fire's --help and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
