"""Artifact stores: the single source of truth where steps meet, and the run layout inside them.

Every object is written whole and atomically together with its sha256; readers verify it, so a
torn or tampered file is refused instead of silently trained on.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fedtwin.errors import ConfigError, IntegrityError, StoreError

if TYPE_CHECKING:
    from fedtwin.config import S3Config

SHA_SUFFIX = ".sha256"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


T = TypeVar("T")


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

    def get_bytes(self, key: str) -> bytes:
        try:
            data, recorded = self._read(key)
        except FileNotFoundError as exc:
            raise StoreError(f"{self.describe(key)} does not exist") from exc
        actual = sha256_hex(data)
        if recorded is None or recorded != actual:
            raise IntegrityError(
                f"{self.describe(key)} is corrupt: sha256 {actual[:12]}… does not match the recorded "
                f"{(recorded or 'none')[:12]}…; delete it and rerun the step that writes it"
            )
        return data

    def put_json(self, key: str, obj: Any, *, overwrite: bool = True) -> str:
        return self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True).encode(), overwrite=overwrite)

    def get_json(self, key: str) -> Any:
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except json.JSONDecodeError as exc:
            raise IntegrityError(f"{self.describe(key)} is not valid JSON: {exc.msg}") from exc
        except (RecursionError, UnicodeDecodeError) as exc:  # hostile nesting, or not text at all
            raise IntegrityError(f"{self.describe(key)} is not valid JSON: {type(exc).__name__}") from exc

    def put_text(self, key: str, text: str, *, overwrite: bool = True) -> str:
        return self.put_bytes(key, text.encode(), overwrite=overwrite)

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode()

    def describe(self, key: str) -> str:
        return f"{self.url.rstrip('/')}/{key}"


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


class LocalStore(ArtifactStore):
    """A directory; each object has a `<name>.sha256` sidecar recording its hash.

    A write is journaled so that a crash at any instant leaves either the old or the new object:
    (1) the new bytes go to `.<name>.pending` (fsynced, renamed into place), (2) the sidecar is
    atomically replaced with the new hash (the commit point), (3) the pending file is renamed over
    the object. A reader that finds the sidecar ahead of the object rolls step 3 forward.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in Path(key).parts:
            raise StoreError(f"invalid store key {key!r}")
        return self.root / key

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(path.name + SHA_SUFFIX)

    @staticmethod
    def _pending(path: Path) -> Path:
        return path.with_name(f".{path.name}.pending")

    @staticmethod
    def _atomic_write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

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
            self._atomic_write(pending, data)
            try:
                self._atomic_write(self._sidecar(path), sha.encode())
            except OSError:
                pending.unlink(missing_ok=True)  # before the commit point: the old object stays whole
                raise
            os.replace(pending, path)

    def _roll_forward(self, path: Path, recorded: str) -> bool:
        """Finish a write interrupted between its commit point and its final rename."""
        pending = self._pending(path)
        try:
            if sha256_hex(pending.read_bytes()) != recorded:
                return False
            os.replace(pending, path)
        except FileNotFoundError:
            return False
        return True

    def _read(self, key: str) -> tuple[bytes, str | None]:
        with self._os_errors("read", key):
            return self._read_verified(key)

    def _read_verified(self, key: str) -> tuple[bytes, str | None]:
        path = self._path(key)
        sidecar = self._sidecar(path)
        recorded = sidecar.read_text().strip() if sidecar.exists() else None
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if recorded is None or not self._roll_forward(path, recorded):
                raise
            return path.read_bytes(), recorded
        if recorded is not None and sha256_hex(data) != recorded and self._roll_forward(path, recorded):
            data = path.read_bytes()
        return data, recorded

    def exists(self, key: str) -> bool:
        path = self._path(key)
        with self._os_errors("check", key):
            return self._sidecar(path).is_file() and (path.is_file() or self._pending(path).is_file())

    def list(self, prefix: str) -> list[str]:
        with self._os_errors("list", prefix):
            return self._list(prefix)

    def _list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        search = base if base.is_dir() else base.parent
        if not search.is_dir():
            return []
        keys = []
        for sidecar in search.rglob("*" + SHA_SUFFIX):
            key = sidecar.relative_to(self.root).as_posix()[: -len(SHA_SUFFIX)]
            if key.startswith(prefix) and not sidecar.name.startswith(".") and self.exists(key):
                keys.append(key)
        return sorted(keys)


def open_store(url: str, s3: S3Config | None = None) -> ArtifactStore:
    """`s3://bucket/prefix` selects the S3 store; anything else is a local directory.

    `s3` is the config's S3 section; its keys win over `FEDTWIN_S3_*` environment variables.
    """
    if url.startswith("s3://"):
        try:
            from fedtwin.s3store import S3Store
        except ImportError as exc:
            raise ConfigError(
                f"store {url} needs boto3; install it with `pip install 'fedtwin[s3]'`"
            ) from exc
        return S3Store.from_url(url, s3)
    if "://" in url:
        raise ConfigError(f"unsupported store URL {url!r}; use a directory path or s3://BUCKET/PREFIX")
    return LocalStore(url)


@dataclass(frozen=True)
class RunLayout:
    """Keys of one run inside a store (see DESIGN.md, 'Storage, layout and tracking')."""

    run_id: str

    @property
    def prefix(self) -> str:
        return f"runs/{self.run_id}/"

    @property
    def config(self) -> str:
        return self.prefix + "config.yaml"

    @property
    def twins(self) -> str:
        return self.prefix + "twins.yaml"

    @property
    def state(self) -> str:
        return self.prefix + "state.json"

    def round_dir(self, round_index: int) -> str:
        return f"{self.prefix}rounds/{round_index:04d}/"

    def global_model(self, round_index: int) -> str:
        return self.round_dir(round_index) + "global.safetensors"

    def updates_dir(self, round_index: int) -> str:
        return self.round_dir(round_index) + "updates/"

    def update_weights(self, round_index: int, twin_id: str) -> str:
        return f"{self.updates_dir(round_index)}{twin_id}.safetensors"

    def update_meta(self, round_index: int, twin_id: str) -> str:
        return f"{self.updates_dir(round_index)}{twin_id}.json"

    def summary(self, round_index: int) -> str:
        return self.round_dir(round_index) + "summary.json"

    def server_state(self, round_index: int) -> str:
        """Strategy state (e.g. FedAdam moments) after aggregating `round_index`."""
        return self.round_dir(round_index) + "server_state.safetensors"

    def report(self, name: str) -> str:
        return f"{self.prefix}report/{name}"


def list_runs(store: ArtifactStore) -> list[str]:
    return sorted({key.split("/")[1] for key in store.list("runs/") if key.endswith("/state.json")})
