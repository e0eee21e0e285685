"""The store interface every step meets through: whole, atomic objects with a sha256 each, and leases.

Every object is written whole and atomically together with its sha256; readers verify it, so a
torn or tampered file is refused instead of silently trained on.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import functools
import hashlib
import json
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from fedtwin.core.errors import IntegrityError, StoreError

if TYPE_CHECKING:
    pass

from fedtwin.store.layout import repair_advice

SHA_SUFFIX = ".sha256"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


T = TypeVar("T")


LEASE_SECONDS = 60.0
"""How long an S3 lease outlives a holder that stopped renewing it (a killed runner)."""


class LockHeldError(StoreError):
    """Another process holds the lock; `holder` says who (pid, host, since; on S3 expires_at)."""

    def __init__(self, key: str, holder: dict[str, Any]) -> None:
        super().__init__(f"{key} is held by {holder}")
        self.holder = holder


class Lease:
    """A held lock. `check` raises LockHeldError once the lock was lost (an S3 lease that could not be
    renewed and was taken over); a local lock cannot be lost while its process lives."""

    def check(self) -> None:
        """Nothing to check for a lock the kernel holds."""


def holder_info(ttl: float | None = None) -> dict[str, Any]:
    """Who holds a lock, for the message a refused process prints."""
    info: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(),
                            "since": datetime.now(UTC).isoformat(timespec="seconds")}
    if ttl is not None:
        info["expires_at"] = time.time() + ttl
    return info


class ArtifactStore(ABC):
    """Key/value store of immutable-ish objects with integrity checks.

    Subclasses implement the four primitives; the typed helpers live here once.
    """

    url: str
    max_concurrency: int = 1
    """Jobs run at once by `run_concurrently`. 1 for a local directory: 8 threads wrote a 128-twin
    shard's updates 1.38x faster but took 1.49x the CPU time (`benchmarks/store_writes.py`), and a
    shard's cores are busy. A server store sets more: its requests mostly wait on round trips."""

    def run_concurrently(self, jobs: Sequence[Callable[[], T]]) -> list[T]:
        """Run store jobs (a few requests each) up to `max_concurrency` at once, e.g. a fleet shard's
        update writes. Results in order; every job runs, then the first failure is raised."""
        if self.max_concurrency <= 1 or len(jobs) <= 1:
            return [job() for job in jobs]
        self._before_threads()
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(jobs))) as pool:
            futures = [pool.submit(job) for job in jobs]
        return [future.result() for future in futures]

    def _before_threads(self) -> None:  # noqa: B027 (a hook: a local directory needs nothing)
        """Build what threads would otherwise race to build (an S3 store's client)."""

    @abstractmethod
    def _write(self, key: str, data: bytes, sha: str) -> None:
        """Store `data` under `key` with its sha256, atomically (all or nothing)."""

    @abstractmethod
    def _read(self, key: str) -> tuple[bytes, str | None]:
        """Return the object and its recorded sha256; raise FileNotFoundError if absent."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True only for completely written objects."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Sorted keys of complete objects under `prefix`."""

    def put_bytes(self, key: str, data: bytes, *, overwrite: bool = True) -> str:
        """Write `data`; with overwrite=False an existing different object is an error, never replaced."""
        sha = sha256_hex(data)
        if not overwrite and self.exists(key):
            existing = self.get_bytes(key)
            if sha256_hex(existing) != sha:
                raise StoreError(f"refusing to overwrite {self.describe(key)} with different content")
            return sha
        self._write(key, data, sha)
        return sha

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> builtins.list[str]:  # `list`: the method
        """Write several objects (a fleet shard's updates), each all or nothing, in order; their sha256s.
        Here: `put_bytes` each, as many at once as the store takes; a local directory batches its syncs."""
        return self.run_concurrently([functools.partial(self.put_bytes, key, data) for key, data in items])

    def _read_hashed(self, key: str) -> tuple[bytes, str | None, str]:
        """`_read` and the sha256 of the bytes read (a store that hashes while reading returns its own)."""
        data, recorded = self._read(key)
        return data, recorded, sha256_hex(data)

    def get_checked(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and their sha256, which matched the recorded one (else IntegrityError)."""
        try:
            data, recorded, actual = self._read_hashed(key)
        except FileNotFoundError as exc:
            advice = repair_advice(self.url, key, missing=True)
            raise StoreError(f"{self.describe(key)} does not exist"
                             + (f"; {advice}" if advice else "")) from exc
        if recorded is None or recorded != actual:
            raise IntegrityError(
                f"{self.describe(key)} is corrupt: sha256 {actual[:12]}… does not match the recorded "
                f"{(recorded or 'none')[:12]}…; {repair_advice(self.url, key)}"
            )
        return data, actual

    def get_bytes(self, key: str) -> bytes:
        return self.get_checked(key)[0]

    def put_json(self, key: str, obj: Any, *, overwrite: bool = True) -> str:
        return self.put_bytes(key, json_bytes(obj), overwrite=overwrite)

    def get_json(self, key: str) -> Any:
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except json.JSONDecodeError as exc:
            raise IntegrityError(f"{self.describe(key)} is not valid JSON: {exc.msg}; "
                                 f"{repair_advice(self.url, key)}") from exc
        except (RecursionError, UnicodeDecodeError) as exc:  # hostile nesting, or not text at all
            raise IntegrityError(f"{self.describe(key)} is not valid JSON: {type(exc).__name__}; "
                                 f"{repair_advice(self.url, key)}") from exc

    def put_text(self, key: str, text: str, *, overwrite: bool = True) -> str:
        return self.put_bytes(key, text.encode(), overwrite=overwrite)

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode()

    def describe(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"

    @abstractmethod
    def lock(self, key: str, ttl: float = LEASE_SECONDS) -> contextlib.AbstractContextManager[Lease]:
        """Hold the lock named `key` while the context lasts; LockHeldError at once if another process
        holds it (never waits). Not a store object: it is not listed and carries no checksum."""


def json_bytes(obj: Any) -> bytes:
    """How `put_json` serializes an object."""
    return json.dumps(obj, indent=2, sort_keys=True).encode()


def os_error_line(exc: OSError, action: str, where: str, option: str = "--store") -> str:
    """One line for a filesystem error: what failed, where, and what to do about it (`option` names
    the flag that points the command at another place)."""
    name = errno.errorcode.get(exc.errno or 0, "")
    reason = f"{(exc.strerror or str(exc)).lower()}" + (f" ({name})" if name else "")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = f"free space on that filesystem (or point {option} elsewhere), then rerun the command"
    elif exc.errno == errno.EROFS:
        fix = f"remount it read-write or point {option} at a writable directory, then rerun the command"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        fix = (f"give this user (uid {os.getuid()}) write permission there (and check `lsattr` for the "
               f"immutable flag), or point {option} elsewhere, then rerun the command")
    else:
        fix = "check that filesystem (dmesg, df, mount), then rerun the command"
    return f"cannot {action} {where}: {reason}; {fix}"
