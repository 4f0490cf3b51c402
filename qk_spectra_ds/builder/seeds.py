"""Keys of the seeded draws (null rotations, matched nulls): numpy and hashlib only.

Here rather than in :mod:`.variants` so that writing a model's rows, which names the
matched null's key, never imports torch (a raw CPU build runs without it, :mod:`.route`).
"""

from __future__ import annotations

import hashlib


def null_seed_key(model_id: str) -> int:
    """A 64-bit key of the model id for the null draws (sha256, stable across processes, unlike hash())."""
    return int.from_bytes(hashlib.sha256(model_id.encode()).digest()[:8], "little")
