"""Running the report's tasks: in-process, or in joblib worker processes (largest first), warnings replayed in order.

Each per-model analysis and the joint taxonomy is one :class:`Task`. Results do not depend on the number of
workers: each task records its warnings and they are re-issued in task order; :func:`default_jobs` starts workers
only where they pay for their start-up (several models, 2,000+ heads).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from joblib import Parallel, cpu_count, delayed

from ..progress import progress_bar

PARALLEL_MIN_HEADS = 2000
"""Below this many heads a worker's start-up (importing the stack again) costs more than it saves."""


MAX_DEFAULT_JOBS = 4
"""The most workers ``jobs=None`` starts (each imports the whole analysis stack again)."""


def default_jobs(n_models: int, n_heads: int) -> int:
    """Worker processes for ``jobs=None``: one per core (at most 4), only for several models and many heads."""
    if n_models < 2 or n_heads < PARALLEL_MIN_HEADS:
        return 1
    return max(1, min(n_models, cpu_count(), MAX_DEFAULT_JOBS))


def jobs_for(jobs: int | None, models) -> int:
    """``jobs``, or :func:`default_jobs` for these models when None."""
    n_heads = sum(len(rows) for _, rows in models)
    return default_jobs(len(models), n_heads) if jobs is None else max(1, int(jobs))


@dataclass
class Task:
    """One unit of work for :func:`run_tasks`: ``fn(*args)``, scheduled by decreasing ``cost``."""

    key: str
    cost: float
    fn: Callable[..., dict[str, Any]]
    args: tuple


def _keyed(key: str, fn: Callable[..., dict[str, Any]], args: tuple) -> tuple[str, dict[str, Any]]:
    return key, fn(*args)


def run_tasks(
    tasks: list[Task], jobs: int = 1, progress: bool = True, desc: str = "models"
) -> dict[str, dict[str, Any]]:
    """Run the tasks with joblib: in-process and in order (``jobs <= 1``) or in worker processes, largest first.

    Each task records its warnings; they are re-issued here in task order, so
    the output does not depend on ``jobs``.
    """

    jobs = max(1, min(int(jobs), len(tasks)))
    order = tasks if jobs == 1 else sorted(tasks, key=lambda t: -t.cost)  # longest first: the workers finish together
    parallel = Parallel(n_jobs=jobs, return_as="generator_unordered", max_nbytes=None)
    results: dict[str, dict[str, Any]] = {}
    with progress_bar(None, progress, file=sys.stderr, total=len(tasks), desc=desc, unit="task") as bar:
        for key, result in parallel(delayed(_keyed)(task.key, task.fn, task.args) for task in order):
            results[key] = result
            bar.set_postfix_str(key, refresh=False)
            bar.update(1)
    for task in tasks:
        replay_warnings(results[task.key].pop("warnings", []))
    return {task.key: results[task.key] for task in tasks}


def replay_warnings(caught: Sequence[tuple[type, str]]) -> None:
    for category, message in caught:
        warnings.warn(message, category, stacklevel=3)


def recorded_warnings(caught) -> list[tuple[type, str]]:
    relevant = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    return [(w.category, str(w.message)) for w in relevant]
