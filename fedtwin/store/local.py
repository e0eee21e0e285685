"""The local store: a directory, each object journaled beside a sha256 sidecar."""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import fcntl
import glob
import json
import os
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedtwin.core.errors import StoreError
from fedtwin.core.formats import durable_temp, write_atomic

if TYPE_CHECKING:
    pass

from fedtwin.store.base import (
    LEASE_SECONDS,
    SHA_SUFFIX,
    ArtifactStore,
    Lease,
    LockHeldError,
    holder_info,
    os_error_line,
    sha256_hex,
)


def _write_new(path: Path, data: bytes) -> None:
    """`data` in a file that must not exist yet (a name of this write's own), not synced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(directory: Path) -> bool:
    """`syncfs(2)` of the filesystem holding `directory`: all its written data on disk in one call
    (Linux); False where the call is missing or fails."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(directory, os.O_RDONLY)
    except (OSError, AttributeError):
        return False
    try:
        return bool(hasattr(libc, "syncfs") and libc.syncfs(fd) == 0)
    finally:
        os.close(fd)


_WRITER_TOKEN = re.compile(r"[0-9a-f]{16}")


def _pending_owners(name: str) -> set[str]:
    """The objects whose pending file `name` can be, exactly as `LocalStore._pendings` finds them:
    `.<object>.<writer token>.pending`, or `.<object>.pending` (the single name older versions used)."""
    if not (name.startswith(".") and name.endswith(".pending")):
        return set()
    inner = name[1 : -len(".pending")]
    head, _, token = inner.rpartition(".")
    return {inner, head} if head and _WRITER_TOKEN.fullmatch(token) else {inner}


SYNCFS_MIN_FILES = 8
"""From this many files a batch is synced by one `syncfs` instead of an fsync per file."""


def _sync_files(files: list[Path]) -> None:
    """Make `files` durable: one `syncfs` per filesystem for a batch, else (or where it fails) an
    fsync of each file."""
    if len(files) >= SYNCFS_MIN_FILES:
        devices: dict[int, Path] = {}
        for f in files:
            devices.setdefault(os.stat(f.parent).st_dev, f.parent)
        if all(_syncfs(directory) for directory in devices.values()):
            return
    for f in files:
        _fsync_path(f)


class LocalStore(ArtifactStore):
    """A directory; each object has a `<name>.sha256` sidecar recording its hash.

    A write is journaled so that a crash at any instant leaves either the old or the new object:
    (1) the new bytes go to `.<name>.<writer>.pending` (fsynced; a name of its own per writer, so
    two writers of one key never share a file), (2) the sidecar is atomically replaced with the new
    hash (the commit point), (3) the pending file is renamed over the object. A reader that finds
    the sidecar ahead of the object rolls step 3 forward. Steps 2 and 3 run under an exclusive
    `flock` of the object's directory, and a reader that finds sidecar and object disagree reads
    them again holding it shared, so concurrent writers of one key leave one of their objects whole
    and readers never take a sidecar and an object from different writes for corruption.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):  # as Path(key).parts would find it, faster
            raise StoreError(f"invalid store key {key!r}")
        return self.root / key

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + SHA_SUFFIX)

    @staticmethod
    def _pending(path: Path) -> Path:
        """A new pending file name for one write of `path`."""
        return path.with_name(f".{path.name}.{secrets.token_hex(8)}.pending")

    @staticmethod
    def _pendings(path: Path) -> list[Path]:
        """Pending files of `path` left by writers (and the single name older versions used)."""
        pattern = f".{glob.escape(path.name)}.{'[0-9a-f]' * 16}.pending"
        legacy = path.with_name(f".{path.name}.pending")
        return sorted(path.parent.glob(pattern)) + ([legacy] if legacy.is_file() else [])

    @staticmethod
    @contextlib.contextmanager
    def _directory_lock(directory: Path, exclusive: bool) -> Iterator[None]:
        """`flock` of a directory: writers commit exclusively, readers read sidecar and object shared."""
        try:
            fd = os.open(directory, os.O_RDONLY)
        except FileNotFoundError:  # nothing stored there yet: nothing to read or to race with
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def _os_errors(self, action: str, key: str) -> Iterator[None]:
        """Disk full, read-only, permission denied...: one StoreError naming the object and the fix."""
        try:
            yield
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and action != "write":
                raise  # a missing object is the caller's business (get_bytes names it)
            raise StoreError(os_error_line(exc, action, self.describe(key))) from exc

    def _write(self, key: str, data: bytes, sha: str) -> None:
        path = self._path(key)
        pending = self._pending(path)
        with self._os_errors("write", key):
            write_atomic(pending, data)
            try:
                sidecar_tmp = durable_temp(self._sidecar(path), sha.encode())
            except OSError:
                pending.unlink(missing_ok=True)  # before the commit point: the old object stays whole
                raise
            with self._directory_lock(path.parent, exclusive=True):
                os.replace(sidecar_tmp, self._sidecar(path))  # the commit point
                os.replace(pending, path)

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> builtins.list[str]:
        """The journaled write of `_write` for a batch, with its syncs batched: every object's pending
        file and sidecar are written, then made durable together (`_sync_files`: one `syncfs`), then
        each directory commits its objects in order under one lock and is fsynced once. A crash before
        a commit leaves that object's old version whole, as for a single write."""
        shas = [sha256_hex(data) for _, data in items]
        staged: builtins.list[tuple[Path, Path, Path]] = []  # (object, pending, sidecar temp)
        written: builtins.list[Path] = []  # to remove if the batch fails before its commits
        with self._os_errors("write", items[0][0] if items else ""):
            try:
                made: set[Path] = set()
                for (key, data), sha in zip(items, shas, strict=True):
                    path = self._path(key)
                    if path.parent not in made:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        made.add(path.parent)
                    pending = self._pending(path)
                    written.append(pending)
                    _write_new(pending, data)
                    written.append(pending.with_name(pending.name + ".sha256-new"))  # this write's own name
                    _write_new(written[-1], sha.encode())
                    staged.append((path, pending, written[-1]))
                _sync_files(written)
            except BaseException:
                for f in written:
                    f.unlink(missing_ok=True)
                raise
            directories = list(dict.fromkeys(path.parent for path, _, _ in staged))
            for directory in directories:
                with self._directory_lock(directory, exclusive=True):
                    for path, pending, tmp in staged:
                        if path.parent == directory:
                            os.replace(tmp, self._sidecar(path))  # the commit point
                            os.replace(pending, path)
                _fsync_path(directory)
        return shas

    def _roll_forward(self, path: Path, recorded: str) -> bool:
        """Finish a write interrupted between its commit point and its final rename (call it holding
        the directory's exclusive lock)."""
        for pending in self._pendings(path):
            try:
                if sha256_hex(pending.read_bytes()) == recorded:
                    os.replace(pending, path)
                    return True
            except FileNotFoundError:
                continue
        return False

    def _read(self, key: str) -> tuple[bytes, str | None]:
        data, recorded, _ = self._read_hashed(key)
        return data, recorded

    def _read_hashed(self, key: str) -> tuple[bytes, str | None, str]:
        with self._os_errors("read", key):
            path = self._path(key)
            recorded, data = self._read_pair(path)  # a matching pair is a committed object: no lock needed
            actual = sha256_hex(data) if data is not None else None
            if recorded is not None and actual != recorded:
                with self._directory_lock(path.parent, exclusive=False):  # maybe a commit in between
                    recorded, data = self._read_pair(path)
                    actual = sha256_hex(data) if data is not None else None
                if recorded is not None and actual != recorded:
                    with self._directory_lock(path.parent, exclusive=True):  # a crashed write: finish it
                        recorded, data = self._read_pair(path)
                        actual = sha256_hex(data) if data is not None else None
                        if recorded is not None and actual != recorded and self._roll_forward(path, recorded):
                            data = path.read_bytes()
                            actual = sha256_hex(data)
            if data is None or actual is None:
                raise FileNotFoundError(key)
            return data, recorded, actual

    def _read_pair(self, path: Path) -> tuple[str | None, bytes | None]:
        """The recorded sha256 and the object's bytes, each None when absent."""
        try:
            recorded: str | None = self._sidecar(path).read_text().strip()
        except FileNotFoundError:
            recorded = None
        try:
            return recorded, path.read_bytes()
        except FileNotFoundError:
            return recorded, None

    @contextlib.contextmanager
    def lock(self, key: str, ttl: float = LEASE_SECONDS) -> Iterator[Lease]:
        """An OS file lock (`flock`): the kernel drops it when the holder dies, even by SIGKILL, so `ttl`
        is not needed. The file names its holder and is removed on release."""
        path = self._path(key)
        created = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
        with self._os_errors("lock", key):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = self._take_file_lock(key, path)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(holder_info()).encode())
        try:
            yield Lease()
        finally:
            with contextlib.suppress(OSError):
                path.unlink()  # while still locked: a process waiting on the old inode retries
            os.close(fd)
            for directory in created:  # deepest first; only those the lock made and nothing else filled
                with contextlib.suppress(OSError):
                    directory.rmdir()

    @staticmethod
    def _take_file_lock(key: str, path: Path) -> int:
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = LocalStore._holder(fd)
                os.close(fd)
                raise LockHeldError(key, holder) from None
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed it as we opened it: take the new file

    @staticmethod
    def _holder(fd: int) -> dict[str, Any]:
        """Who holds the lock, as it wrote right after taking it (waiting briefly if it has not yet)."""
        for _ in range(20):
            try:
                holder = json.loads(os.pread(fd, 4096, 0))
                if isinstance(holder, dict):
                    return holder
            except ValueError:
                pass
            time.sleep(0.025)
        return {}

    def exists(self, key: str) -> bool:
        path = self._path(key)
        with self._os_errors("check", key):
            return self._sidecar(path).is_file() and (path.is_file() or bool(self._pendings(path)))

    def list(self, prefix: str) -> list[str]:
        with self._os_errors("list", prefix):
            return self._list(prefix)

    def _list(self, prefix: str) -> builtins.list[str]:  # `list` here is the method above
        """Keys whose sidecar and object (or a pending file to roll forward) are there, as `exists`
        decides, from one directory listing each instead of a lookup per key."""
        base = self._path(prefix) if prefix else self.root
        search = base if base.is_dir() else base.parent
        if not search.is_dir() or not search.is_relative_to(self.root):  # no store (yet) at the root
            return []
        keys = []
        for directory, _, files in os.walk(search):
            names = set(files)
            pending = set().union(*map(_pending_owners, files))
            folder = Path(directory).relative_to(self.root).as_posix()
            for name in files:
                if not name.endswith(SHA_SUFFIX) or name.startswith("."):
                    continue
                obj = name[: -len(SHA_SUFFIX)]
                key = obj if folder == "." else f"{folder}/{obj}"
                if key.startswith(prefix) and (obj in names or obj in pending):
                    keys.append(key)
        return sorted(keys)
