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

from fedtwin.run.coordinator import CoordinatorResult, LateWatcher, RoundDecision, coordinate, record_late
from fedtwin.run.member import MemberResult, MemberRound, member
from fedtwin.run.polling import (
    Poller,
    RunFailedError,
    WaitTimeoutError,
    counted_twins,
    first_open_round,
    late_key,
    resolve_settings,
)

__all__ = [
    "CoordinatorResult",
    "LateWatcher",
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
