"""A twin's update in the store (weights + JSON record) and the checks it must pass before aggregation.

Validation follows Flower's reply-consistency check but gives every rejection a reason that the
round summary records: a bad twin is dropped from the round, it never fails the round by itself.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fedtwin.errors import FedtwinError, IntegrityError
from fedtwin.policy import LayoutError, PolicySpec, params_from_bytes
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


# Why an update was dropped; the round summary records the kind and a sentence.
NOT_IN_FLEET = "not_in_fleet"
BAD_RECORD = "bad_record"
DUPLICATE = "duplicate_twin"
WRONG_ROUND = "wrong_round"
WRONG_BASE = "wrong_base_model"
BAD_SAMPLES = "bad_num_samples"
SHA_MISMATCH = "sha256_mismatch"
BAD_LAYOUT = "bad_layout"
NON_FINITE = "non_finite"
NORM_OUTLIER = "norm_outlier"


@dataclass
class Rejection:
    twin_id: str
    reason: str
    kind: str = BAD_RECORD

    def to_json(self) -> dict[str, str]:
        return {"twin_id": self.twin_id, "kind": self.kind, "reason": self.reason}


class UpdateRejected(ValueError):
    """One update fails a check; `kind` says which (see the constants above)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def write_update(
    store: ArtifactStore, layout: RunLayout, record: UpdateRecord, weights: bytes
) -> UpdateRecord:
    """Weights first, record last: the record's presence is what marks the update complete."""
    record.sha256 = store.put_bytes(layout.update_weights(record.round, record.twin_id), weights)
    store.put_json(layout.update_meta(record.round, record.twin_id), record.to_json())
    return record


def write_updates(
    store: ArtifactStore, layout: RunLayout, updates: Sequence[tuple[UpdateRecord, bytes]]
) -> list[UpdateRecord]:
    """`write_update` for many twins (a fleet shard), as many at once as the store takes."""
    return store.run_concurrently([functools.partial(write_update, store, layout, record, weights)
                                   for record, weights in updates])


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
    global_params: np.ndarray | None = None,
    norm_bound_factor: float | None = None,
    max_samples: int | None = None,
) -> tuple[list[AcceptedUpdate], list[Rejection]]:
    """Read every update of the round; reject with a reason instead of raising.

    Checks per update, in order: twin in the fleet, readable record, one record per twin, round,
    base model, sample count (positive, at most `max_samples`: a twin cannot inflate its FedAvg
    weight), sha256, layout, finiteness; then, across the round, the norm bound:
    `||update - global|| > norm_bound_factor * median` over the round's remaining updates.
    """
    rejected: list[Rejection] = []
    records: dict[str, UpdateRecord] = {}
    for twin_id in update_twin_ids(store, layout, round_index):
        if twin_id not in fleet_ids:
            rejected.append(Rejection(twin_id, f"twin {twin_id!r} is not in the run's fleet", NOT_IN_FLEET))
            continue
        try:
            data = store.get_json(layout.update_meta(round_index, twin_id))
            records[twin_id] = UpdateRecord.from_json(data)
        except (FedtwinError, ValueError, TypeError) as exc:
            rejected.append(Rejection(twin_id, f"unreadable update record: {exc}", BAD_RECORD))
    claims = Counter(record.twin_id for record in records.values())
    accepted: list[AcceptedUpdate] = []
    for twin_id, record in records.items():
        try:
            params = _check_one(store, layout, round_index, twin_id, record, spec, base_sha256, claims,
                                max_samples)
            accepted.append(AcceptedUpdate(record, params))
        except UpdateRejected as exc:
            rejected.append(Rejection(twin_id, str(exc), exc.kind))
        except (FedtwinError, ValueError, TypeError, KeyError) as exc:
            rejected.append(Rejection(twin_id, str(exc), BAD_RECORD))
    if norm_bound_factor is not None and global_params is not None and accepted:
        accepted, outliers = split_norm_outliers(accepted, global_params, norm_bound_factor)
        rejected += outliers
    return accepted, sorted(rejected, key=lambda r: r.twin_id)


def _check_one(
    store: ArtifactStore,
    layout: RunLayout,
    round_index: int,
    twin_id: str,
    record: UpdateRecord,
    spec: PolicySpec,
    base_sha256: str,
    claims: Counter[str],
    max_samples: int | None = None,
) -> np.ndarray:
    if record.twin_id != twin_id:
        if claims[record.twin_id] > 1 or record.twin_id in claims:
            raise UpdateRejected(
                DUPLICATE,
                f"duplicate twin: the record stored as {twin_id!r} claims twin {record.twin_id!r}, "
                "which has its own update in this round",
            )
        raise UpdateRejected(BAD_RECORD, f"record names twin {record.twin_id!r} but is stored as {twin_id!r}")
    if record.round != round_index:
        raise UpdateRejected(WRONG_ROUND, f"record is for round {record.round}, not {round_index}")
    if record.base_sha256 != base_sha256:
        raise UpdateRejected(
            WRONG_BASE,
            f"update was trained from another global model (base sha256 {str(record.base_sha256)[:12]}…, "
            f"round {round_index}'s global is {base_sha256[:12]}…)",
        )
    samples = record.num_samples
    if isinstance(samples, bool) or not isinstance(samples, int) or samples <= 0:
        raise UpdateRejected(BAD_SAMPLES, f"num_samples must be a positive integer, got {samples!r}")
    if max_samples is not None and samples > max_samples:
        raise UpdateRejected(
            BAD_SAMPLES,
            f"num_samples {samples} exceeds the {max_samples} one round of local training collects",
        )
    try:
        data = store.get_bytes(layout.update_weights(round_index, twin_id))
    except IntegrityError as exc:
        raise UpdateRejected(SHA_MISMATCH, str(exc)) from exc
    if sha256_hex(data) != record.sha256:
        raise UpdateRejected(SHA_MISMATCH, "weights sha256 differs from the one in the update record")
    try:
        params, _ = params_from_bytes(data, spec)
    except LayoutError as exc:
        raise UpdateRejected(BAD_LAYOUT, str(exc)) from exc
    if not np.all(np.isfinite(params)):
        raise UpdateRejected(NON_FINITE, "update holds non-finite values (NaN or Inf)")
    return params


def update_norms(updates: np.ndarray, global_params: np.ndarray) -> np.ndarray:
    """`||update - global||` of each row, in float64."""
    return np.linalg.norm(updates.astype(np.float64) - global_params.astype(np.float64), axis=1)


def split_norm_outliers(
    accepted: list[AcceptedUpdate], global_params: np.ndarray, factor: float
) -> tuple[list[AcceptedUpdate], list[Rejection]]:
    """Drop updates that moved more than `factor` times the round's median distance from the global."""
    norms = update_norms(np.stack([a.params for a in accepted]), global_params)
    bound = factor * float(np.median(norms))
    keep = [a for a, n in zip(accepted, norms, strict=True) if n <= bound]
    outliers = [
        Rejection(
            a.record.twin_id,
            f"update norm {n:.4g} exceeds {factor:g} x the round's median norm {bound / factor:.4g} "
            "(federation.norm_bound_factor)",
            NORM_OUTLIER,
        )
        for a, n in zip(accepted, norms, strict=True)
        if n > bound
    ]
    return keep, outliers
