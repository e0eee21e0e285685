"""The multi-cluster round protocol (fedtwin/run/multicluster.py, `fedtwin step member|coordinate`).

Unit tests run in-process on a local store with a fake clock. Integration tests run one coordinator
and two members as separate processes ("clusters") against a real S3 server on 127.0.0.1; each
process starts warm (interpreter and torch loaded, like a pod whose image is up) and waits at a
gate, so the short round deadlines of the tests measure the protocol, not Python start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fedtwin.config import MulticlusterConfig, load_config
from fedtwin.core.errors import ConfigError, QuorumError, RunConflictError
from fedtwin.run import multicluster, runner, steps
from fedtwin.run import round as round_module
from fedtwin.run.multicluster import Poller, RunFailedError, WaitTimeoutError
from fedtwin.store import ArtifactStore, LocalStore, RunLayout
from tests.helpers import clean_env, write_tiny_config

RUN = "mc"
LAYOUT = RunLayout(RUN)
MEMBER1, MEMBER2 = ["twin-000", "twin-001"], ["twin-002"]
SAMPLES = 32  # per twin and round: train.updates (1) x num_steps (16) x num_envs (2) of the tiny config


# --- polling -------------------------------------------------------------------------------------
class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(round(seconds, 6))
        self.now += seconds


def poller(fake: FakeTime, **settings: Any) -> Poller:
    values = {"poll_interval": 1.0, "max_poll_interval": 8.0, "backoff": 2.0, "jitter": 0.0, **settings}
    return Poller(MulticlusterConfig(**values), clock=fake.clock, sleep=fake.sleep)


def test_poller_looks_at_once_then_backs_off_to_the_cap_and_stops_at_the_deadline():
    fake = FakeTime()

    done, value = poller(fake).until(lambda: (False, "nothing"), deadline=40.0)

    assert (done, value) == (False, "nothing")
    assert fake.pauses == [1, 2, 4, 8, 8, 8, 8, 1]  # the last pause ends exactly at the deadline
    assert fake.now == 40.0


def test_poller_returns_as_soon_as_the_condition_holds_and_resets_on_progress():
    fake = FakeTime()
    seen = iter([(False, 0), (False, 0), (False, 0), (False, 1), (False, 1), (True, 2)])

    done, value = poller(fake).until(lambda: next(seen), deadline=100.0)

    assert (done, value) == (True, 2)
    assert fake.pauses == [1, 2, 4, 1, 2]  # one more update arrived: back to the short interval


def test_poller_jitter_stays_within_its_fraction_and_the_cap():
    fake = FakeTime()

    poller(fake, jitter=0.5, max_poll_interval=4.0).until(lambda: (False, None), deadline=1000.0)

    *pauses, last = fake.pauses  # the last pause is cut to end exactly at the deadline
    assert all(0.5 <= p <= 4.0 for p in pauses)
    assert 0 < last <= 4.0
    assert len(set(pauses)) > 3


def test_settings_precedence_stored_then_env_then_flags():
    stored = MulticlusterConfig(poll_interval=2.0, round_deadline_seconds=60, wait_timeout_seconds=600)
    env = {"FEDTWIN_MULTICLUSTER__POLL_INTERVAL": "3", "FEDTWIN_MULTICLUSTER__BACKOFF": "1.5",
           "FEDTWIN_MULTICLUSTER__ROUND_DEADLINE_SECONDS": ""}  # empty (an unset workflow parameter)

    settings = multicluster.resolve_settings(stored, {"backoff": 3.0, "max_poll_interval": None}, env)

    assert (settings.poll_interval, settings.backoff, settings.round_deadline_seconds) == (3.0, 3.0, 60)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ({"max_poll_interval": 0.5}, "max_poll_interval (0.5) must be at least poll_interval (1)"),
        ({"backoff": 0.5}, "multicluster.backoff: Input should be greater than or equal to 1"),
        ({"round_deadline": 5}, "unknown multicluster setting(s) round_deadline"),
    ],
)
def test_bad_settings_fail_naming_the_key(flags, needle):
    with pytest.raises(ConfigError) as err:
        multicluster.resolve_settings(None, flags, {})
    assert needle in str(err.value)


def test_a_config_whose_members_would_give_up_before_the_deadline_is_refused(tmp_path):
    path = write_tiny_config(tmp_path, **{"multicluster.round_deadline_seconds": 600,
                                          "multicluster.wait_timeout_seconds": 300})
    with pytest.raises(ConfigError, match=r"wait_timeout_seconds \(300\) must exceed round_deadline_seconds"):
        load_config(path, environ={})


# --- store views (local store, no training) ------------------------------------------------------
@pytest.mark.parametrize("aggregated", [0, 1, 2, 5, 13, 64])
def test_first_open_round_finds_the_first_round_without_a_summary(tmp_path, aggregated):
    store = LocalStore(tmp_path)
    for r in range(aggregated):
        store.put_json(LAYOUT.summary(r), {"round": r})

    assert multicluster.first_open_round(store, LAYOUT) == aggregated


def fake_update(store: ArtifactStore, round_index: int, twin_id: str) -> None:
    store.put_json(LAYOUT.update_meta(round_index, twin_id), {"twin_id": twin_id, "round": round_index,
                                                               "num_samples": SAMPLES})


def test_updates_stored_after_the_aggregation_are_recorded_as_late_once(tmp_path):
    store = LocalStore(tmp_path)
    for twin in ("twin-000", "twin-001", "twin-008", "twin-009"):
        fake_update(store, 3, twin)
    store.put_json(LAYOUT.summary(3), {"participants": ["twin-000"],
                                       "rejected": [{"twin_id": "twin-009", "kind": "x", "reason": "y"}],
                                       "skipped": [{"twin_id": "twin-008", "epsilon": 8.0}]})
    watcher = multicluster.LateWatcher(store, LAYOUT, 3)

    watcher.poll()
    first = store.get_json(multicluster.late_key(LAYOUT, 3))
    fake_update(store, 3, "twin-002")
    watcher.poll()
    watcher.poll()

    assert [e["twin_id"] for e in first["late"]] == ["twin-001"]  # counted twins are not late
    late = store.get_json(multicluster.late_key(LAYOUT, 3))
    assert [e["twin_id"] for e in late["late"]] == ["twin-001", "twin-002"]
    assert late["late"][0] == first["late"][0]  # recorded once, with the time first seen
    assert late["late"][1]["num_samples"] == SAMPLES
    assert "after round 3 was aggregated" in late["late"][1]["reason"]
    assert multicluster.record_late(store, LAYOUT, 3) == ["twin-001", "twin-002"]
    assert multicluster.record_late(store, LAYOUT, 4) == []  # not aggregated yet: nothing is late


# --- in-process protocol on a local store ---------------------------------------------------------
@pytest.fixture
def local_run(tmp_path) -> Callable[..., tuple[LocalStore, Path]]:
    """A run initialized in a local store with the tiny config (`steps.init`, as `fedtwin step init`)."""

    def make(**overrides: Any) -> tuple[LocalStore, Path]:
        path = write_tiny_config(tmp_path, **overrides)
        store = LocalStore(tmp_path / "store")
        steps.init(store, load_config(path, {"run_id": RUN, "store": str(store.root)}, environ={}))
        return store, path

    return make


def test_coordinator_fails_the_run_below_quorum_at_the_deadline_then_retries_on_request(local_run):
    store, _ = local_run(**{"federation.rounds": 1})
    steps.train(store, RUN, 0, ["twin-000"])
    fake = FakeTime()

    with pytest.raises(QuorumError) as err:
        multicluster.coordinate(store, RUN, {"round_deadline_seconds": 30}, poller=poller(fake))

    message = str(err.value)
    assert "round 0: 1 valid updates, below the quorum of 2" in message
    assert "round deadline (30 s, multicluster.round_deadline_seconds)" in message
    assert "no update came from: twin-001, twin-002" in message
    assert fake.now == 30.0 and max(fake.pauses) <= 8.0
    state = store.get_json(LAYOUT.state)
    assert state["status"] == "failed" and state["reason"] == message
    assert store.exists(LAYOUT.global_model(0)) and not store.exists(LAYOUT.summary(0))
    with pytest.raises(RunFailedError, match="--retry-failed to play round 0 again"):
        multicluster.coordinate(store, RUN, poller=poller(FakeTime()))

    steps.train(store, RUN, 0, ["twin-001", "twin-002"])
    result = multicluster.coordinate(store, RUN, retry_failed=True, poller=poller(FakeTime()))

    assert [(d.round, d.trigger, d.missing) for d in result.rounds] == [(0, "complete", [])]
    assert result.state["status"] == "done" and result.state["reason"] is None


def test_member_that_comes_late_to_an_aggregated_round_writes_nothing_and_moves_on(local_run, monkeypatch):
    store, _ = local_run(**{"federation.rounds": 2})
    real_train = steps.train

    def coordinator_was_faster(st, run_id, round_index, twin_ids, *args):
        if round_index == 0:  # aggregated between the member's look and its training
            real_train(st, run_id, 0, ["twin-001", "twin-002"])
            steps.aggregate(st, run_id, 0)
        return real_train(st, run_id, round_index, twin_ids, *args)

    monkeypatch.setattr(round_module.steps, "train", coordinator_was_faster)
    rounds: list[multicluster.MemberRound] = []
    fake = FakeTime()

    def aggregate_when_waiting(seconds: float) -> None:
        fake.sleep(seconds)
        if not store.exists(LAYOUT.summary(1)) and store.exists(LAYOUT.update_meta(1, "twin-000")):
            real_train(store, RUN, 1, ["twin-001", "twin-002"])
            steps.aggregate(store, RUN, 1)

    p = poller(fake)
    p.sleep = aggregate_when_waiting
    result = multicluster.member(store, RUN, ["twin-000"], poller=p, on_round=rounds.append)

    assert result.status == "complete"
    assert [(r.round, r.trained, r.refused, r.aggregated, r.left_out) for r in rounds] == [
        (0, [], ["twin-000"], [], ["twin-000"]),
        (1, ["twin-000"], [], ["twin-000"], []),
    ]
    assert not store.exists(LAYOUT.update_meta(0, "twin-000")), "a stale update was written"
    with pytest.raises(RunConflictError):
        real_train(store, RUN, 0, ["twin-000"])


def test_member_resumes_at_the_first_open_round_and_skips_stored_updates(local_run):
    store, _ = local_run(**{"federation.rounds": 3})
    steps.train(store, RUN, 0, ["twin-000", "twin-001", "twin-002"])
    steps.aggregate(store, RUN, 0)
    steps.train(store, RUN, 1, ["twin-000"])  # the member was killed after its first twin
    fake = FakeTime()
    rounds: list[multicluster.MemberRound] = []

    def coordinator(seconds: float) -> None:
        fake.sleep(seconds)
        for r in (1, 2):
            if not store.exists(LAYOUT.summary(r)) and store.exists(LAYOUT.update_meta(r, "twin-001")):
                steps.train(store, RUN, r, ["twin-002"])
                steps.aggregate(store, RUN, r)

    p = poller(fake)
    p.sleep = coordinator
    result = multicluster.member(store, RUN, MEMBER1, poller=p, on_round=rounds.append)

    assert [(r.round, r.present, r.trained) for r in rounds] == [
        (1, ["twin-000"], ["twin-001"]),
        (2, [], ["twin-000", "twin-001"]),
    ]
    assert result.status == "complete"
    assert multicluster.member(store, RUN, MEMBER1, poller=poller(FakeTime())).status == "done"


def test_member_refuses_unknown_twins_and_gives_up_when_nothing_comes(local_run, tmp_path):
    store, _ = local_run()
    with pytest.raises(ConfigError, match="twin 'twin-042' is not in the training fleet of run 'mc'"):
        multicluster.member(store, RUN, ["twin-042"], poller=poller(FakeTime()))

    empty = LocalStore(tmp_path / "empty")
    fake = FakeTime()
    with pytest.raises(WaitTimeoutError, match=r"did not appear in .* within 90 s"):
        multicluster.member(empty, RUN, ["twin-000"], {"wait_timeout_seconds": 90}, poller=poller(fake))
    assert fake.now == 90.0
    with pytest.raises(ConfigError, match=r"wait_timeout_seconds \(90\) must exceed .* --wait-timeout"):
        multicluster.member(store, RUN, ["twin-000"], {"wait_timeout_seconds": 90}, poller=poller(FakeTime()))


def test_member_stops_when_the_run_failed(local_run):
    store, _ = local_run()
    ctx = steps.RunContext.load(store, RUN)
    ctx.write_state(status="failed", reason="round 0: below the quorum")

    with pytest.raises(RunFailedError, match="run 'mc' failed: round 0: below the quorum"):
        multicluster.member(store, RUN, ["twin-000"], poller=poller(FakeTime()))


# --- processes as clusters against a real S3 server ---------------------------------------------
WARM_START = """
import pathlib, sys, time
import fedtwin.run.multicluster  # torch and the package are loaded: a pod whose image is up
from fedtwin.cli import main
gate, ready = map(pathlib.Path, sys.argv[1:3])
ready.touch()
while not gate.exists():
    time.sleep(0.01)
main(sys.argv[3:])
"""
FAST = {"multicluster.poll_interval": 0.05, "multicluster.max_poll_interval": 0.4,
        "multicluster.round_deadline_seconds": 30,
        "multicluster.wait_timeout_seconds": 90}


@dataclass
class Cluster:
    """One `fedtwin` process standing for one cluster's pod."""

    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path
    ready: Path
    gate: Path

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} still running after {timeout} s:\n{self.stderr()}") from None

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.startswith("{")]

    def stderr(self) -> str:
        return self.err.read_text()


@dataclass
class Clusters:
    workdir: Path
    env: dict[str, str]
    started: list[Cluster] = field(default_factory=list)

    def start(self, name: str, *args: str, gate: str = "gate") -> Cluster:
        out, err, ready = (self.workdir / f"{name}.{ext}" for ext in ("out", "err", "ready"))
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-c", WARM_START, str(self.workdir / gate), str(ready), *args],
                stdout=stdout, stderr=stderr, env=self.env, start_new_session=True,
            )
        cluster = Cluster(name, proc, out, err, ready, self.workdir / gate)
        self.started.append(cluster)
        return cluster

    def open_gate(self, gate: str = "gate", timeout: float = 120) -> None:
        """Once every process waiting at this gate has loaded, let them all run."""
        waiting = [c for c in self.started if c.gate == self.workdir / gate]
        until(lambda: all(c.ready.exists() for c in waiting), timeout, "warm start",
              lambda: "\n".join(c.stderr() for c in waiting if c.proc.poll() is not None))
        (self.workdir / gate).touch()


def until(condition: Callable[[], bool], timeout: float, what: str, why: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s\n{why()}"
        time.sleep(0.02)


@pytest.fixture
def clusters(tmp_path, s3_server) -> Iterator[Clusters]:
    env = clean_env(**s3_server.env())
    group = Clusters(tmp_path, env)
    try:
        yield group
    finally:
        for cluster in group.started:
            if cluster.proc.poll() is None:
                cluster.kill()


def s3_run(s3_server, tmp_path: Path, **overrides: Any) -> tuple[ArtifactStore, str, Path]:
    """A fresh prefix on the S3 server with the run initialized (what `fedtwin step init` does)."""
    from fedtwin.store.s3 import S3Settings, S3Store

    prefix = f"mc-{uuid.uuid4().hex[:8]}"
    url = f"s3://{s3_server.bucket}/{prefix}"
    config = write_tiny_config(tmp_path, **{**FAST, **overrides})
    settings = S3Settings(endpoint=s3_server.endpoint, region=s3_server.region)
    store = S3Store(s3_server.bucket, prefix, settings, client=s3_server.client())
    steps.init(store, load_config(config, {"run_id": RUN, "store": url}, environ={}))
    return store, url, config


def member_args(url: str, twins: list[str]) -> list[str]:
    return ["step", "member", "--run", RUN, "--twins", ",".join(twins), "--store", url]


def coordinator_args(url: str, *extra: str) -> list[str]:
    return ["step", "coordinate", "--run", RUN, "--store", url, *extra]


def sha(store: ArtifactStore, key: str) -> str:
    return hashlib.sha256(store.get_bytes(key)).hexdigest()


def summaries(store: ArtifactStore, rounds: int) -> list[dict[str, Any]]:
    return [store.get_json(LAYOUT.summary(r)) for r in range(rounds)]


@pytest.mark.integration
def test_coordinator_and_two_members_equal_the_single_cluster_run_bit_for_bit(tmp_path, s3_server, clusters):
    # the pool engine: each twin trained alone, so how twins are split among clusters cannot matter
    # (the fleet engine batches a cluster's twins, and its products round with the batch)
    store, url, config = s3_run(s3_server, tmp_path, **{"federation.rounds": 3, "execution.engine": "pool"})
    outputs = str(tmp_path / "out")
    coordinator = clusters.start("coordinator", *coordinator_args(url, "--outputs-dir", outputs))
    members = [clusters.start("member1", *member_args(url, MEMBER1)),
               clusters.start("member2", *member_args(url, MEMBER2))]
    clusters.open_gate()

    reference = runner.run(load_config(config, {"run_id": RUN, "store": str(tmp_path / "reference")},
                                       environ={}), progress=False, report=False)
    codes = [c.wait() for c in (coordinator, *members)]

    assert codes == [0, 0, 0], "\n".join(c.stderr() for c in (coordinator, *members))
    local = LocalStore(tmp_path / "reference")
    assert sha(store, LAYOUT.report("final.safetensors")) == sha(local, LAYOUT.report("final.safetensors"))
    for r in range(4):
        assert sha(store, LAYOUT.global_model(r)) == sha(local, LAYOUT.global_model(r)), f"global {r}"
    assert [s["participants"] for s in summaries(store, 3)] == [MEMBER1 + MEMBER2] * 3
    assert reference.rounds_played == 3
    assert [(d["round"], d["trigger"], d["missing"]) for d in coordinator.lines()[:-1]] == [
        (r, "complete", []) for r in range(3)]
    assert coordinator.lines()[-1]["status"] == "done"
    assert (tmp_path / "out" / "status").read_text() == "done"
    for cluster, twins in zip(members, (MEMBER1, MEMBER2), strict=True):
        *rounds, final = cluster.lines()
        assert [(r["round"], r["trained"], r["aggregated"]) for r in rounds] == [
            (r, twins, twins) for r in range(3)]
        assert final == {"run_id": RUN, "twins": twins, "status": "complete", "rounds": [0, 1, 2]}
    assert store.get_json(LAYOUT.state)["status"] == "done"


@pytest.mark.integration
def test_killed_member_is_left_out_at_the_deadline_and_catches_up_after_restart(
        tmp_path, s3_server, clusters):
    # The deadline covers a restarted member's first training (several seconds on a loaded CI box).
    deadline = 10.0
    store, url, _ = s3_run(s3_server, tmp_path, **{"federation.rounds": 3,
                                                   "multicluster.round_deadline_seconds": deadline})
    coordinator = clusters.start("coordinator", *coordinator_args(url), gate="host")
    member1 = clusters.start("member1", *member_args(url, MEMBER1))
    member2 = clusters.start("member2", *member_args(url, MEMBER2))
    restarted = clusters.start("member2-restarted", *member_args(url, MEMBER2), gate="restart")
    clusters.open_gate()

    # member2 dies in the middle of the run: round 0 has its update, round 1 will not.
    until(lambda: all(store.exists(LAYOUT.update_meta(0, t)) for t in MEMBER1 + MEMBER2), 90,
          "round 0's updates", lambda: member1.stderr() + member2.stderr())
    member2.kill()
    clusters.open_gate("host")
    until(lambda: store.exists(LAYOUT.summary(1)), 90, "round 1 aggregated", coordinator.stderr)
    # A straggler's round-1 update lands after the aggregation: rejected, and recorded as late.
    for key in (LAYOUT.update_weights(0, "twin-002"), LAYOUT.update_meta(0, "twin-002")):
        data = store.get_bytes(key)
        if key.endswith(".json"):
            data = json.dumps({**json.loads(data), "round": 1}).encode()
        store.put_bytes(key.replace("/0000/", "/0001/"), data)
    clusters.open_gate("restart")  # the member comes back (a rescheduled pod) for the next round
    codes = [c.wait() for c in (coordinator, member1, restarted)]

    assert codes == [0, 0, 0], "\n".join(c.stderr() for c in (coordinator, member1, restarted))
    decisions = coordinator.lines()[:-1]
    assert [(d["round"], d["trigger"], d["participants"], d["missing"]) for d in decisions] == [
        (0, "complete", MEMBER1 + MEMBER2, []),
        (1, "deadline", MEMBER1, MEMBER2),
        (2, "complete", MEMBER1 + MEMBER2, []),
    ]
    assert decisions[1]["waited_seconds"] >= deadline
    rounds = summaries(store, 3)
    assert [s["participants"] for s in rounds] == [MEMBER1 + MEMBER2, MEMBER1, MEMBER1 + MEMBER2]
    assert [s["missing"] for s in rounds] == [[], MEMBER2, []]
    # Nothing lost or counted twice: every aggregated sample is one twin's round of training.
    assert [s["num_samples"] for s in rounds] == [3 * SAMPLES, 2 * SAMPLES, 3 * SAMPLES]
    late = store.get_json(multicluster.late_key(LAYOUT, 1))["late"]
    assert [e["twin_id"] for e in late] == MEMBER2
    assert coordinator.lines()[-1]["late"] == {"1": MEMBER2}
    assert [(r["round"], r["trained"]) for r in restarted.lines()[:-1]] == [(2, MEMBER2)]
    assert [r["round"] for r in member1.lines()[:-1]] == [0, 1, 2]
    assert store.get_json(LAYOUT.state)["status"] == "done"


@pytest.mark.integration
def test_below_quorum_at_the_deadline_fails_the_run_clearly_and_keeps_the_stored_rounds(
        tmp_path, s3_server, clusters):
    store, url, _ = s3_run(s3_server, tmp_path, **{"federation.rounds": 3,
                                                   "multicluster.round_deadline_seconds": 2})
    coordinator = clusters.start("coordinator", *coordinator_args(url), gate="host")
    member1 = clusters.start("member1", *member_args(url, MEMBER1))
    member2 = clusters.start("member2", *member_args(url, MEMBER2))
    clusters.open_gate()

    until(lambda: all(store.exists(LAYOUT.update_meta(0, t)) for t in MEMBER1 + MEMBER2), 90,
          "round 0's updates", lambda: member1.stderr() + member2.stderr())
    member1.kill()  # two of three twins gone after round 0; min_twins is 2
    clusters.open_gate("host")
    assert coordinator.wait() == 3 and member2.wait() == 3  # exit 3: the run failed, do not retry

    error = coordinator.stderr().strip().splitlines()[-1]
    assert error.startswith("Error: round 1: 1 valid updates, below the quorum of 2 (federation.min_twins)")
    assert "no update came from: twin-000, twin-001" in error
    state = store.get_json(LAYOUT.state)
    assert state["status"] == "failed" and state["reason"] == error.removeprefix("Error: ")
    assert f"Error: run '{RUN}' failed: round 1: 1 valid updates" in member2.stderr()
    assert store.get_json(LAYOUT.summary(0))["participants"] == MEMBER1 + MEMBER2
    for r in (0, 1):
        store.get_bytes(LAYOUT.global_model(r))  # intact: the sha256 is verified on read
    assert not store.exists(LAYOUT.summary(1)) and not store.exists(LAYOUT.global_model(2))
    assert state["next_round"] == 1
