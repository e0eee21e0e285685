"""The multi-cluster round protocol: members and a coordinator that meet only through the store.

One Argo DAG cannot span clusters, so clusters never talk to each other (DESIGN.md, Multi-cluster).
Each member cluster runs `member()` for its share of the twins; the host cluster runs
`coordinate()` after `steps.init`. Every write is one of the step functions' own writes, so a
multi-cluster run stores exactly what a single-cluster run stores:

    coordinator (host)                      store                        member (its twins)
    steps.init                  ->  config, twins, rounds/0000/global
                                                                  <-  wait for rounds/r/global
                                    rounds/r/updates/<twin>.*     <-  steps.train (present: skipped)
    wait: every expected update, or
    the round deadline with >= min_twins
    steps.aggregate             ->  rounds/r+1/global, rounds/r/summary.json, state.json
                                                                  <-  wait for rounds/r/summary.json
    ... until a summary says continue = false; then steps.evaluate and steps.finish

Members read the run only through keys a twin identity may read (config, twins, global models,
summaries, its updates); `state.json` is read when the credentials allow it, to stop at once when
the run failed. An update that lands after its round was aggregated (a member that trained past
the deadline) is never aggregated: the coordinator records it in `rounds/NNNN/late.json`, beside the
write-once summary. Waiting is polling with exponential backoff, jitter and a deadline
(`multicluster:` in the config; CLI flags override).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from fedtwin import steps
from fedtwin.config import MulticlusterConfig, env_overrides
from fedtwin.errors import ConfigError, FedtwinError, QuorumError, StoreError
from fedtwin.federation.updates import update_twin_ids
from fedtwin.formats import check_dns_label
from fedtwin.run.round import make_executor, train_round
from fedtwin.runstate import reopen
from fedtwin.store import ArtifactStore, RunLayout

log = logging.getLogger("fedtwin.multicluster")
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
        from fedtwin.s3store import S3AccessDeniedError
    except ImportError:  # no boto3: no S3 store, so no S3 permissions either
        return False
    return isinstance(exc, S3AccessDeniedError)


def _raise_if_failed(state: Mapping[str, Any] | None, run_id: str) -> None:
    if state is not None and state.get("status") == "failed":
        raise RunFailedError(f"run {run_id!r} failed: {state.get('reason') or 'no reason recorded'}")


# ------------------------------------------------------------------------------------- members
@dataclass
class MemberRound:
    """What one member did in one round, and what the aggregation made of its twins."""

    round: int
    trained: list[str] = field(default_factory=list)
    """Twins whose update this member wrote in this round."""
    present: list[str] = field(default_factory=list)
    """Twins whose update was already there (a restarted member): skipped."""
    refused: list[str] = field(default_factory=list)
    """Twins not trained because the round was aggregated first (this member came late)."""
    failed: list[str] = field(default_factory=list)
    """Twins whose training raised (logged; the quorum decides whether the round survives)."""
    aggregated: list[str] = field(default_factory=list)
    """This member's twins among the round's participants."""
    rejected: list[str] = field(default_factory=list)
    """This member's twins whose updates the aggregator rejected (reasons in the summary)."""
    skipped: list[str] = field(default_factory=list)
    """This member's twins the round skipped on purpose (e.g. a spent privacy budget)."""
    left_out: list[str] = field(default_factory=list)
    """This member's twins in none of the lists: missing at the deadline, or written after it (late)."""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class MemberResult:
    run_id: str
    twins: list[str]
    rounds: list[MemberRound]
    status: str
    """`complete` (the last round is aggregated) or `done` (the run had already finished)."""


def member(
    store: ArtifactStore,
    run_id: str,
    twin_ids: list[str],
    flags: Mapping[str, Any] | None = None,
    device: str = "cpu",
    workers: int | None = None,
    poller: Poller | None = None,
    on_round: Callable[[MemberRound], None] | None = None,
) -> MemberResult:
    """Train `twin_ids` in every round of `run_id` until its last round is aggregated.

    Resumable: it starts at the first round without a summary and skips twins whose update is
    already stored. A round aggregated before this member trained it is skipped (never a stale
    update); the member goes on with the next round.
    """
    try:
        check_dns_label(run_id, "run id")
    except ValueError as exc:
        raise ConfigError(f"{exc}; pass the coordinator's run id with --run") from exc
    if not twin_ids:
        raise ConfigError("a member needs at least one twin: pass --twins ID,ID,...")
    layout = RunLayout(run_id)
    settings = resolve_settings(None, flags)
    poller = poller or Poller(settings)

    deadline = poller.clock() + settings.wait_timeout_seconds
    ok, _ = poller.until(lambda: (store.exists(layout.config), None), deadline)
    if not ok:
        raise WaitTimeoutError(
            f"run {run_id!r} did not appear in {store.url} within {settings.wait_timeout_seconds:g} s "
            "(multicluster.wait_timeout_seconds); start it on the host with `fedtwin step init` and "
            "`fedtwin step coordinate`, and check that both use the same store"
        )
    ctx = steps.RunContext.load(store, run_id)
    ctx.twins(twin_ids)  # ConfigError (exit 2) for a twin outside the run's fleet, before any wait
    poller.settings = settings = resolve_settings(ctx.config.multicluster, flags)
    try:
        settings.check_member_patience()
    except ValueError as exc:
        raise ConfigError(f"{exc}; raise --wait-timeout") from exc
    engine = ctx.config.execution.engine
    workers = workers or ctx.config.execution.workers or os.cpu_count() or 1
    state = StateReader(store, layout)
    rounds: list[MemberRound] = []

    first = state.read()
    _raise_if_failed(first, run_id)
    round_index = first_open_round(store, layout)
    if (first is not None and first.get("status") == "done") or _complete_before(store, layout, round_index):
        return MemberResult(run_id, twin_ids, rounds, "done")

    with make_executor(min(workers, len(twin_ids))) as executor:
        while True:
            opened = [layout.global_model(round_index), layout.summary(round_index)]
            _wait(poller, settings, state, run_id, opened, f"the global model of round {round_index}")
            report = MemberRound(round_index)
            if not store.exists(layout.summary(round_index)):
                _train_round(store, run_id, round_index, twin_ids, device, engine, workers, executor, report)
            _wait(poller, settings, state, run_id, [layout.summary(round_index)],
                  f"the aggregation of round {round_index}")
            summary = store.get_json(layout.summary(round_index))
            _classify(report, twin_ids, summary)
            rounds.append(report)
            if on_round is not None:
                on_round(report)
            if not summary.get("continue"):
                return MemberResult(run_id, twin_ids, rounds, "complete")
            round_index += 1


def _complete_before(store: ArtifactStore, layout: RunLayout, round_index: int) -> bool:
    """True when the round before `round_index` was the run's last (its summary says so)."""
    return round_index > 0 and not store.get_json(layout.summary(round_index - 1)).get("continue")


def _wait(poller: Poller, settings: MulticlusterConfig, state: StateReader, run_id: str,
          keys: list[str], what: str) -> None:
    """Poll until one of `keys` exists; stop at once when the run failed; give up after the wait timeout."""

    def check() -> tuple[bool, None]:
        _raise_if_failed(state.read(), run_id)
        return any(state.store.exists(key) for key in keys), None

    ok, _ = poller.until(check, poller.clock() + settings.wait_timeout_seconds)
    if not ok:
        hint = "" if state.readable else (" (state.json is unreadable with these credentials, so a failed "
                                          "run looks the same)")
        raise WaitTimeoutError(
            f"run {run_id!r}: waited {settings.wait_timeout_seconds:g} s (multicluster.wait_timeout_seconds) "
            f"for {what}, which never came{hint}; is the coordinator running?"
        )


def _train_round(store: ArtifactStore, run_id: str, round_index: int, twin_ids: list[str], device: str,
                 engine: str, workers: int, executor: Executor, report: MemberRound) -> None:
    """The member's twins through `train_round`, as the single-cluster runner trains them (the same
    shards and device, so the same updates, bit for bit); a twin refused because the round was
    aggregated first means this member came late."""
    done = train_round(store, run_id, round_index, twin_ids, engine, workers, device, executor)
    report.present, report.trained = done.present, done.trained
    report.refused, report.failed = done.refused, done.failed


def counted_twins(summary: Mapping[str, Any]) -> set[str]:
    """Twins a round's summary accounts for: aggregated, rejected (with a reason) or skipped."""
    return (set(summary.get("participants", [])) | {r["twin_id"] for r in summary.get("rejected", [])}
            | {s["twin_id"] for s in summary.get("skipped", [])})


def _classify(report: MemberRound, twin_ids: list[str], summary: Mapping[str, Any]) -> None:
    participants = set(summary.get("participants", []))
    rejected = {r["twin_id"] for r in summary.get("rejected", [])}
    skipped = {s["twin_id"] for s in summary.get("skipped", [])}
    report.aggregated = [t for t in twin_ids if t in participants]
    report.rejected = [t for t in twin_ids if t in rejected]
    report.skipped = [t for t in twin_ids if t in skipped]
    report.left_out = [t for t in twin_ids if t not in counted_twins(summary)]
    late = [t for t in report.trained if t in report.left_out]
    if late:
        log.warning("[ROUND %s] %s written after the round was aggregated: not part of its model "
                    "(the coordinator records it as late)", report.round, ", ".join(late))


# --------------------------------------------------------------------------------- coordinator
@dataclass
class RoundDecision:
    """Why the coordinator aggregated a round when it did."""

    round: int
    trigger: str
    """`complete` (every expected update arrived) or `deadline` (the round deadline passed)."""
    waited_seconds: float
    present: list[str]
    missing: list[str]
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        s = self.summary
        return {"round": self.round, "trigger": self.trigger, "waited_seconds": round(self.waited_seconds, 3),
                "participants": s.get("participants", []), "missing": self.missing,
                "rejected": [r["twin_id"] for r in s.get("rejected", [])],
                "num_samples": s.get("num_samples"), "validation_return": s.get("validation_return"),
                "continue": s.get("continue")}


@dataclass
class CoordinatorResult:
    run_id: str
    rounds: list[RoundDecision]
    late: dict[int, list[str]]
    evaluation: dict[str, Any]
    state: dict[str, Any]


def record_late(store: ArtifactStore, layout: RunLayout, round_index: int) -> list[str]:
    """Record updates stored after the round was aggregated in `late.json`; return every late twin.

    The summary is write-once and names the twins it aggregated, rejected or skipped; an update
    record of any other twin in the round's `updates/` arrived too late to count (its member trained past
    the deadline). Idempotent: each twin is recorded once, with the time it was first seen.
    """
    if round_index < 0 or not store.exists(layout.summary(round_index)):
        return []
    counted = counted_twins(store.get_json(layout.summary(round_index)))
    late = [t for t in update_twin_ids(store, layout, round_index) if t not in counted]
    if not late:
        return []
    key = late_key(layout, round_index)
    existing = store.get_json(key)["late"] if store.exists(key) else []
    known = {entry["twin_id"] for entry in existing}
    new = [t for t in late if t not in known]
    if new:
        for twin_id in new:
            entry: dict[str, Any] = {
                "twin_id": twin_id,
                "detected_at": steps.now_iso(),
                "reason": f"update arrived after round {round_index} was aggregated; not part of its model",
            }
            # An unreadable record is still a late arrival.
            with contextlib.suppress(FedtwinError, KeyError, TypeError, ValueError):
                record = store.get_json(layout.update_meta(round_index, twin_id))
                entry["num_samples"] = int(record["num_samples"])
            existing.append(entry)
        store.put_json(key, {"round": round_index, "late": sorted(existing, key=lambda e: e["twin_id"])})
        log.warning("[ROUND %s] late update(s) from %s rejected and recorded in %s", round_index,
                    ", ".join(new), store.describe(key))
    return sorted(known | set(new))


class LateWatcher:
    """Watches an aggregated round's `updates/` for stragglers while the next round waits.

    One listing per poll; the summary is read once (it is write-once) and `late.json` is written
    only when a twin shows up that is neither in the summary nor recorded yet.
    """

    def __init__(self, store: ArtifactStore, layout: RunLayout, round_index: int) -> None:
        self.store, self.layout, self.round = store, layout, round_index
        self.known: set[str] | None = None

    def poll(self) -> None:
        if self.round < 0:
            return
        if self.known is None:
            if not self.store.exists(self.layout.summary(self.round)):
                return
            self.known = counted_twins(self.store.get_json(self.layout.summary(self.round)))
            self.known |= set(record_late(self.store, self.layout, self.round))
        if not set(update_twin_ids(self.store, self.layout, self.round)) <= self.known:
            self.known |= set(record_late(self.store, self.layout, self.round))


def coordinate(
    store: ArtifactStore,
    run_id: str,
    flags: Mapping[str, Any] | None = None,
    retry_failed: bool = False,
    poller: Poller | None = None,
    on_round: Callable[[RoundDecision], None] | None = None,
) -> CoordinatorResult:
    """Aggregate every round of an initialized run as its members' updates arrive, then evaluate.

    A round is aggregated as soon as every twin of the fleet has an update, or when the round
    deadline passes; `steps.aggregate` then enforces `min_twins` (below it the run is marked failed
    and QuorumError is raised, stored rounds untouched). Resumable: it starts at the run's next round.
    """
    ctx = steps.RunContext.load(store, run_id)
    layout, config = ctx.layout, ctx.config
    settings = resolve_settings(config.multicluster, flags)
    poller = poller or Poller(settings)
    state = ctx.state()
    if state.get("status") == "failed":
        if not retry_failed:
            raise RunFailedError(
                f"run {run_id!r} failed: {state.get('reason') or 'no reason recorded'}; its stored rounds "
                f"are intact: rerun with --retry-failed to play round {state['next_round']} again "
                "(restart the members too), or start a new run"
            )
        state = reopen(store, run_id, state)
    expected = [t.id for t in ctx.fleet.train]
    decisions: list[RoundDecision] = []
    round_index = int(state["next_round"])
    while not state.get("training_complete") and round_index < config.federation.rounds:
        decision = _wait_for_updates(store, layout, round_index, expected, settings, poller)
        try:
            decision.summary = steps.aggregate(store, run_id, round_index)
            # The summary is the truth: an update that landed between the last look and the
            # aggregation counts, and so is not missing.
            decision.missing = [t for t in expected if t in decision.summary.get("missing", [])]
        except QuorumError as exc:
            message = str(exc)
            if decision.trigger == "deadline":
                message += (f"; after the round deadline ({settings.round_deadline_seconds:g} s, "
                            f"multicluster.round_deadline_seconds) no update came from: "
                            f"{', '.join(decision.missing)}")
            ctx.write_state(status="failed", reason=message)
            raise QuorumError(message) from exc
        log.info("[ROUND %s/%s] %s after %.1f s: participants=%s missing=%s validation_return=%.1f",
                 round_index + 1, config.federation.rounds, decision.trigger, decision.waited_seconds,
                 len(decision.summary["participants"]), len(decision.missing),
                 decision.summary["validation_return"])
        decisions.append(decision)
        if on_round is not None:
            on_round(decision)
        state = ctx.state()
        round_index += 1
    last = int(state["next_round"]) - 1
    late = {r: ids for r in (last - 1, last) if (ids := record_late(store, layout, r))}
    evaluation = steps.evaluate(store, run_id)
    final = steps.finish(store, run_id, "done")
    return CoordinatorResult(run_id, decisions, late, evaluation, final)


def _wait_for_updates(store: ArtifactStore, layout: RunLayout, round_index: int, expected: list[str],
                      settings: MulticlusterConfig, poller: Poller) -> RoundDecision:
    started = poller.clock()

    stragglers = LateWatcher(store, layout, round_index - 1)

    def check() -> tuple[bool, tuple[str, ...]]:
        stragglers.poll()
        present = tuple(update_twin_ids(store, layout, round_index))
        return set(expected) <= set(present), present

    complete, present = poller.until(check, started + settings.round_deadline_seconds)
    return RoundDecision(
        round=round_index,
        trigger="complete" if complete else "deadline",
        waited_seconds=poller.clock() - started,
        present=list(present),
        missing=[t for t in expected if t not in present],
    )


__all__ = [
    "CoordinatorResult",
    "MemberResult",
    "MemberRound",
    "Poller",
    "RoundDecision",
    "RunFailedError",
    "WaitTimeoutError",
    "coordinate",
    "counted_twins",
    "first_open_round",
    "late_key",
    "member",
    "record_late",
    "resolve_settings",
]
