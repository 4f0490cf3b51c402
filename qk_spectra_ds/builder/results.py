"""What happened to each model of a build (:class:`ModelResult`), and the one-line-per-model summary the CLI prints."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .. import schema


@dataclass
class ModelResult:
    """What happened to one model of a build."""

    model_id: str
    status: str  # "built", "skipped" or "failed"
    path: Path | None = None
    error: str | None = None
    revision: str | None = None
    n_rows: int = 0
    bytes_fetched: int = 0  # distinct bytes of the checkpoint read, each byte once
    checkpoint_bytes: int = 0
    bytes_transferred: int = 0  # every read counted (a local model's revision pre-pass reads its Q/K a second time)
    timings: dict[str, float] = field(default_factory=dict)
    variants: tuple[str, ...] = (schema.VARIANT_RAW,)
    circuits: tuple[str, ...] = (schema.CIRCUIT_QK,)

    @property
    def fetched_share(self) -> float:
        return self.bytes_fetched / self.checkpoint_bytes if self.checkpoint_bytes else float("nan")


def summarize(results: Iterable[ModelResult]) -> str:
    """One line per model: status, rows, bytes fetched and their share, time."""
    lines = []
    for r in results:
        if r.status == "failed":
            lines.append(f"FAILED  {r.model_id}: {r.error}")
        elif r.status == "skipped":
            lines.append(f"skipped {r.model_id} (already built at {r.revision}; --force rebuilds)")
        else:
            lines.append(
                f"built   {r.model_id}: {r.n_rows} rows ({r.n_rows // len(r.variants) // len(r.circuits)} heads x {len(r.variants)} variants{_circuits(r)}) -> {r.path} | fetched {_mb(r.bytes_fetched)} of "
                f"{_mb(r.checkpoint_bytes)} ({100 * r.fetched_share:.1f}%{_rereads(r)}) | "
                + ", ".join(f"{k} {v:.2f}s" for k, v in r.timings.items())
            )
    return "\n".join(lines)


def _rereads(r: ModelResult) -> str:
    """``; read twice: ...`` when the bytes read exceed the distinct bytes by more than 1% (say why, never add them up)."""
    if r.bytes_transferred <= 1.01 * r.bytes_fetched:
        return ""
    return f"; {_mb(r.bytes_transferred)} read in all: a local model's revision digest reads its weights once before a rebuild, a Hub retry reads again"


def _circuits(r: ModelResult) -> str:
    """`` x 2 circuits`` when the rows hold more than one circuit."""
    return "" if len(r.circuits) == 1 else f" x {len(r.circuits)} circuits"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
