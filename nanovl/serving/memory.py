"""glibc malloc settings of a stage's own process; the launcher sets the default for all of them
(MALLOC_MMAP_THRESHOLD_ in nanovl.serving.launch.server_env)."""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3   # glibc's mallopt() parameter number (malloc.h)


def set_mmap_threshold(nbytes: int) -> bool:
    """Blocks of `nbytes` and more are mmapped (and unmapped when freed); smaller ones come from the heap. Fixed,
    as the launcher's setting is: glibc stops moving it. -> whether this libc took it (False off glibc)."""
    libc = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(libc), "mallopt", None) if libc else None
    return bool(mallopt is not None and mallopt(M_MMAP_THRESHOLD, nbytes))
