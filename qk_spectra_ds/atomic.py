"""Atomic file writes, shared by the dataset writer, the tables and the figures.

A file is written under a temporary name beside its target and moved into place
with ``os.replace`` only when complete, so a reader (or an interrupted run) never
sees half a file, and a failed write leaves the previous version untouched.

A full disk (or quota) is one line naming the file and what to do (:class:`DiskWriteError`),
and the temporary file is removed. A process killed mid-write (kill -9, OOM) cannot
remove its temporary file: the name carries the host and process id
(``.<target>.<host>-<pid>.<random>.tmp``), and :func:`sweep_stale_temporaries`, run at
the start of a build or report, removes those whose process is gone (on this host; on
another host after a day), never a running writer's.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskWriteError

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
"""Errors of a write that more free space (or a smaller file) would have let through."""
FOREIGN_STALE_SECONDS = 24 * 3600
"""Age after which another host's temporary file counts as abandoned (a write never takes a day)."""
LEGACY_STALE_SECONDS = 600
"""Age after which a temporary file without host and pid (written before they were recorded) counts as abandoned."""

_TEMPORARY = re.compile(r"^\.(?P<target>.+?)\.(?:(?P<host>[A-Za-z0-9]{1,20})-(?P<pid>\d+)\.)?[^.]+\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:20] or "host"


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; move it into place only on success.

    A failure removes the temporary file; a full disk is raised as a one-line :class:`DiskWriteError`.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{_host()}-{os.getpid()}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        _raise_if_disk_full(exc, target)
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp_path, target)
    except OSError as exc:
        _raise_if_disk_full(exc, target)
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _raise_if_disk_full(exc: OSError, target: Path) -> None:
    """Raise the one-line DiskWriteError for a full disk or quota (the temporary file is removed by the caller)."""
    if isinstance(exc, DiskWriteError) or exc.errno not in DISK_FULL_ERRNOS:
        return
    reason = os.strerror(exc.errno).lower()
    raise DiskWriteError(
        f"cannot write {target} ({reason}): free space on that disk (or write elsewhere) and rerun; "
        "nothing of this file was kept"
    ) from None


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def sweep_stale_temporaries(directory: str | os.PathLike, now: float | None = None) -> list[Path]:
    """Remove the temporary files under ``directory`` that an interrupted writer left behind; returns them.

    Removed: this host's whose process no longer runs, another host's older than a day, and
    ones without host and pid older than ten minutes. A running writer's file is kept.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    now = time.time() if now is None else now
    host, removed = _host(), []
    for path in directory.rglob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match is None or not path.is_file():
            continue
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        if match["pid"] is None:
            stale = age > LEGACY_STALE_SECONDS
        elif match["host"] == host:
            stale = not _running(int(match["pid"]))
        else:
            stale = age > FOREIGN_STALE_SECONDS
        if stale:
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass  # gone already, or not ours to remove: the next run tries again
    return removed


def _running(pid: int) -> bool:
    """True if a process with this id exists on this host (one that we may not signal counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
