"""End to end against real servers: `fedtwin run --store s3://...` with MLflow on, killed and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from fedtwin.store import RunLayout
from fedtwin.store.s3 import S3Settings, S3Store
from tests.helpers import clean_env, final_model_hash, write_tiny_config

pytestmark = pytest.mark.integration
RUN_ID = "e2e"
ROUNDS = 2


def run_env(s3_server, mlflow_server):
    return clean_env(**s3_server.env(), MLFLOW_TRACKING_URI=mlflow_server.uri,
                     FEDTWIN_FEDERATION__TARGET_RETURN="null")


def command(config, url):
    return [sys.executable, "-m", "fedtwin", "run", "--config", str(config), "--store", url,
            "--run-id", RUN_ID, "--no-progress"]


def admin_store(s3_server, prefix):
    return S3Store(s3_server.bucket, prefix, S3Settings(endpoint=s3_server.endpoint, region=s3_server.region),
                   client=s3_server.client())


def mlflow_runs(mlflow_server, store):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("fedtwin")
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`fedtwin.store` = '{store.describe(RunLayout(RUN_ID).prefix)}'")
    parents = [r for r in runs if r.data.tags["fedtwin.role"] == "parent"]
    twins = {r.data.tags["fedtwin.twin_id"]: r for r in runs if r.data.tags["fedtwin.role"] == "twin"}
    return client, parents, twins


def steps_of(client, run, key):
    return [m.step for m in client.get_metric_history(run.info.run_id, key)]


def test_run_on_s3_with_mlflow_killed_in_round_two_resumes_to_the_same_weights(
        tmp_path, s3_server, mlflow_server):
    config = write_tiny_config(tmp_path, **{"federation.rounds": ROUNDS})
    env = run_env(s3_server, mlflow_server)
    tag = uuid.uuid4().hex[:8]
    clean_url = f"s3://{s3_server.bucket}/e2e-clean-{tag}"
    killed_url = f"s3://{s3_server.bucket}/e2e-killed-{tag}"

    # Uninterrupted reference run.
    done = subprocess.run(command(config, clean_url), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "MLflow tracking" not in done.stderr  # no tracking warning: MLflow got everything
    assert f"{clean_url}/runs/{RUN_ID}/report/report.html" in done.stdout
    clean = admin_store(s3_server, f"e2e-clean-{tag}")

    # The same run, SIGKILLed (with its workers) once round 2 has begun: round 0's summary and a
    # round-1 update are in the store, round 1's summary is not.
    killed = admin_store(s3_server, f"e2e-killed-{tag}")
    layout = RunLayout(RUN_ID)
    proc = subprocess.Popen(command(config, killed_url), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while not (killed.exists(layout.summary(0)) and killed.list(layout.updates_dir(1))):
            assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "round 2 never started"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert not killed.exists(layout.summary(1)), "killed too late: round 2 had already finished"
    assert killed.get_json(layout.state)["status"] == "running"

    resumed = subprocess.run(command(config, killed_url), env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr

    assert final_model_hash(killed, RUN_ID) == final_model_hash(clean, RUN_ID)
    assert killed.get_json(layout.state)["status"] == "done"
    for name in ("report.html", "report.md", "validation_return.png", "twin_returns.png"):
        assert killed.exists(layout.report(name)), name

    # MLflow: one parent and three nested twin runs, each round logged exactly once despite the kill.
    for store in (clean, killed):
        client, parents, twins = mlflow_runs(mlflow_server, store)
        assert len(parents) == 1 and sorted(twins) == ["twin-000", "twin-001", "twin-002"]
        parent = parents[0]
        assert parent.data.tags["fedtwin.run_id"] == RUN_ID
        assert parent.data.params["federation.rounds"] == str(ROUNDS)
        for key in ("fed/validation_return", "fed/participants", "fed/rejected", "fed/round_seconds"):
            assert steps_of(client, parent, key) == list(range(ROUNDS)), key
        assert steps_of(client, parent, "final/heldout_return") == [ROUNDS]
        for twin in twins.values():
            assert twin.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert sorted(steps_of(client, twin, "charts/episodes")) == list(range(ROUNDS))
        artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"model", "twins.yaml", "report"} <= artifacts
        assert {a.path for a in client.list_artifacts(parent.info.run_id, "model")} == {
            "model/final.safetensors"}


def test_a_fleet_shard_on_s3_writes_the_updates_a_local_store_gets(s3_server, tmp_path):
    # The shard's update writes go out several at once on S3 (run_concurrently); the objects must be
    # exactly those a local store gets one by one.
    from fedtwin.config import load_config
    from fedtwin.run import steps
    from fedtwin.store import LocalStore

    config = load_config(write_tiny_config(tmp_path, **{"fleet.count": 6}),
                         {"run_id": "shard", "store": str(tmp_path / "local")}, environ={})
    s3, local = admin_store(s3_server, f"fleet-{uuid.uuid4().hex[:8]}"), LocalStore(tmp_path / "local")
    layout = RunLayout("shard")
    for store in (s3, local):
        twin_ids = steps.init(store, config).twin_ids
        steps.train(store, "shard", 0, twin_ids, engine="fleet")

    assert len(twin_ids) == 6
    for twin_id in twin_ids:
        weights = layout.update_weights(0, twin_id)
        assert s3.get_bytes(weights) == local.get_bytes(weights)
        s3_meta, local_meta = (store.get_json(layout.update_meta(0, twin_id)) for store in (s3, local))
        assert {k: v for k, v in s3_meta.items() if k != "seconds"} == {
            k: v for k, v in local_meta.items() if k != "seconds"}
