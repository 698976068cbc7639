"""Give freed memory back to the operating system after the model is released (on cleanup).

Loading a model and running it on a new inference thread allocates in several glibc malloc arenas; after
cleanup most of it is free but stays mapped, so every configure/cleanup cycle grew the resident size by
several MB (bench/reliability.py, churn). ``malloc_trim`` returns the free pages of every arena.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys


def release_freed_memory() -> None:
    """Collect garbage, then ask glibc to return free heap pages to the system (a no-op elsewhere)."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return
    trim(0)
