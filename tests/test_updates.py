"""Update validation in the aggregation step: every bad update is dropped with a recorded reason.

Each test starts from a run whose round 0 has three honest updates (tiny config, quorum 2), spoils
one update the way a faulty or malicious twin would, aggregates, and reads the round summary.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fedtwin.config import load_config
from fedtwin.core.errors import QuorumError
from fedtwin.federation.updates import (
    BAD_LAYOUT,
    BAD_RECORD,
    BAD_SAMPLES,
    DUPLICATE,
    NON_FINITE,
    NORM_OUTLIER,
    NOT_IN_FLEET,
    SHA_MISMATCH,
    WRONG_BASE,
    WRONG_ROUND,
    UpdateRecord,
    load_and_validate,
    write_update,
)
from fedtwin.policy.layout import PolicySpec, params_from_bytes, params_to_bytes
from fedtwin.policy.network import init_params
from fedtwin.run import steps
from fedtwin.store import LocalStore, RunLayout, sha256_hex
from tests.helpers import write_tiny_config

torch.set_num_threads(1)
RUN = "updates"
TWINS = ["twin-000", "twin-001", "twin-002"]
LAYOUT = RunLayout(RUN)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A store holding the run after init and round-0 training of every twin (built once)."""
    root = tmp_path_factory.mktemp("pristine")
    config = load_config(write_tiny_config(root), {"run_id": RUN, "store": str(root / "store")}, environ={})
    store = LocalStore(config.store)
    steps.init(store, config)
    steps.train(store, RUN, 0, TWINS)
    return root / "store"


@pytest.fixture
def run(pristine, tmp_path):
    """A private copy of the pristine store and helpers to spoil one update."""
    shutil.copytree(pristine, tmp_path / "store")
    return Run(LocalStore(tmp_path / "store"))


class Run:
    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self.ctx = steps.RunContext.load(store, RUN)

    def record(self, twin_id: str, round_index: int = 0) -> UpdateRecord:
        return UpdateRecord.from_json(self.store.get_json(LAYOUT.update_meta(round_index, twin_id)))

    def params(self, twin_id: str, round_index: int = 0) -> np.ndarray:
        return params_from_bytes(self.store.get_bytes(LAYOUT.update_weights(round_index, twin_id)))[0]

    def global_params(self, round_index: int = 0) -> np.ndarray:
        return self.ctx.global_model(round_index)[0]

    def rewrite(self, twin_id: str, params: np.ndarray, round_index: int = 0, **record_changes) -> None:
        """A twin that signs its own (bad) update correctly: weights and a matching record."""
        record = self.record(twin_id, round_index)
        for key, value in record_changes.items():
            setattr(record, key, value)
        write_update(self.store, LAYOUT, record, params_to_bytes(params, self.ctx.spec))

    def aggregate(self, round_index: int = 0) -> dict:
        return steps.aggregate(self.store, RUN, round_index)


def only_rejection(summary: dict) -> dict:
    assert len(summary["rejected"]) == 1, summary["rejected"]
    return summary["rejected"][0]


def test_honest_round_rejects_nothing(run):
    summary = run.aggregate()
    assert summary["participants"] == TWINS
    assert summary["rejected"] == []


def test_non_finite_update_is_rejected(run):
    # Prepare
    params = run.params("twin-001")
    params[[0, 5]] = [np.nan, np.inf]
    run.rewrite("twin-001", params)
    # Execute
    summary = run.aggregate()
    # Assert
    rejection = only_rejection(summary)
    assert rejection["twin_id"] == "twin-001" and rejection["kind"] == NON_FINITE
    assert "NaN or Inf" in rejection["reason"]
    assert summary["participants"] == ["twin-000", "twin-002"]
    assert np.all(np.isfinite(run.global_params(1)))


def test_update_of_another_policy_layout_is_rejected(run):
    other = PolicySpec(kind="actor_critic", hidden=(8,))
    data = params_to_bytes(init_params(other, 0), other)
    record = run.record("twin-002")
    write_update(run.store, LAYOUT, record, data)

    rejection = only_rejection(run.aggregate())

    assert rejection["twin_id"] == "twin-002" and rejection["kind"] == BAD_LAYOUT
    assert "expected" in rejection["reason"]


def test_wrongly_shaped_tensors_and_garbage_bytes_are_rejected(run):
    from safetensors.numpy import save

    named = {"bogus.weight": np.zeros((3, 3), np.float32)}
    write_update(run.store, LAYOUT, run.record("twin-000"), save(named))
    write_update(run.store, LAYOUT, run.record("twin-001"), b"not a model at all")

    accepted, rejected = load_and_validate(
        run.store, LAYOUT, 0, set(TWINS), run.ctx.spec, sha256_hex(run.ctx.global_model(0)[1])
    )

    assert [a.record.twin_id for a in accepted] == ["twin-002"]
    assert [(r.twin_id, r.kind) for r in rejected] == [("twin-000", BAD_LAYOUT), ("twin-001", BAD_LAYOUT)]
    assert "missing tensors" in rejected[0].reason
    assert "not a safetensors model file" in rejected[1].reason


def test_update_trained_on_another_rounds_global_is_rejected(run):
    # Prepare: play round 0, train round 1, then replay twin-001's round-0 weights as its round-1 update
    run.aggregate(0)
    steps.train(run.store, RUN, 1, TWINS)
    stale = run.record("twin-001", 0)
    run.rewrite("twin-001", run.params("twin-001", 0), 1, base_sha256=stale.base_sha256)
    # Execute
    summary = run.aggregate(1)
    # Assert
    rejection = only_rejection(summary)
    assert rejection["twin_id"] == "twin-001" and rejection["kind"] == WRONG_BASE
    assert "another global model" in rejection["reason"]


def test_record_for_another_round_is_rejected(run):
    record = run.record("twin-000")
    record.round = 3  # the record sits in round 0's folder but says round 3
    run.store.put_json(LAYOUT.update_meta(0, "twin-000"), record.to_json())
    rejection = only_rejection(run.aggregate())
    assert rejection["kind"] == WRONG_ROUND and "round 3, not 0" in rejection["reason"]


def test_sha256_mismatch_between_record_and_weights_is_rejected(run):
    record = run.record("twin-002")
    record.sha256 = "0" * 64
    run.store.put_json(LAYOUT.update_meta(0, "twin-002"), record.to_json())

    rejection = only_rejection(run.aggregate())

    assert rejection["twin_id"] == "twin-002" and rejection["kind"] == SHA_MISMATCH
    assert "sha256 differs" in rejection["reason"]


def test_weights_tampered_after_writing_are_rejected(run):
    path = run.store.root / LAYOUT.update_weights(0, "twin-000")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last tensor, leave the store's sha256 sidecar as it was
    path.write_bytes(bytes(data))

    rejection = only_rejection(run.aggregate())

    assert rejection["twin_id"] == "twin-000" and rejection["kind"] == SHA_MISMATCH
    assert "corrupt" in rejection["reason"]


def test_two_records_claiming_one_twin_keep_the_genuine_one(run):
    # Prepare: twin-002's slot holds a record (and weights) claiming to be twin-000
    impostor = run.record("twin-000")
    run.store.put_bytes(LAYOUT.update_weights(0, "twin-002"),
                        run.store.get_bytes(LAYOUT.update_weights(0, "twin-000")))
    run.store.put_json(LAYOUT.update_meta(0, "twin-002"), impostor.to_json())
    # Execute
    summary = run.aggregate()
    # Assert: twin-000 counted once
    rejection = only_rejection(summary)
    assert rejection["twin_id"] == "twin-002" and rejection["kind"] == DUPLICATE
    assert "claims twin 'twin-000'" in rejection["reason"]
    assert summary["participants"] == ["twin-000", "twin-001"]


def test_twin_outside_the_fleet_is_rejected(run):
    record = run.record("twin-000")
    record.twin_id = "twin-999"
    write_update(run.store, LAYOUT, record, run.store.get_bytes(LAYOUT.update_weights(0, "twin-000")))

    summary = run.aggregate()

    rejection = only_rejection(summary)
    assert rejection["twin_id"] == "twin-999" and rejection["kind"] == NOT_IN_FLEET
    assert summary["participants"] == TWINS


def test_update_far_beyond_the_rounds_norms_is_rejected(run):
    glob = run.global_params()
    run.rewrite("twin-001", glob + 50.0 * (run.params("twin-001") - glob))

    rejection = only_rejection(run.aggregate())

    assert rejection["twin_id"] == "twin-001" and rejection["kind"] == NORM_OUTLIER
    assert "exceeds 10 x the round's median norm" in rejection["reason"]


def test_norm_bound_can_be_switched_off(run):
    glob = run.global_params()
    scaled = glob + 50.0 * (run.params("twin-001") - glob)
    base = sha256_hex(run.ctx.global_model(0)[1])
    run.rewrite("twin-001", scaled)

    accepted, rejected = load_and_validate(run.store, LAYOUT, 0, set(TWINS), run.ctx.spec, base, glob, None)

    assert rejected == [] and len(accepted) == 3


def test_quorum_lost_to_rejections_fails_the_round_with_every_reason(run):
    for twin_id in ("twin-000", "twin-001"):
        params = run.params(twin_id)
        params[0] = np.nan
        run.rewrite(twin_id, params)

    with pytest.raises(QuorumError) as err:
        run.aggregate()

    message = str(err.value)
    assert "1 valid updates, below the quorum of 2" in message
    assert message.count("non-finite") == 2
    assert run.ctx.state()["status"] == "failed"
    assert not run.store.exists(LAYOUT.global_model(1))


def test_inflated_sample_count_is_rejected(run):
    # Prepare: a twin claims 1000x the samples one round collects, to dominate the weighted mean
    record = run.record("twin-000")
    run.rewrite("twin-000", run.params("twin-000"), num_samples=record.num_samples * 1000)
    # Execute
    rejection = only_rejection(run.aggregate())
    # Assert: tiny config collects updates*num_steps*num_envs = 1*16*2 = 32 samples per round
    assert rejection["kind"] == BAD_SAMPLES
    assert "num_samples 32000 exceeds the 32" in rejection["reason"]


# ------------------------------------------------------------------- hostile records (issue 17)
# One value per field that a compromised twin could write into its own record. Each must be
# rejected as bad_record naming the field, and nothing from the record may reach the summary.
HOSTILE_FIELDS = [
    ("twin_id", 7), ("twin_id", "../twin-000"), ("round", "0"), ("round", -1), ("round", True),
    ("num_samples", "abc"), ("num_samples", True), ("num_samples", 1.5), ("num_samples", -5),
    ("sha256", ["x"]), ("sha256", "not-a-hash"), ("base_sha256", None),
    ("metrics", "high"), ("metrics", {"charts/episodic_return": "high"}),
    ("metrics", {"charts/episodic_return": float("nan")}), ("metrics", {f"m{i}": 1.0 for i in range(1000)}),
    ("epsilon", "x"), ("epsilon", -1.0), ("epsilon", float("inf")),
    ("seconds", "abc"), ("seconds", -1.0), ("seconds", float("nan")), ("seconds", 1e300),
    ("engine", "gpu"), ("engine", 5), ("extra", "x"), ("extra", {"skipped": ["x"]}),
    ("extra", {"evil": 1}), ("evil", 1),
]


@pytest.mark.parametrize(("field", "value"), HOSTILE_FIELDS,
                         ids=[f"{f}={str(v)[:20]}" for f, v in HOSTILE_FIELDS])
def test_a_hostile_record_field_is_rejected_and_leaves_no_trace_in_the_summary(run, field, value):
    import json

    data = run.store.get_json(LAYOUT.update_meta(0, "twin-001"))
    data[field] = value
    run.store.put_json(LAYOUT.update_meta(0, "twin-001"), data)

    summary = run.aggregate()

    rejection = only_rejection(summary)
    assert rejection["twin_id"] == "twin-001" and rejection["kind"] == BAD_RECORD, rejection
    assert field in rejection["reason"]
    assert summary["participants"] == ["twin-000", "twin-002"]
    assert "twin-001" not in summary["twin_metrics"] and "twin-001" not in summary["twin_epsilon"]
    json.dumps(summary, allow_nan=False)  # strict JSON: no NaN or Infinity from the record


def test_a_record_that_is_not_an_object_or_nests_too_deep_is_a_bad_record(run):
    run.store.put_json(LAYOUT.update_meta(0, "twin-000"), ["not", "an", "object"])
    run.store.put_bytes(LAYOUT.update_meta(0, "twin-001"), b"[" * 100_000 + b"]" * 100_000)

    accepted, rejected = load_and_validate(
        run.store, LAYOUT, 0, set(TWINS), run.ctx.spec, sha256_hex(run.ctx.global_model(0)[1])
    )

    assert [a.record.twin_id for a in accepted] == ["twin-002"]
    assert [(r.twin_id, r.kind) for r in rejected] == [("twin-000", BAD_RECORD), ("twin-001", BAD_RECORD)]


def test_the_report_survives_a_round_with_hostile_epsilon_and_seconds(run):
    from fedtwin.observe.report import write_report

    data = run.store.get_json(LAYOUT.update_meta(0, "twin-001"))
    data.update(epsilon="x", seconds="abc")
    run.store.put_json(LAYOUT.update_meta(0, "twin-001"), data)
    run.aggregate()
    steps.train(run.store, RUN, 1, TWINS)
    run.aggregate(1)
    steps.evaluate(run.store, RUN)

    assert write_report(run.store, RUN).endswith("report.html")


def test_a_skip_marker_on_a_record_for_another_base_model_stays_rejected(run):
    """Only a genuine privacy skip (this round, this base model) is listed as skipped with its epsilon."""
    data = run.store.get_json(LAYOUT.update_meta(0, "twin-001"))
    data.update(num_samples=0, epsilon=3.0, base_sha256="0" * 64,
                extra={"skipped": "privacy budget", "reason": "privacy budget: trust me"})
    run.store.put_json(LAYOUT.update_meta(0, "twin-001"), data)

    summary = run.aggregate()

    assert only_rejection(summary)["kind"] == WRONG_BASE
    assert summary["skipped"] == [] and "twin-001" not in summary["twin_epsilon"]


def test_a_misnamed_record_is_not_called_a_duplicate(run):
    # twin-002's slot holds a record naming twin-003, which has no update of its own (and no slot)
    data = run.store.get_json(LAYOUT.update_meta(0, "twin-002"))
    data["twin_id"] = "twin-003"
    run.store.put_json(LAYOUT.update_meta(0, "twin-002"), data)

    rejection = only_rejection(run.aggregate())

    assert rejection["kind"] == BAD_RECORD
    assert rejection["reason"] == ("misnamed record: it is stored as 'twin-002' but names twin 'twin-003'; "
                                   "a twin writes only its own record")
