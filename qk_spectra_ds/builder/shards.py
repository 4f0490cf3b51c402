"""Splitting a family's models over machines: ``--shard I/N`` takes models I, I+N, ...; ``auto`` reads a SLURM array task."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..errors import BuildError

SHARD_AUTO = "auto"


def slurm_array_shard(environ: Mapping[str, str]) -> str:
    """``"I/N"`` of this SLURM array task: I = SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, N = SLURM_ARRAY_TASK_COUNT.

    SLURM sets these in every task of ``sbatch --array``; ``--array=1-4`` gives
    tasks 1..4 with MIN 1, so I is 0..3. Outside an array job: one line saying so.
    A step (``--array=0-6:2``) leaves gaps that I/N cannot name: refused too.
    """
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN")
    missing = [n for n in names if not str(environ.get(n, "")).strip()]
    if missing:
        raise BuildError(
            f"--shard auto reads a SLURM array's task id and count, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set (not a task of sbatch --array?): "
            "run it from an array job, or pass --shard I/N"
        )
    try:
        task, count, low = (int(str(environ[n]).strip()) for n in names)
    except ValueError:
        raise BuildError(
            f"--shard auto: {', '.join(f'{n}={environ[n]!r}' for n in names)} are not whole numbers"
        ) from None
    step = str(environ.get("SLURM_ARRAY_TASK_STEP", "1")).strip() or "1"
    high = str(environ.get("SLURM_ARRAY_TASK_MAX", "")).strip()
    index = task - low
    if step != "1" or (high.lstrip("-").isdigit() and int(high) - low + 1 != count) or not 0 <= index < count:
        raise BuildError(
            f"--shard auto needs a contiguous SLURM array (--array=0-{max(count, 1) - 1}); this one has task id {task}, "
            f"min {low}, max {high or '?'}, step {step}, count {count}: use --array=A-B without a step or %, or --shard I/N"
        )
    return f"{index}/{count}"


def resolve_shard(shard: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """``shard`` as ``"I/N"``: ``"auto"`` is read from the SLURM array variables (:func:`slurm_array_shard`)."""
    if shard is None or str(shard).strip().lower() != SHARD_AUTO:
        return shard
    return slurm_array_shard(os.environ if environ is None else environ)


def select_shard(specs: list[str], shard: str) -> list[str]:
    """Models I, I+N, ... of the list for shard ``"I/N"`` (0-based) or ``"auto"``, so N machines split a family."""
    shard = resolve_shard(shard)
    try:
        index, count = (int(x) for x in str(shard).split("/"))
        if not 0 <= index < count:
            raise ValueError
    except ValueError:
        raise BuildError(f"--shard {shard!r} is not of the form I/N with 0 <= I < N (e.g. 0/2), nor auto") from None
    return specs[index::count]
