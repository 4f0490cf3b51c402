"""File names derived from model ids, injective in the id (one model, one file; never two).

Used for the builder's ``data/<family>/<slug>.parquet`` and for every figure and table
the analysis names after a model. An ordinary id (what the Hub accepts as a repo id:
letters, digits, ``_ . -``, at most one ``/``, no ``--`` or ``..``, no part starting or
ending with ``-`` or ``.``) keeps the readable slug it always had, ``/`` -> ``--``
(``Qwen/Qwen3-0.6B`` -> ``Qwen--Qwen3-0.6B``): files already published keep their names,
and the slug can be read back into the id. Any other id (``m x``, ``org--m``, ``..``,
``""``, ``<script>``, 20,000 characters) gets a cleaned, shortened readable part, then
``---`` and 16 hex digits of the id's SHA-256. ``---`` never occurs in an ordinary slug, so
the two kinds cannot meet, and names stay far below the file systems' 255-byte limit.
"""

from __future__ import annotations

import hashlib
import re

ORDINARY_MAX = 120
"""Longest ordinary slug kept as it is (Hub ids are at most 96 characters); longer ones are hashed."""
READABLE_MAX = 60
"""Characters of the cleaned id kept in front of a hashed name's ``---<hash>``."""
HASH_HEX = 16
"""Hex digits of SHA-256 in a hashed name (64 bits: a collision among real ids is not a concern)."""

_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def is_ordinary(model_id: str) -> bool:
    """True if ``model_id`` maps to its plain slug: Hub-repo-id characters, reversible (see the module doc)."""
    parts = model_id.split("/")
    return (
        0 < len(parts) <= 2
        and all(_PART.fullmatch(p) for p in parts)
        and "--" not in model_id
        and ".." not in model_id
        and len(model_id) + len(parts) - 1 <= ORDINARY_MAX
    )


def model_slug(model_id: str) -> str:
    """The file-name stem of ``model_id``: its plain slug if ordinary, else readable part + ``---`` + hash."""
    model_id = str(model_id)
    if is_ordinary(model_id):
        return model_id.replace("/", "--")
    readable = _UNSAFE.sub("-", model_id.replace("/", "--")).strip("-.")[:READABLE_MAX].rstrip("-.") or "model"
    while "---" in readable:
        readable = readable.replace("---", "--")
    digest = hashlib.sha256(model_id.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_HEX]
    return f"{readable}---{digest}"


def legacy_slug(model_id: str) -> str:
    """The slug earlier versions wrote for every id (not injective): the name an existing file may still have."""
    slug = _UNSAFE.sub("-", str(model_id).strip().strip("/").replace("/", "--"))
    return slug.strip("-.") or "model"
