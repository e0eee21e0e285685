"""A twin's update in the store (weights + JSON record) and the checks it must pass before aggregation.

Validation follows Flower's reply-consistency check but gives every rejection a reason that the
round summary records: a bad twin is dropped from the round, it never fails the round by itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fedtwin.errors import FedtwinError
from fedtwin.policy import PolicySpec, params_from_bytes
from fedtwin.store import ArtifactStore, RunLayout, sha256_hex


@dataclass
class UpdateRecord:
    """What `<twin>.json` holds next to `<twin>.safetensors`."""

    twin_id: str
    round: int
    num_samples: int
    sha256: str
    """sha256 of the update's safetensors bytes."""
    base_sha256: str
    """sha256 of the global model the twin started from (pins the round it trained on)."""
    metrics: dict[str, float] = field(default_factory=dict)
    epsilon: float | None = None
    seconds: float = 0.0
    engine: str = "pool"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> UpdateRecord:
        if not isinstance(data, dict):
            raise ValueError("update record is not a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        missing = {"twin_id", "round", "num_samples", "sha256", "base_sha256"} - set(data)
        if missing:
            raise ValueError(f"update record lacks {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class AcceptedUpdate:
    record: UpdateRecord
    params: np.ndarray


@dataclass
class Rejection:
    twin_id: str
    reason: str


def write_update(
    store: ArtifactStore, layout: RunLayout, record: UpdateRecord, weights: bytes
) -> UpdateRecord:
    """Weights first, record last: the record's presence is what marks the update complete."""
    record.sha256 = store.put_bytes(layout.update_weights(record.round, record.twin_id), weights)
    store.put_json(layout.update_meta(record.round, record.twin_id), record.to_json())
    return record


def update_twin_ids(store: ArtifactStore, layout: RunLayout, round_index: int) -> list[str]:
    """Twins with a complete update record in this round, sorted (fixes the aggregation order)."""
    prefix = layout.updates_dir(round_index)
    return sorted(key[len(prefix) : -len(".json")] for key in store.list(prefix) if key.endswith(".json"))


def load_and_validate(
    store: ArtifactStore,
    layout: RunLayout,
    round_index: int,
    fleet_ids: set[str],
    spec: PolicySpec,
    base_sha256: str,
) -> tuple[list[AcceptedUpdate], list[Rejection]]:
    """Read every update of the round; reject with a reason instead of raising."""
    accepted: list[AcceptedUpdate] = []
    rejected: list[Rejection] = []
    for twin_id in update_twin_ids(store, layout, round_index):
        try:
            accepted.append(_load_one(store, layout, round_index, twin_id, fleet_ids, spec, base_sha256))
        except (FedtwinError, ValueError, TypeError, KeyError) as exc:
            rejected.append(Rejection(twin_id, str(exc)))
    return accepted, rejected


def _load_one(
    store: ArtifactStore,
    layout: RunLayout,
    round_index: int,
    twin_id: str,
    fleet_ids: set[str],
    spec: PolicySpec,
    base_sha256: str,
) -> AcceptedUpdate:
    if twin_id not in fleet_ids:
        raise ValueError(f"twin {twin_id!r} is not in the run's fleet")
    record = UpdateRecord.from_json(store.get_json(layout.update_meta(round_index, twin_id)))
    if record.twin_id != twin_id:
        raise ValueError(f"record names twin {record.twin_id!r} but is stored as {twin_id!r}")
    if record.round != round_index:
        raise ValueError(f"record is for round {record.round}, not {round_index}")
    if record.base_sha256 != base_sha256:
        raise ValueError("update was trained from another global model (base sha256 differs)")
    if not isinstance(record.num_samples, int) or record.num_samples <= 0:
        raise ValueError(f"num_samples must be a positive integer, got {record.num_samples!r}")
    data = store.get_bytes(layout.update_weights(round_index, twin_id))
    if sha256_hex(data) != record.sha256:
        raise ValueError("weights sha256 differs from the one in the update record")
    params, _ = params_from_bytes(data, spec)
    if not np.all(np.isfinite(params)):
        raise ValueError("update holds non-finite values (NaN or Inf)")
    return AcceptedUpdate(record, params)
