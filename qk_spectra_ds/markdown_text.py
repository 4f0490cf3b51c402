"""Text from users (model ids, family and dataset names, parameters) made safe to put into Markdown.

index.md and the dataset card are rendered by viewers (GitHub, the Hub, any CommonMark
renderer): a model id such as ``<script>...`` or ``a|b`` must show as itself, never as HTML, a
link, emphasis or a broken table. :func:`md_text` backslash-escapes every ASCII punctuation mark
with an inline meaning (CommonMark lets any ASCII punctuation be escaped; ``n_heads`` keeps its
underscore, which cannot emphasize inside a word) and turns line breaks
and other control characters into spaces; :func:`md_code` makes a code span whose fence is
longer than any backtick run inside. Dots, hyphens and slashes are left alone, so ordinary ids
read as they are (``Qwen/Qwen3-0.6B``).
"""

from __future__ import annotations

import re

_SPECIAL = re.compile(r"([\\`*{}\[\]()<>#!|~&$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
"""Punctuation with an inline meaning; ``_`` only where it could open or close emphasis (never inside a word)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")


def _flat(value: object) -> str:
    return _CONTROL.sub(" ", str(value))


def md_text(value: object) -> str:
    """``value`` as inline Markdown text that renders as exactly these characters (line breaks as spaces)."""
    return _SPECIAL.sub(r"\\\1", _flat(value))


def md_code(value: object, table: bool = False) -> str:
    """``value`` as a Markdown code span (monospace, never interpreted), whatever backticks it holds.

    ``table``: for a cell of a GFM table, where a ``|`` ends the cell even inside a code span
    unless escaped (GFM then shows it as ``|``).
    """
    text = _flat(value)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = (
        " "
        if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.endswith(" ") and text.strip())
        else ""
    )
    span = f"{fence}{pad}{text}{pad}{fence}" if text else "` `"
    return span.replace("|", "\\|") if table else span
