"""S3Store: the run layout in an S3 bucket (AWS S3, MinIO, SeaweedFS), via boto3.

Every object is one `put_object` of the complete bytes with its sha256 in the same request as user
metadata (`x-amz-meta-sha256`), so an object is either absent or whole with its checksum; readers
verify it (see `ArtifactStore.get_bytes`). Settings, strongest first: the config's `s3:` section,
`FEDTWIN_S3_<KEY>` environment variables (ENDPOINT, REGION, PROFILE, ADDRESSING_STYLE,
CONNECT_TIMEOUT, READ_TIMEOUT, MAX_ATTEMPTS; the endpoint also from `AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL`), then boto3's own defaults. Credentials come from the
standard AWS variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) or a
named profile; they are never part of the config, because the config is stored with the run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
)

from fedtwin.core.errors import ConfigError, StoreError
from fedtwin.store.base import LEASE_SECONDS, ArtifactStore, Lease, LockHeldError, holder_info
from fedtwin.store.s3_settings import (
    ACCESS_CODES,
    ENV_PREFIX,
    MISSING_KEY_CODES,
    SHA_METADATA,
    S3AccessDeniedError,
    S3BucketNotFoundError,
    S3EndpointError,
    S3Settings,
    parse_s3_url,
)

log = logging.getLogger("fedtwin.store.s3")

if TYPE_CHECKING:
    from fedtwin.config import S3Config

class S3Store(ArtifactStore):
    """A prefix in an S3 bucket; keys are the run layout's keys below that prefix."""

    def __init__(self, bucket: str, prefix: str = "", settings: S3Settings | None = None,
                 client: Any | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.settings = settings or S3Settings()
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client
        self._bucket_checked = False

    @classmethod
    def from_url(cls, url: str, config: S3Config | None = None,
                 environ: Mapping[str, str] | None = None) -> S3Store:
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, S3Settings.resolve(config, environ))

    max_concurrency = 8
    """Requests in flight in `run_concurrently` (botocore keeps 10 connections per client): a
    128-twin shard's updates to SeaweedFS on the same 2 cores went 1.40x faster for 11% more client
    CPU (`benchmarks/store_writes.py`); over a network the round trips weigh more."""

    def _before_threads(self) -> None:
        self.client  # noqa: B018 (built once here: boto3 builds clients unsafely from several threads)

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for worker processes: the boto3 client is not, so it is rebuilt there."""
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    # ------------------------------------------------------------------------------ connection
    @property
    def endpoint(self) -> str:
        """The endpoint requests go to, for messages."""
        if self.settings.endpoint:
            return self.settings.endpoint
        client = self._client
        return str(client.meta.endpoint_url) if client is not None else "the default AWS endpoint"

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        s = self.settings
        style = s.addressing_style or ("path" if s.endpoint else "auto")
        boto_config = BotoConfig(
            region_name=s.region,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            retries={"total_max_attempts": s.max_attempts, "mode": "standard"},  # initial try included
            s3={"addressing_style": style},
        )
        try:
            session = boto3.session.Session(profile_name=s.profile) if s.profile else boto3.session.Session()
            return session.client("s3", endpoint_url=s.endpoint, config=boto_config)
        except ProfileNotFound as exc:
            raise ConfigError(
                f"AWS profile {s.profile!r} (s3.profile or {ENV_PREFIX}PROFILE) is not in the AWS "
                "config files; fix the name or use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            ) from exc
        except ValueError as exc:  # e.g. a malformed endpoint URL
            raise ConfigError(f"S3 endpoint {s.endpoint!r} is invalid: {exc}") from exc

    def _key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"invalid store key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Translate boto errors into one-line StoreErrors naming bucket, key, endpoint and the fix."""
        where = self.describe(key) if key is not None else f"s3://{self.bucket}"
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            message = exc.response.get("Error", {}).get("Message") or code
            if code == "NoSuchBucket":
                raise self._no_bucket() from exc
            if code in ACCESS_CODES:
                raise S3AccessDeniedError(
                    f"access denied to {action} {where} at {self.endpoint} ({code}: {message}); check "
                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or s3.profile) and that this identity "
                    "may access the key"
                ) from exc
            raise StoreError(f"cannot {action} {where} at {self.endpoint}: {code}: {message}") from exc
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError) as exc:
            raise S3EndpointError(
                f"S3 endpoint {self.endpoint} is unreachable while trying to {action} {where} "
                f"({type(exc).__name__} after {self.settings.max_attempts} attempts); check "
                f"{ENV_PREFIX}ENDPOINT / s3.endpoint and that the server is up"
            ) from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise S3AccessDeniedError(
                f"no S3 credentials to {action} {where} at {self.endpoint}; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or name a profile in s3.profile"
            ) from exc
        except BotoCoreError as exc:
            raise StoreError(f"cannot {action} {where} at {self.endpoint}: {exc}") from exc

    def _no_bucket(self) -> S3BucketNotFoundError:
        return S3BucketNotFoundError(
            f"bucket {self.bucket!r} does not exist at {self.endpoint}; create it (e.g. `aws s3 mb "
            f"s3://{self.bucket} --endpoint-url {self.endpoint}`) or fix the store URL {self.url}"
        )

    def _check_bucket(self) -> None:
        """A 404 from HEAD has no error code: tell a missing key from a missing bucket, once."""
        if self._bucket_checked:
            return
        with self._errors("open bucket"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket", "NotFound"):
                    raise self._no_bucket() from exc
                raise
        self._bucket_checked = True

    # ------------------------------------------------------------------------------ primitives
    def _write(self, key: str, data: bytes, sha: str) -> None:
        with self._errors("write", key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                                   Metadata={SHA_METADATA: sha})

    def _read(self, key: str) -> tuple[bytes, str | None]:
        with self._errors("read", key):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in MISSING_KEY_CODES:
                    self._check_bucket()
                    raise FileNotFoundError(key) from exc
                raise
            data = response["Body"].read()
        return data, response.get("Metadata", {}).get(SHA_METADATA)

    def exists(self, key: str) -> bool:
        with self._errors("check", key):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in MISSING_KEY_CODES:
                    self._check_bucket()
                    return False
                raise
        return True

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        strip = len(f"{self.prefix}/") if self.prefix else 0
        keys: list[str] = []
        with self._errors("list", prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    name = item["Key"]
                    if not name.endswith("/"):  # directory markers some servers create
                        keys.append(name[strip:])
        return sorted(keys)

    def describe(self, key: str) -> str:
        return f"{self.url}/{key}"

    @contextmanager
    def lock(self, key: str, ttl: float = LEASE_SECONDS) -> Iterator[Lease]:
        """A lease object written with a conditional put (If-None-Match, or If-Match to take over an
        expired one), renewed every ttl/3 by a thread and deleted on release. A holder killed without
        releasing blocks others until its `expires_at` (its own clock: keep the hosts' clocks in sync)."""
        lease = S3Lease(self, key, ttl)
        lease.acquire()
        try:
            yield lease
        finally:
            lease.release()


def _lapsed(holder: dict[str, Any]) -> bool:
    """An expired lease, or one whose holder was a process on this host that no longer runs (a runner
    killed here is resumed at once instead of after its lease's expiry)."""
    expires = holder.get("expires_at")
    if not isinstance(expires, int | float) or expires < time.time():
        return True
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


class S3Lease(Lease):
    """One holder's lease object: JSON naming the holder and when the lease expires."""

    def __init__(self, store: S3Store, key: str, ttl: float) -> None:
        self.store, self.key, self.ttl = store, key, ttl
        self.nonce = uuid.uuid4().hex
        self.etag: str | None = None
        self.lost: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps({**holder_info(self.ttl), "nonce": self.nonce}).encode()

    def _put(self, **condition: str) -> bool:
        """One conditional put; False when the condition failed (someone else holds or changed it)."""
        store = self.store
        with store._errors("lock", self.key):
            try:
                response = store.client.put_object(Bucket=store.bucket, Key=store._key(self.key),
                                                   Body=self._body(), **condition)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412",
                                                                  "ConditionalRequestConflict"):
                    return False
                raise
        self.etag = response["ETag"]
        return True

    def _current(self) -> tuple[dict[str, Any], str | None]:
        store = self.store
        with store._errors("read", self.key):
            try:
                response = store.client.get_object(Bucket=store.bucket, Key=store._key(self.key))
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in MISSING_KEY_CODES:
                    return {}, None
                raise
            body = response["Body"].read()
        try:
            holder = json.loads(body)
        except ValueError:
            holder = {}
        return (holder if isinstance(holder, dict) else {}), response.get("ETag")

    def acquire(self) -> None:
        store = self.store
        store._check_bucket()
        if not self._put(IfNoneMatch="*"):
            holder, etag = self._current()
            if etag is None or not _lapsed(holder) or not self._put(IfMatch=etag):
                raise LockHeldError(self.key, holder)
        holder, _ = self._current()  # a server that ignored the condition: the last writer wins
        if holder.get("nonce") != self.nonce:
            raise LockHeldError(self.key, holder)
        self._thread = threading.Thread(target=self._renew, name="fedtwin-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if self.etag is None or not self._put(IfMatch=self.etag):
                    self.lost = self._current()[0]
                    log.error("lost the lease %s to %s", self.store.describe(self.key), self.lost)
                    return
            except StoreError as exc:  # keep trying until the lease would expire
                log.warning("could not renew the lease %s: %s", self.store.describe(self.key), exc)

    def check(self) -> None:
        if self.lost is not None:
            raise LockHeldError(self.key, self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.lost is None and self.etag is not None:
            store = self.store
            key = store._key(self.key)
            with contextlib.suppress(ClientError, BotoCoreError):  # else it expires by itself
                try:
                    store.client.delete_object(Bucket=store.bucket, Key=key, IfMatch=self.etag)
                except ClientError as exc:  # a server without conditional deletes: ours, so delete it
                    if exc.response.get("Error", {}).get("Code") not in ("NotImplemented", "InvalidArgument"):
                        raise
                    store.client.delete_object(Bucket=store.bucket, Key=key)


__all__ = [
    "ACCESS_CODES",
    "ENV_PREFIX",
    "MISSING_KEY_CODES",
    "SHA_METADATA",
    "S3AccessDeniedError",
    "S3BucketNotFoundError",
    "S3EndpointError",
    "S3Lease",
    "S3Settings",
    "S3Store",
    "parse_s3_url",
]
