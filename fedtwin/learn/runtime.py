"""The machine under the trainer: which torch device, and glibc's heap policy for large fleets.

Neither changes a float: they decide where the computation runs and how its memory is handed out.
"""

from __future__ import annotations

import ctypes
import functools
import sys

import torch

from fedtwin.core.errors import ConfigError


class DeviceError(ConfigError):
    """The requested torch device is not available on this machine."""


def resolve_device(device: str) -> torch.device:
    """Fail with the fix instead of a deep torch error when CUDA is asked for but missing."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise DeviceError(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"device {device!r} requested but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}); use device 'cpu' or install a CUDA build of torch on a GPU machine"
        )
    return torch.device(device)


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (glibc >= 2.33): the heap's sizes in bytes."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


TRIM_SLACK = 1 << 28
"""Free heap bytes (256 MiB) tolerated before `trim_heap` hands them back to the kernel."""


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc's allocator, its thresholds set for big tensors once per process; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 1 << 28)  # M_MMAP_THRESHOLD: tensors up to 256 MiB come from the heap
        libc.mallopt(-1, 1 << 28)  # M_TRIM_THRESHOLD: keep up to 256 MiB of freed heap between ops
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc (no mallopt/malloc_trim symbol)
        return None
    return libc


def _free_heap_bytes(libc: ctypes.CDLL) -> int | None:
    """Bytes free inside the heap (None before glibc 2.33, which lacks mallinfo2)."""
    try:
        mallinfo2 = libc.mallinfo2
    except AttributeError:
        return None
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().fordblks)


def trim_heap() -> None:
    """Allocator policy for large fleets (Linux/glibc); called before each local update.

    glibc maps every allocation above its mmap threshold (at most 32 MiB: one [1024, 128, 64]
    activation) fresh from the kernel and unmaps it when freed, so every op of a large fleet paid
    page faults; a 256 MiB threshold keeps such tensors in the heap. Freed memory inside the heap
    still grows update after update (fragmentation), so once more than `TRIM_SLACK` is free,
    `malloc_trim` returns it; not on every call, since the next update faults each trimmed page
    back in. The measurements are in benchmarks/README.md. Elsewhere a no-op.
    """
    libc = _glibc()
    if libc is None:
        return
    free = _free_heap_bytes(libc)
    if free is None or free > TRIM_SLACK:
        libc.malloc_trim(0)
