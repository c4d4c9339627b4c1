"""Memory allocator settings for tiled prediction on the CPU.

glibc's ``malloc`` gives freed memory back to the system as soon as more than
its *trim threshold* lies free at the top of a heap, and serves large requests
with fresh ``mmap`` pages. Both thresholds adapt as a program runs, but in a
pipeline whose threads free the model's outputs while the model allocates
its next activations, the heap is trimmed and grown again batch after batch:
each time the kernel hands out zeroed pages again (hundreds of MB of page
faults per 2048 x 2048 raster). :func:`tune_allocator` fixes the thresholds so
that freed memory stays with the process for reuse; ``explora-geo predict``
calls it at start. It changes the whole process, so the library's
:func:`~explora_geo.inference.tiles.predict_raster` leaves that choice to its
caller.

.. versionadded:: 0.1
"""

import ctypes
import os
import platform
import sys

#: glibc ``mallopt`` parameters (``<malloc.h>``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: The environment variables with which glibc users set the same thresholds;
#: where one is set, the user's choice stands.
ENVIRONMENT = ('MALLOC_TRIM_THRESHOLD_', 'MALLOC_MMAP_THRESHOLD_')


def tune_allocator(trim_mb: int = 256, mmap_mb: int = 32) -> bool:
    """Keep freed memory in the process instead of returning it at once.

    Sets glibc's ``M_TRIM_THRESHOLD`` (free memory at the top of a heap kept
    before any is returned to the system) and ``M_MMAP_THRESHOLD`` (requests
    from this size on get their own ``mmap``, returned when freed). Memory a
    run has freed is reused by the next batch instead of being faulted in
    again; the peak stays what the run needs, and up to *trim_mb* MB per heap
    stay with the process after it. The settings last for the process.

    Args:
        trim_mb: Trim threshold, in MB.
        mmap_mb: mmap threshold, in MB (32: the largest that glibc's adaptive
            threshold reaches on 64-bit systems).

    Returns:
        True if both were set; False where the C library is not glibc, it
        refused a value, or ``MALLOC_TRIM_THRESHOLD_`` /
        ``MALLOC_MMAP_THRESHOLD_`` are set (the user's settings stand).

    Raises:
        ValueError: If a threshold is not a positive number of MB.
    """
    for name, value in (('trim_mb', trim_mb), ('mmap_mb', mmap_mb)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be a positive number of MB, got {value!r}')
    if any(name in os.environ for name in ENVIRONMENT):
        return False
    if not sys.platform.startswith('linux') or platform.libc_ver()[0] != 'glibc':
        return False
    mallopt = getattr(ctypes.CDLL(None), 'mallopt', None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # The trim threshold first: setting either one stops glibc from adapting
    # both, and a fixed mmap threshold alone leaves the trim threshold at its
    # 128 kB start, which trims even more often.
    trimmed = mallopt(M_TRIM_THRESHOLD, trim_mb << 20)
    mapped = mallopt(M_MMAP_THRESHOLD, mmap_mb << 20)
    return bool(trimmed and mapped)
