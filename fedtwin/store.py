"""Artifact stores: the single source of truth where steps meet, and the run layout inside them.

Every object is written whole and atomically together with its sha256; readers verify it, so a
torn or tampered file is refused instead of silently trained on.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import secrets
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fedtwin.errors import ConfigError, IntegrityError, StoreError
from fedtwin.formats import durable_temp, write_atomic

if TYPE_CHECKING:
    from fedtwin.config import S3Config

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

    def get_bytes(self, key: str) -> bytes:
        try:
            data, recorded = self._read(key)
        except FileNotFoundError as exc:
            advice = repair_advice(self.url, key, missing=True)
            raise StoreError(f"{self.describe(key)} does not exist"
                             + (f"; {advice}" if advice else "")) from exc
        actual = sha256_hex(data)
        if recorded is None or recorded != actual:
            raise IntegrityError(
                f"{self.describe(key)} is corrupt: sha256 {actual[:12]}… does not match the recorded "
                f"{(recorded or 'none')[:12]}…; {repair_advice(self.url, key)}"
            )
        return data

    def put_json(self, key: str, obj: Any, *, overwrite: bool = True) -> str:
        return self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True).encode(), overwrite=overwrite)

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
        if key.startswith("/") or ".." in Path(key).parts:
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
        with self._os_errors("read", key):
            path = self._path(key)
            recorded, data = self._read_pair(path)  # a matching pair is a committed object: no lock needed
            if recorded is not None and (data is None or sha256_hex(data) != recorded):
                with self._directory_lock(path.parent, exclusive=False):  # maybe a commit in between
                    recorded, data = self._read_pair(path)
                if recorded is not None and (data is None or sha256_hex(data) != recorded):
                    with self._directory_lock(path.parent, exclusive=True):  # a crashed write: finish it
                        recorded, data = self._read_pair(path)
                        if recorded is not None and (data is None or sha256_hex(data) != recorded) \
                                and self._roll_forward(path, recorded):
                            data = path.read_bytes()
            if data is None:
                raise FileNotFoundError(key)
            return data, recorded

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

    @property
    def runner_lock(self) -> str:
        """Held by the one `fedtwin run` driving the run (not a store object)."""
        return self.prefix + "runner.lock"

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
    """Runs by their config.yaml (what makes a run initialized), so a lost state.json hides none."""
    return sorted({key.split("/")[1] for key in store.list("runs/")
                   if key.count("/") == 2 and key.endswith("/config.yaml")})


_ROUND_OBJECT = re.compile(r"rounds/(\d{4})/(global|server_state)\.safetensors")
_SUMMARY = re.compile(r"rounds/(\d{4})/summary\.json")
_UPDATE = re.compile(r"rounds/(\d{4})/updates/([^/]+)\.(?:json|safetensors)")


def repair_advice(store_url: str, key: str, missing: bool = False) -> str:
    """What to do about one damaged object of a run, as commands that work (tests/test_repair.py follows
    each one). `missing`: the object is gone rather than corrupt; only what a repair rebuilds is named."""
    parts = key.split("/", 2)
    generic = "" if missing else "delete it and rerun the step that writes it"
    if len(parts) < 3 or parts[0] != "runs":
        return generic
    run, rest = parts[1], parts[2]
    store = f" --store {store_url}"
    delete = "" if missing else "delete it and "
    repair = f"`fedtwin runs repair {run}{store}`"
    if rest in ("state.json", "twins.yaml") or _ROUND_OBJECT.fullmatch(rest):
        return f"{delete}run {repair}, which rebuilds it from the run's config and stored rounds"
    if missing:
        return ""
    if rest == "config.yaml":
        return f"delete it and rerun `fedtwin step init --run-id {run}{store}` with the run's original config"
    if match := _SUMMARY.fullmatch(rest):
        return (f"delete it and run {repair}, then resume the run: round {int(match[1])} is aggregated again "
                "from its stored updates")
    if match := _UPDATE.fullmatch(rest):
        return (f"delete it and rerun `fedtwin step train --run {run} --round {int(match[1])} --twin "
                f"{match[2]}{store}` (once its round is aggregated only a local-DP run reads it again)")
    if rest.startswith("report/"):
        return (f"delete {store_url.rstrip('/')}/runs/{run}/report/evaluation.json and rerun "
                f"`fedtwin step evaluate --run {run}{store}`")
    return generic
