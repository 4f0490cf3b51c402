"""A local model's revision: ``local:`` + the digest of every byte its rows depend on.

A Hub model's revision is its commit. A local folder has none, so its rows record the digest
of what the build read (config.json, the index, the headers, every tensor the rows come from,
:class:`.weights.ReadLog`). To skip an unchanged folder, a rerun first reads its layers
through the build's own reader (:func:`local_revision_prepass`); a first build or ``--force``
reads and hashes the bytes once, as the build reads them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .weights import ModelSource

log = logging.getLogger(__name__)

LOCAL_REVISION_PREFIX = "local:"


def local_revision(source: ModelSource) -> str:
    """``local:`` + 40 hex of the digest of every byte the source has read (config.json, index, headers, tensors)."""
    return LOCAL_REVISION_PREFIX + source.read_digest()[:40]


def local_revision_prepass(source: ModelSource, read_layer, layers: Iterable[int]) -> str:
    """A local model's revision, before its kernel runs: read (and so hash) every layer through ``read_layer``.

    ``read_layer`` is the very function the build reads with, so whatever the
    rows depend on (Q/K rows now, norm gains or biases a variant reads there
    later) is in the digest, together with config.json and the headers read
    before. Each layer's arrays are dropped at once: memory stays one layer.
    It runs only when the model's file exists (a rerun may skip it): then the Q/K
    bytes are read once when it is skipped and twice when it is rebuilt (the second
    time mostly from the OS page cache). A first build or --force reads them once,
    hashed as the build reads them. Hub models need no pre-pass: their commit names the bytes.
    """
    for layer in layers:
        read_layer(layer)
    return local_revision(source)


def local_revision_after_build(source: ModelSource, before: str | None) -> str:
    """The revision to record once the rows are computed: the digest of everything read, pre-pass and build.

    ``before`` None: no pre-pass ran (no file to skip against, or --force), so the bytes were
    read and hashed once, by the build itself (the digest does not depend on the read order).

    A range read again with other bytes was refused as it was read (the files
    changed). If the build read ranges the pre-pass did not, the recorded
    revision covers them too (it then never equals a later pre-pass, so the
    model is rebuilt each time rather than ever skipped on a partial digest).
    """
    after = local_revision(source)
    if before is not None and after != before:
        log.warning(
            "%s: the build read bytes its revision pre-pass did not; read_layer should read them", source.model_id
        )
    return after


def revision_before_build(
    source: ModelSource,
    previous: Mapping[str, Any] | None,
    force: bool,
    read_layer,
    layers: Iterable[int],
    timings: dict[str, float],
) -> str | None:
    """The revision to compare with the model's file: the Hub commit, or a local folder's pre-pass digest.

    None when there is nothing to skip against (no file yet, or ``force``): the build's own
    reads are then hashed once (:func:`local_revision_after_build`). The pre-pass's seconds
    are ``timings["digest"]``.
    """
    if source.revision is not None:
        return source.revision
    if force or previous is None:
        return None
    t0 = time.perf_counter()
    revision = local_revision_prepass(source, read_layer, layers)
    timings["digest"] = time.perf_counter() - t0
    return revision
