"""What the multi-cluster member and coordinator share: their settings, polling the store with
backoff and a deadline, the run views they poll, and their errors."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from fedtwin.config import MulticlusterConfig, env_overrides
from fedtwin.core.errors import ConfigError, FedtwinError, StoreError
from fedtwin.store import ArtifactStore, RunLayout

log = logging.getLogger("fedtwin.run.multicluster")
T = TypeVar("T")


class RunFailedError(FedtwinError):
    """The run this process takes part in was marked failed; exit code 3, like QuorumError (the
    usual cause): retrying the same step cannot help, so a workflow engine should not."""

    exit_code = 3


class WaitTimeoutError(FedtwinError):
    """A wait outlasted its deadline (the other side never showed up)."""


def late_key(layout: RunLayout, round_index: int) -> str:
    """`rounds/NNNN/late.json`: updates that arrived after the round was aggregated."""
    return layout.round_dir(round_index) + "late.json"


# ------------------------------------------------------------------------------------ settings
def resolve_settings(
    stored: MulticlusterConfig | None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> MulticlusterConfig:
    """The run's stored `multicluster:` section < `FEDTWIN_MULTICLUSTER__*` variables < CLI flags."""
    data = (stored or MulticlusterConfig()).model_dump()
    env = env_overrides(os.environ if environ is None else environ).get("multicluster", {})
    data.update({k: v for k, v in env.items() if v is not None})  # empty variable: keep the run's value
    data.update({k: v for k, v in (flags or {}).items() if v is not None})
    unknown = sorted(set(data) - set(MulticlusterConfig.model_fields))
    if unknown:
        raise ConfigError(f"unknown multicluster setting(s) {', '.join(unknown)} (valid: "
                          f"{', '.join(MulticlusterConfig.model_fields)}); check FEDTWIN_MULTICLUSTER__*")
    try:
        return MulticlusterConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        raise ConfigError(f"invalid multicluster settings (config < env < flags): {problems}") from exc


def _problem(error: Any) -> str:
    where = ".".join(map(str, error["loc"]))
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"multicluster.{where}: {message}" if where else message


# ------------------------------------------------------------------------------------- polling
@dataclass
class Poller:
    """Looks at the store until a condition holds: exponential backoff, jitter, a deadline.

    The first look is immediate. A look that sees something new (the value `check` returns
    changed, e.g. one more update arrived) resets the interval to `poll_interval`; otherwise it
    grows by `backoff` up to `max_poll_interval`. No pause runs past the deadline.
    """

    settings: MulticlusterConfig
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def until(self, check: Callable[[], tuple[bool, T]], deadline: float) -> tuple[bool, T]:
        """(True, value) once `check` says done; (False, last value) when the deadline passes first."""
        s = self.settings
        interval = s.poll_interval
        seen: object = _UNSEEN
        while True:
            done, value = check()
            if done:
                return True, value
            now = self.clock()
            if now >= deadline:
                return False, value
            if value != seen:
                interval, seen = s.poll_interval, value
            pause = interval * (1.0 + self.rng.uniform(-s.jitter, s.jitter))
            self.sleep(max(0.0, min(pause, s.max_poll_interval, deadline - now)))
            interval = min(interval * s.backoff, s.max_poll_interval)


_UNSEEN = object()


# ---------------------------------------------------------------------------------- run views
def first_open_round(store: ArtifactStore, layout: RunLayout) -> int:
    """The first round without a summary: summaries exist for a prefix of the rounds, so galloping
    then bisecting finds it in O(log rounds) lookups (a resumed member of a long run)."""
    if not store.exists(layout.summary(0)):
        return 0
    low, high = 0, 1  # invariant: summary(low) exists
    while store.exists(layout.summary(high)):
        low, high = high, high * 2
    while high - low > 1:  # summary(high) is missing
        mid = (low + high) // 2
        low, high = (mid, high) if store.exists(layout.summary(mid)) else (low, mid)
    return high


class StateReader:
    """`state.json` when the credentials may read it; None (once, then never asked again) when not.

    The twin identity of the platform chart reads config, fleet, global models and summaries only;
    a member then learns that a run failed only from its wait deadline.
    """

    def __init__(self, store: ArtifactStore, layout: RunLayout) -> None:
        self.store, self.layout = store, layout
        self.readable = True

    def read(self) -> dict[str, Any] | None:
        if not self.readable:
            return None
        try:
            return dict(self.store.get_json(self.layout.state))
        except StoreError as exc:
            if not _is_access_denied(exc):
                raise
            self.readable = False
            log.warning("cannot read %s with these credentials (%s); a failed run is noticed only at the "
                        "wait deadline", self.store.describe(self.layout.state), exc)
            return None


def _is_access_denied(exc: StoreError) -> bool:
    try:
        from fedtwin.store.s3 import S3AccessDeniedError
    except ImportError:  # no boto3: no S3 store, so no S3 permissions either
        return False
    return isinstance(exc, S3AccessDeniedError)


def _raise_if_failed(state: Mapping[str, Any] | None, run_id: str) -> None:
    if state is not None and state.get("status") == "failed":
        raise RunFailedError(f"run {run_id!r} failed: {state.get('reason') or 'no reason recorded'}")


def counted_twins(summary: Mapping[str, Any]) -> set[str]:
    """Twins a round's summary accounts for: aggregated, rejected (with a reason) or skipped."""
    return (set(summary.get("participants", [])) | {r["twin_id"] for r in summary.get("rejected", [])}
            | {s["twin_id"] for s in summary.get("skipped", [])})
