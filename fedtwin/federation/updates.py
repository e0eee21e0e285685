"""A twin's update in the store (weights + JSON record) and the checks it must pass before aggregation.

Validation follows Flower's reply-consistency check but gives every rejection a reason that the
round summary records: a bad twin is dropped from the round, it never fails the round by itself.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedtwin.core.errors import FedtwinError, IntegrityError
from fedtwin.core.formats import DNS_LABEL
from fedtwin.policy.layout import LayoutError, PolicySpec, layout_for, params_from_bytes, read_header
from fedtwin.store import ArtifactStore, RunLayout, sha256_hex

SHA256_OR_EMPTY = r"^([0-9a-f]{64})?$"
"""A record's own sha256 is empty until its weights are written (and stays so on a privacy skip)."""
MAX_METRICS = 64
"""Metrics per record: training reports about ten; the summary and MLflow copy every one."""
MAX_METRIC_NAME = 250
"""MLflow's limit on a metric key."""
MAX_SECONDS = 1e7
"""Seconds one twin's round may claim (about 4 months): the summary adds them up."""
MAX_TEXT = 2000
"""Characters of the free-text fields a record may carry into the summary."""
EXTRA_KEYS = frozenset({"privacy", "skipped", "reason"})
"""What `extra` may hold: local DP's accountant state and plan, and a privacy skip's marker and reason."""


class UpdateRecord(BaseModel):
    """What `<twin>.json` holds next to `<twin>.safetensors`.

    A twin writes its own record, so every field is checked by type and range when it is read
    (strict: no strings for numbers, no booleans for integers, no NaN or infinity, no unknown keys);
    a record that fails is rejected as `bad_record` before anything in it is used.
    """

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    twin_id: str = Field(pattern=DNS_LABEL.pattern, max_length=63)
    """A DNS-1123 label: it names pods and store keys."""
    round: int = Field(ge=0)
    num_samples: int = Field(ge=0)
    """Transitions trained on; 0 only on a privacy skip (`extra.skipped`), rejected as an update."""
    sha256: str = Field(pattern=SHA256_OR_EMPTY)
    """sha256 of the update's safetensors bytes."""
    base_sha256: str = Field(pattern=SHA256_OR_EMPTY)
    """sha256 of the global model the twin started from (pins the round it trained on)."""
    metrics: dict[str, float] = Field(default_factory=dict, max_length=MAX_METRICS)
    epsilon: float | None = Field(None, ge=0)
    seconds: float = Field(0.0, ge=0, le=MAX_SECONDS)
    engine: Literal["pool", "fleet"] = "pool"
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metrics")
    @classmethod
    def _metric_names(cls, value: dict[str, float]) -> dict[str, float]:
        long = [k for k in value if not 0 < len(k) <= MAX_METRIC_NAME]
        if long:
            raise ValueError(f"metric names must have 1 to {MAX_METRIC_NAME} characters, "
                             f"got {long[0][:40]!r}")
        return value

    @field_validator("extra")
    @classmethod
    def _known_extra(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - EXTRA_KEYS)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(EXTRA_KEYS))}")
        for key in ("skipped", "reason"):
            if key in value and not (isinstance(value[key], str) and len(value[key]) <= MAX_TEXT):
                raise ValueError(f"{key} must be a text of at most {MAX_TEXT} characters")
        if "privacy" in value and not isinstance(value["privacy"], dict):
            raise ValueError("privacy must be an object")
        return value

    @property
    def skipped(self) -> str | None:
        """Why the twin did not train this round on purpose (local DP budget), or None."""
        return self.extra.get("skipped")

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_json(cls, data: Any) -> UpdateRecord:
        """The record, or a ValueError naming every bad field on one line."""
        if not isinstance(data, dict):
            raise ValueError(f"update record is not a JSON object (got {type(data).__name__})")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "record"
                problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
            raise ValueError("; ".join(problems)) from None


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
SKIPPED = "skipped"
"""Not an update: the twin skipped the round on purpose (local DP budget); the summary lists it apart."""


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


def read_record(store: ArtifactStore, key: str) -> UpdateRecord:
    """A stored record that must be valid (the train step's own earlier output): a bad one is corrupt."""
    try:
        return UpdateRecord.from_json(store.get_json(key))
    except ValueError as exc:
        raise IntegrityError(
            f"{store.describe(key)} is not a valid update record ({exc}); delete it and rerun this step"
        ) from exc


def finite_metrics(metrics: Any) -> dict[str, float]:
    """Training's metrics as a record holds them: a diverged loss (NaN, inf) carries no number to log."""
    return {str(k): float(v) for k, v in metrics.items() if np.isfinite(v)}


def record_bytes(record: UpdateRecord) -> bytes:
    """A record as stored: compact JSON with sorted keys (C-encoded; a shard writes thousands)."""
    return json.dumps(record.to_json(), sort_keys=True, separators=(",", ":")).encode()


def write_update(
    store: ArtifactStore, layout: RunLayout, record: UpdateRecord, weights: bytes
) -> UpdateRecord:
    """Weights first, record last: the record's presence is what marks the update complete."""
    record.sha256 = store.put_bytes(layout.update_weights(record.round, record.twin_id), weights)
    store.put_bytes(layout.update_meta(record.round, record.twin_id), record_bytes(record))
    return record


def write_updates(
    store: ArtifactStore, layout: RunLayout, updates: Sequence[tuple[UpdateRecord, bytes]]
) -> list[UpdateRecord]:
    """`write_update` for many twins (a fleet shard) as one `put_many`: every weights file ahead of
    every record (a record marks its update complete), the store's syncs batched."""
    for record, weights in updates:
        record.sha256 = sha256_hex(weights)
    store.put_many([(layout.update_weights(r.round, r.twin_id), w) for r, w in updates]
                   + [(layout.update_meta(r.round, r.twin_id), record_bytes(r)) for r, _ in updates])
    return [record for record, _ in updates]


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
    stored = set(records)
    checked: dict[str, tuple[UpdateRecord, bytes]] = {}
    for twin_id, record in records.items():
        try:
            data = _read_checked(store, layout, round_index, twin_id, record, base_sha256, stored,
                                 max_samples)
            checked[twin_id] = (record, data)
        except UpdateRejected as exc:
            rejected.append(Rejection(twin_id, str(exc), exc.kind))
        except (FedtwinError, ValueError, TypeError, KeyError) as exc:
            rejected.append(Rejection(twin_id, str(exc), BAD_RECORD))
    parsed = parse_updates([data for _, data in checked.values()], spec)
    accepted: list[AcceptedUpdate] = []
    for (twin_id, (record, _)), params in zip(checked.items(), parsed, strict=True):
        if isinstance(params, LayoutError):
            rejected.append(Rejection(twin_id, str(params), BAD_LAYOUT))
        else:
            accepted.append(AcceptedUpdate(record, params))
    if accepted:
        finite = np.isfinite(np.stack([a.params for a in accepted])).all(axis=1)
        rejected += [Rejection(a.record.twin_id, "update holds non-finite values (NaN or Inf)", NON_FINITE)
                     for a, ok in zip(accepted, finite, strict=True) if not ok]
        accepted = [a for a, ok in zip(accepted, finite, strict=True) if ok]
    if norm_bound_factor is not None and global_params is not None and accepted:
        accepted, outliers = split_norm_outliers(accepted, global_params, norm_bound_factor)
        rejected += outliers
    return accepted, sorted(rejected, key=lambda r: r.twin_id)


def _read_checked(
    store: ArtifactStore,
    layout: RunLayout,
    round_index: int,
    twin_id: str,
    record: UpdateRecord,
    base_sha256: str,
    stored: set[str],
    max_samples: int | None = None,
) -> bytes:
    """The record's checks, then its weights file's bytes (sha256 checked); parsing comes after."""
    if record.twin_id != twin_id:
        if record.twin_id in stored:
            raise UpdateRejected(
                DUPLICATE,
                f"duplicate twin: the record stored as {twin_id!r} claims twin {record.twin_id!r}, "
                "which has its own update in this round",
            )
        raise UpdateRejected(BAD_RECORD, f"misnamed record: it is stored as {twin_id!r} but names twin "
                                         f"{record.twin_id!r}; a twin writes only its own record")
    if record.round != round_index:
        raise UpdateRejected(WRONG_ROUND, f"record is for round {record.round}, not {round_index}")
    if record.base_sha256 != base_sha256:
        raise UpdateRejected(
            WRONG_BASE,
            f"update was trained from another global model (base sha256 {str(record.base_sha256)[:12]}…, "
            f"round {round_index}'s global is {base_sha256[:12]}…)",
        )
    if record.skipped:
        raise UpdateRejected(SKIPPED, f"skipped the round: {record.extra.get('reason') or record.skipped}")
    samples = record.num_samples
    if samples <= 0:
        raise UpdateRejected(BAD_SAMPLES, f"num_samples must be a positive integer, got {samples!r}")
    if max_samples is not None and samples > max_samples:
        raise UpdateRejected(
            BAD_SAMPLES,
            f"num_samples {samples} exceeds the {max_samples} one round of local training collects",
        )
    try:
        data, sha = store.get_checked(layout.update_weights(round_index, twin_id))
    except IntegrityError as exc:
        raise UpdateRejected(SHA_MISMATCH, str(exc)) from exc
    if sha != record.sha256:
        raise UpdateRejected(SHA_MISMATCH, "weights sha256 differs from the one in the update record")
    return data


def parse_updates(blobs: Sequence[bytes], spec: PolicySpec) -> list[np.ndarray | LayoutError]:
    """`params_from_bytes` of each model file (its parameters, or the LayoutError that rejects it).

    A round's files normally share one header byte for byte: the first of each header is parsed and
    checked in full, and every other file with that header and the same length is read as float32
    rows of one matrix, gathered into the layout's order in one indexing step.
    """
    out: list[np.ndarray | LayoutError] = [LayoutError("not parsed")] * len(blobs)
    groups: dict[bytes, list[int]] = {}
    for i, data in enumerate(blobs):
        try:
            (length,) = struct.unpack("<Q", data[:8])
        except struct.error:
            length = len(data)  # too short: parsed alone below, which names the problem
        groups.setdefault(bytes(data[: 8 + length]) + len(data).to_bytes(8, "little"), []).append(i)
    for rows in groups.values():
        try:
            first, _ = params_from_bytes(blobs[rows[0]], spec)
            out[rows[0]] = first
        except LayoutError as exc:
            out[rows[0]] = exc
            first = None
        order = _payload_order(blobs[rows[0]], first, spec) if first is not None else None
        for i in rows[1:]:
            if order is None:
                try:
                    out[i] = params_from_bytes(blobs[i], spec)[0]
                except LayoutError as exc:
                    out[i] = exc
        if order is not None and len(rows) > 1:
            start = len(blobs[rows[0]]) - 4 * order.size
            matrix = np.frombuffer(b"".join(blobs[i][start:] for i in rows[1:]), dtype="<f4")
            stacked = matrix.reshape(len(rows) - 1, -1)[:, order].astype(np.float32)
            for i, row in zip(rows[1:], stacked, strict=True):
                out[i] = row
    return out


def _payload_order(data: bytes, params: np.ndarray, spec: PolicySpec) -> np.ndarray | None:
    """Indices that gather a model file's float32 payload into the layout's vector, if its payload is
    exactly the little-endian float32 tensors that `params` holds (checked bit for bit); else None."""
    header = read_header(data)
    header.pop("__metadata__", None)
    (length,) = struct.unpack("<Q", data[:8])
    layout = layout_for(spec)
    if len(data) - 8 - length != 4 * params.size or any(e.get("dtype") != "F32" for e in header.values()):
        return None
    starts = [header[name]["data_offsets"][0] for name in layout.names]
    if any(start % 4 for start in starts):
        return None
    sizes = zip(starts, layout.sizes, strict=True)
    order = np.concatenate([np.arange(start // 4, start // 4 + n) for start, n in sizes])
    payload = np.frombuffer(data[8 + length :], dtype="<f4")
    same = np.array_equal(payload[order].view(np.uint32), params.view(np.uint32))
    if order.size != params.size or not same:
        return None
    return order


def update_norms(updates: np.ndarray, global_params: np.ndarray) -> np.ndarray:
    """`||update - global||` of each row, in float64; a block of rows at a time, so that the float64
    differences stay in cache instead of a [N, P] float64 copy (the same row sums)."""
    base = global_params.astype(np.float64)
    norms = np.empty(len(updates))
    for start in range(0, len(updates), NORM_BLOCK):
        block = updates[start : start + NORM_BLOCK].astype(np.float64) - base
        norms[start : start + NORM_BLOCK] = np.linalg.norm(block, axis=1)
    return norms


NORM_BLOCK = 32
"""Rows per block in `update_norms`."""


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
