"""MLflow tracking: settings, idempotent per-round logging, catch-up, and a dead server never fails a run."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest
import torch

from fedtwin.config import TrackingConfig, load_config
from fedtwin.observe import tracking
from fedtwin.run import steps
from fedtwin.run.runner import run
from fedtwin.store import LocalStore
from tests.helpers import write_tiny_config

torch.set_num_threads(1)


def test_settings_enabled_by_config_or_environment():
    off = tracking.TrackingSettings.resolve(TrackingConfig(), {})
    by_env = tracking.TrackingSettings.resolve(TrackingConfig(), {"MLFLOW_TRACKING_URI": "http://h:5000"})
    by_config = tracking.TrackingSettings.resolve(TrackingConfig(enabled=True, uri="http://cfg:5000"),
                                                  {"MLFLOW_TRACKING_URI": "http://h:5000"})

    assert not off.enabled and off.uri.startswith("sqlite:///") and off.uri.endswith("/mlruns/mlflow.db")
    assert by_env.enabled and by_env.uri == "http://h:5000"
    assert by_config.enabled and by_config.uri == "http://cfg:5000"


def test_a_step_environment_overrides_the_stored_tracking_config():
    stored = TrackingConfig(enabled=False, experiment="stored")
    env = {"FEDTWIN_TRACKING__ENABLED": "true", "FEDTWIN_TRACKING__EXPERIMENT": "pods",
           "FEDTWIN_TRACKING__URI": "http://mlflow:5000", "MLFLOW_TRACKING_URI": ""}

    settings = tracking.TrackingSettings.resolve(stored, env)

    assert (settings.enabled, settings.experiment, settings.uri) == (True, "pods", "http://mlflow:5000")
    assert not tracking.TrackingSettings.resolve(stored, {"MLFLOW_TRACKING_URI": ""}).enabled  # "" = off


def test_flatten_config_into_params():
    assert tracking.flatten({"a": {"b": 1, "c": None}, "d": [1, 2]}) == {"a.b": "1", "a.c": "null",
                                                                        "d": "[1, 2]"}


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory):
    """One local MLflow database for the module: creating one costs seconds (schema migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def tiny_run(tmp_path, monkeypatch, uri, run_id="demo", **overrides):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = load_config(write_tiny_config(tmp_path, **overrides),
                         {"run_id": run_id, "store": str(tmp_path / "store")}, environ={})
    run(config, progress=False)
    return LocalStore(tmp_path / "store")


def read_back(uri, store, run_id="demo"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("fedtwin")
    ref = f"{store.root.resolve().as_posix()}/runs/{run_id}/"
    runs = client.search_runs([experiment.experiment_id], f"tags.`fedtwin.store` = '{ref}'")
    parents = [r for r in runs if r.data.tags["fedtwin.role"] == "parent"]
    twins = {r.data.tags["fedtwin.twin_id"]: r for r in runs if r.data.tags["fedtwin.role"] == "twin"}
    return client, parents, twins


def history(client, run, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def test_run_logs_parent_and_nested_twins_once_per_round(tmp_path, monkeypatch, sqlite_uri):
    uri = sqlite_uri
    store = tiny_run(tmp_path, monkeypatch, uri)

    client, parents, twins = read_back(uri, store)

    assert len(parents) == 1 and sorted(twins) == ["twin-000", "twin-001", "twin-002"]
    parent = parents[0]
    assert parent.data.params["train.num_steps"] == "16" and parent.data.params["fleet.train_twins"] == "3"
    assert parent.data.params["fleet.kind"] == "cartpole" and "fleet.kind_package" not in parent.data.params
    assert parent.data.tags["fedtwin.run_id"] == "demo" and parent.info.status == "FINISHED"
    summaries = [store.get_json(f"runs/demo/rounds/{r:04d}/summary.json") for r in range(2)]
    assert history(client, parent, "fed/validation_return") == [(r, s["validation_return"])
                                                                 for r, s in enumerate(summaries)]
    assert history(client, parent, "fed/participants") == [(0, 3.0), (1, 3.0)]
    for twin_id, twin in twins.items():
        assert twin.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert history(client, twin, "charts/episodes") == [
            (r, s["twin_metrics"][twin_id]["charts/episodes"]) for r, s in enumerate(summaries)]
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.artifact_location.startswith(Path(uri[len("sqlite:///"):]).parent.as_uri())
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"model", "twins.yaml", "config.yaml", "report"} <= artifacts
    report_files = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/validation_return.png"} <= report_files

    # A retried aggregate (the summary exists) and a rerun report step log nothing twice.
    steps.aggregate(store, "demo", 1)
    steps.aggregate(store, "demo", 0)
    steps.evaluate(store, "demo")
    client, parents, twins = read_back(uri, store)
    assert len(parents) == 1 and len(twins) == 3
    assert len(history(client, parents[0], "fed/validation_return")) == 2
    assert len(history(client, parents[0], "final/heldout_return")) == 1
    assert len(history(client, twins["twin-000"], "charts/episodes")) == 2


def test_dead_server_warns_once_per_step_and_a_later_step_catches_up(tmp_path, monkeypatch, caplog,
                                                                    sqlite_uri):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"

    with caplog.at_level(logging.WARNING, logger="fedtwin.observe.tracking"):
        store = tiny_run(tmp_path, monkeypatch, dead)

    warnings = [r.getMessage() for r in caplog.records if r.name == "fedtwin.observe.tracking"]
    # one per step: aggregate x 2 rounds, evaluate, report
    assert len(warnings) == 4, warnings
    assert all(dead in w and "the run goes on" in w for w in warnings)
    assert store.get_json("runs/demo/state.json")["status"] == "done"

    uri = sqlite_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    tracking.log_round(steps.RunContext.load(store, "demo"))
    client, parents, twins = read_back(uri, store)
    assert history(client, parents[0], "fed/participants") == [(0, 3.0), (1, 3.0)]
    assert len(twins) == 3


def test_enabled_without_uri_uses_a_local_sqlite_database_in_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = tracking.TrackingSettings.resolve(TrackingConfig(enabled=True), {})

    assert settings.enabled and settings.uri == f"sqlite:///{tmp_path.resolve() / 'mlruns' / 'mlflow.db'}"


def test_tracking_off_touches_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    config = load_config(write_tiny_config(tmp_path, **{"federation.rounds": 1}),
                         {"run_id": "demo", "store": str(tmp_path / "store")}, environ={})
    run(config, progress=False)

    assert not (tmp_path / "mlruns").exists()


def test_rejected_updates_are_recorded_with_their_reason(tmp_path, monkeypatch, sqlite_uri):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    config = load_config(write_tiny_config(tmp_path, **{"federation.min_twins": 1}),
                         {"run_id": "demo", "store": str(tmp_path / "store")}, environ={})
    store = LocalStore(tmp_path / "store")
    init = steps.init(store, config)
    steps.train(store, "demo", 0, init.twin_ids)
    key = "runs/demo/rounds/0000/updates/twin-001.json"
    record = store.get_json(key)
    record["round"] = 5  # claims another round
    store.put_json(key, record)

    summary = steps.aggregate(store, "demo", 0)

    client, parents, _ = read_back(sqlite_uri, store)
    kind = summary["rejected"][0]["kind"]
    assert history(client, parents[0], f"fed/rejected_{kind}") == [(0, 1.0)]
    logged = client.download_artifacts(parents[0].info.run_id, "rounds/0000/rejected.json", str(tmp_path))
    rejected = json.loads(Path(logged).read_text())["rejected"]
    assert rejected[0]["twin_id"] == "twin-001" and "round 5" in rejected[0]["reason"]
