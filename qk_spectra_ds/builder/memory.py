"""Keep the builder's memory flat: hand large freed buffers straight back to the OS.

Each layer allocates and frees float64 copies of its Q/K blocks (tens of MB) in the
prefetch thread and the kernel's per-core threads. glibc serves such blocks with mmap
and returns them on free, but after the first free it raises its mmap threshold (up to
32 MB on 64-bit) so later blocks of that size come from the threads' heaps, which keep
the pages: on a Llama-3.2-1B-shaped build the peak RSS over the imports grew from
~165 MB to ~345 MB that way (benchmarks/bench_build.py). Setting the threshold
explicitly (to its 128 KiB default) turns that adjustment off.
"""

from __future__ import annotations

import ctypes
import platform

M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter number (malloc.h)."""

MMAP_THRESHOLD_BYTES = 128 * 1024


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold for this process (True if set; False off glibc, where nothing is done)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
