"""The S3 store's settings (config < FEDTWIN_S3_* environment < boto3 defaults), its URL and its errors."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from fedtwin.core.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from fedtwin.config import S3Config

SHA_METADATA = "sha256"
"""User-metadata key of the recorded sha256 (sent as the `x-amz-meta-sha256` header)."""
ENV_PREFIX = "FEDTWIN_S3_"
AddressingStyle = Literal["auto", "path", "virtual"]

ACCESS_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden",
                "InvalidToken", "ExpiredToken", "AllAccessDisabled"}
MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}


class S3BucketNotFoundError(StoreError):
    """The store's bucket does not exist at the endpoint."""


class S3AccessDeniedError(StoreError):
    """The credentials are missing, wrong, or lack permission for the object."""


class S3EndpointError(StoreError):
    """The S3 endpoint could not be reached (refused, timed out, or closed the connection)."""


@dataclass(frozen=True)
class S3Settings:
    """Resolved connection settings (no secrets: those stay with boto3's credential chain)."""

    endpoint: str | None = None
    region: str | None = None
    profile: str | None = None
    addressing_style: AddressingStyle | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 5

    @classmethod
    def resolve(cls, config: S3Config | None = None, environ: Mapping[str, str] | None = None) -> S3Settings:
        """Config values win over `FEDTWIN_S3_*` variables, which win over the defaults here."""
        env = os.environ if environ is None else environ
        given = config.model_dump() if config is not None else {}
        values: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            value = given.get(name)
            if value is None:
                raw = env.get(ENV_PREFIX + name.upper())
                if not raw and name == "endpoint":  # boto3's own variables, so path style applies too
                    raw = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
                value = raw if raw else None
            if value is None:
                continue
            try:
                values[name] = _coerce(name, value)
            except ValueError as exc:
                raise ConfigError(
                    f"S3 setting {name}={value!r} (s3.{name} or {ENV_PREFIX}{name.upper()}) is invalid: {exc}"
                ) from exc
        return cls(**values)


def _coerce(name: str, value: Any) -> Any:
    if name == "max_attempts":
        attempts = int(value)
        if attempts < 1:
            raise ValueError("must be at least 1")
        return attempts
    if name in ("connect_timeout", "read_timeout"):
        seconds = float(value)
        if seconds <= 0:
            raise ValueError("must be positive")
        return seconds
    if name == "addressing_style" and value not in ("auto", "path", "virtual"):
        raise ValueError("use auto, path or virtual")
    return str(value)


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` -> ("bucket", "some/prefix")."""
    if not url.startswith("s3://"):
        raise ConfigError(f"not an S3 store URL: {url!r}; use s3://BUCKET/PREFIX")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ConfigError(f"store URL {url!r} names no bucket; use s3://BUCKET/PREFIX")
    return bucket, prefix.strip("/")
