"""IO: the run layout and the stores it lives in (a directory or S3), the single source of truth where
steps meet; a run's state.json and the torch-free view of a run (RunContext) read from them.

`base` is the interface, `local` and `s3` the two stores, `layout` the keys of a run; `open_store`
picks the store for a URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedtwin.core.errors import ConfigError
from fedtwin.store.base import ArtifactStore, Lease, LockHeldError, os_error_line, sha256_hex
from fedtwin.store.layout import RunLayout, repair_advice
from fedtwin.store.local import LocalStore
from fedtwin.store.state import list_runs

if TYPE_CHECKING:
    from fedtwin.config import S3Config


def open_store(url: str, s3: S3Config | None = None) -> ArtifactStore:
    """`s3://bucket/prefix` selects the S3 store; anything else is a local directory.

    `s3` is the config's S3 section; its keys win over `FEDTWIN_S3_*` environment variables.
    """
    if url.startswith("s3://"):
        try:
            from fedtwin.store.s3 import S3Store
        except ImportError as exc:
            raise ConfigError(
                f"store {url} needs boto3; install it with `pip install 'fedtwin[s3]'`"
            ) from exc
        return S3Store.from_url(url, s3)
    if "://" in url:
        raise ConfigError(f"unsupported store URL {url!r}; use a directory path or s3://BUCKET/PREFIX")
    return LocalStore(url)


__all__ = [
    "ArtifactStore",
    "Lease",
    "LocalStore",
    "LockHeldError",
    "RunLayout",
    "list_runs",
    "open_store",
    "os_error_line",
    "repair_advice",
    "sha256_hex",
]
