"""Real filesystem faults for tests and benchmarks/faults.py: a full disk, a read-only store, a
directory even root may not write to.

Each is the kernel's own error, not a mock: a small tmpfs (ENOSPC), a read-only bind mount (EROFS),
an immutable ext4 directory (EPERM: root ignores permission bits, not the immutable flag). They need
root (CAP_SYS_ADMIN, CAP_LINUX_IMMUTABLE); a fault that cannot be set up raises FaultSetupError
with one line, which the tests turn into a failure (never a skip: a skipped fault test reads as a
pass).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


class FaultSetupError(RuntimeError):
    """The fault could not be created on this machine (not root, no mount, no chattr)."""


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise FaultSetupError(f"`{' '.join(argv)}` failed: {result.stderr.strip() or result.returncode} "
                              "(these fault tests need root: mount and chattr)")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (created if needed); unmounted on exit, even if busy."""
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> Path:
    """Fill the filesystem holding `path` to the last byte; returns the filler file (delete it to free).

    Unbuffered writes of shrinking sizes, so no buffered remainder fails later when the file closes.
    """
    filler = path / f".filler-{os.getpid()}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        size = 1 << 20
        while size:
            try:
                os.write(fd, b"\0" * size)
            except OSError:
                size //= 2
    finally:
        os.close(fd)
    return filler


@contextlib.contextmanager
def read_only_view(source: Path, view: Path) -> Iterator[Path]:
    """`view` shows `source` read-only (a bind mount remounted ro): every write there is EROFS."""
    view.mkdir(parents=True, exist_ok=True)
    _run("mount", "--bind", str(source), str(view))
    try:
        _run("mount", "-o", "remount,bind,ro", str(view))
        yield view
    finally:
        subprocess.run(["umount", "-l", str(view)], capture_output=True)


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[Path]:
    """`chattr +i` on a directory: nobody, root included, may create or rename entries in it (EPERM)."""
    _run("chattr", "+i", str(path))
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


@contextlib.contextmanager
def required(fault: contextlib.AbstractContextManager[Path]) -> Iterator[Path]:
    """For tests: a fault that cannot be set up fails the test with its one line (never a skip)."""
    import pytest

    try:
        value = fault.__enter__()
    except FaultSetupError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield value
    finally:
        fault.__exit__(None, None, None)


def grow(path: Path, size: str) -> None:
    """Resize the tmpfs mounted at `path` (a full disk that got space freed)."""
    _run("mount", "-o", f"remount,size={size}", str(path))
