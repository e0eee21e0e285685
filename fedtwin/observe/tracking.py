"""MLflow tracking of a run: optional, best effort, never the source of truth.

One parent MLflow run per fedtwin run (tags `fedtwin.run_id` and `fedtwin.store` link it to the
store prefix; params are the flattened resolved config; `fed/*` metrics per round, step = round)
and one nested run per twin (tag `fedtwin.twin_id`; the twin's local metrics per round from the
round summary, which the aggregation step built from the update JSON, so twin steps never talk to
MLflow). Every step is its own process (an Argo pod), so runs are found again by tag search.

Logging is idempotent and catches up: each MLflow run carries the tag `fedtwin.last_logged_round`,
set in the same `log_batch` request as that round's metrics, and every call logs the store's rounds
after it. A retried aggregate logs nothing twice, and rounds played while the server was down are
logged by the next step that reaches it. If the server is down, the step logs one warning and goes
on; short HTTP timeouts and few retries keep a dead server from stalling it.

Enabled when `tracking.enabled` is true or `MLFLOW_TRACKING_URI` is set (non-empty); the URI is
`tracking.uri`, else `MLFLOW_TRACKING_URI`, else a local sqlite database `./mlruns/mlflow.db` (its
artifacts in `./mlruns/artifacts`). `tracking:` is the run's stored config overridden by the
step's own `FEDTWIN_TRACKING__*` variables, since where to log is not part of what a run computes.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedtwin.config import TrackingConfig, env_overrides
from fedtwin.sim.kind_registry import kind_of, kind_package
from fedtwin.store import LocalStore

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from fedtwin.store.context import RunContext

log = logging.getLogger("fedtwin.observe.tracking")

TAG_RUN_ID = "fedtwin.run_id"
TAG_STORE = "fedtwin.store"
TAG_ROLE = "fedtwin.role"
TAG_TWIN = "fedtwin.twin_id"
TAG_LAST_ROUND = "fedtwin.last_logged_round"
TAG_EVALUATED = "fedtwin.evaluated_model_round"
TAG_PARENT = "mlflow.parentRunId"
BATCH = 100
"""MLflow accepts at most 100 params or tags per `log_batch`."""


@dataclass(frozen=True)
class TrackingSettings:
    enabled: bool
    uri: str
    experiment: str
    request_timeout: int = 10
    max_retries: int = 1

    @classmethod
    def resolve(cls, config: TrackingConfig, environ: Mapping[str, str] | None = None) -> TrackingSettings:
        """The stored run config's `tracking:` < this process's `FEDTWIN_TRACKING__*` variables.

        Tracking is execution-only config, so a step (an Argo pod) may log somewhere else than the
        run's creator configured.
        """
        env = os.environ if environ is None else environ
        overrides = env_overrides(env).get("tracking")
        if isinstance(overrides, dict) and overrides:
            config = TrackingConfig.model_validate({**config.model_dump(), **overrides})
        env_uri = env.get("MLFLOW_TRACKING_URI") or None
        uri = config.uri or env_uri or default_uri()
        return cls(config.enabled or env_uri is not None, uri, config.experiment,
                   config.request_timeout, config.max_retries)


def default_uri() -> str:
    """A local sqlite database (MLflow 3's supported local backend) under ./mlruns."""
    return f"sqlite:///{(Path.cwd() / 'mlruns' / 'mlflow.db').as_posix()}"


def store_ref(ctx: RunContext) -> str:
    """The run's prefix URL in its store: the `fedtwin.store` tag (absolute for local stores)."""
    store = ctx.store
    if isinstance(store, LocalStore):
        return f"{store.root.resolve().as_posix()}/{ctx.layout.prefix}"
    return store.describe(ctx.layout.prefix)


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """{"train": {"num_steps": 8}} -> {"train.num_steps": "8"} (MLflow params are flat strings)."""
    if not isinstance(tree, dict):
        return {prefix: "null" if tree is None else str(tree)}
    out: dict[str, str] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def round_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The parent run's metrics for one round (cleanrl-style `fed/` namespace; central DP's epsilon)."""
    metrics = {
        "fed/validation_return": float(summary["validation_return"]),
        "fed/participants": float(len(summary["participants"])),
        "fed/rejected": float(len(summary["rejected"])),
        "fed/missing": float(len(summary.get("missing", []))),
        "fed/num_samples": float(summary["num_samples"]),
        "fed/round_seconds": float(summary.get("seconds", 0.0)),
        "fed/train_seconds": float(summary.get("train_seconds", 0.0)),
    }
    for rejection in summary["rejected"]:  # one counter per rejection kind, e.g. fed/rejected_non_finite
        key = f"fed/rejected_{rejection.get('kind', 'other')}"
        metrics[key] = metrics.get(key, 0.0) + 1.0
    if summary.get("skipped"):
        metrics["fed/skipped"] = float(len(summary["skipped"]))  # twins out of privacy budget
    server_epsilon = (summary.get("privacy") or {}).get("epsilon")
    if server_epsilon is not None:
        metrics["privacy/server_epsilon"] = float(server_epsilon)
    return metrics


def twin_round_metrics(summary: Mapping[str, Any], twin_id: str) -> dict[str, float]:
    """One twin's local metrics for one round, plus its epsilon when privacy is on."""
    metrics = {k: float(v) for k, v in summary.get("twin_metrics", {}).get(twin_id, {}).items()}
    epsilon = summary.get("twin_epsilon", {}).get(twin_id)
    if epsilon is not None:
        metrics["privacy/epsilon"] = float(epsilon)
    return metrics


class Tracker:
    """The MLflow side of one step; every public method is best effort and warns at most once."""

    def __init__(self, ctx: RunContext, step: str, settings: TrackingSettings | None = None) -> None:
        self.ctx = ctx
        self.step = step
        self.failed = False
        try:
            self.settings = settings or TrackingSettings.resolve(ctx.config.tracking)
        except Exception as exc:  # e.g. FEDTWIN_TRACKING__ENABLED=maybe: never fail the step for it
            self.settings = TrackingSettings(False, "", "")
            log.warning("MLflow tracking is off in the %s step: its settings are invalid (%s)", step,
                        str(exc).splitlines()[0])
        self._client: MlflowClient | None = None
        self._parent: Run | None = None
        self._twins: dict[str, Run] | None = None

    @property
    def active(self) -> bool:
        return self.settings.enabled and not self.failed

    # ------------------------------------------------------------------------- entry points
    def log_rounds(self) -> None:
        """Log every round in the store that MLflow does not have yet (aggregate calls this)."""
        if not self.active:
            return
        with self._guard():
            self._sync_rounds()

    def log_evaluation(self, evaluation: Mapping[str, Any]) -> None:
        """Final metrics on the parent, the final model and the fleet as artifacts (evaluate)."""
        if not self.active:
            return
        with self._guard():
            client, parent = self._sync_rounds()
            model_round = int(evaluation["model_round"])
            if parent.data.tags.get(TAG_EVALUATED) != str(model_round):
                now = _now_ms()
                metrics = {
                    "final/heldout_return": evaluation["heldout"]["mean_return"],
                    "final/train_return": evaluation["train"]["mean_return"],
                    "final/generalization_gap": evaluation["generalization_gap"],
                }
                client.log_batch(parent.info.run_id, metrics=_metrics(metrics, model_round, now),
                                 tags=_tags({TAG_EVALUATED: str(model_round)}))
            layout = self.ctx.layout
            self._log_store_objects(client, parent, {
                layout.report("final.safetensors"): "model",
                layout.twins: "",
                layout.config: "",
                layout.report("evaluation.json"): "",
            })

    def log_report(self, keys: list[str]) -> None:
        """The report files as artifacts; the MLflow runs are marked finished (report)."""
        if not self.active:
            return
        with self._guard():
            client, parent = self._sync_rounds()
            self._log_store_objects(client, parent, {key: "report" for key in keys})
            for run in [parent, *self._twin_runs(client, parent).values()]:
                if run.info.status != "FINISHED":
                    client.set_terminated(run.info.run_id, "FINISHED")

    # ------------------------------------------------------------------------------ helpers
    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            self.failed = True
            log.warning("MLflow tracking at %s failed in the %s step (%s: %s); the run goes on without "
                        "it and a later step catches up", self.settings.uri, self.step,
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")

    def client(self) -> MlflowClient:
        if self._client is None:
            # Applied before the first request; explicit MLFLOW_HTTP_* variables still win.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(self.settings.request_timeout))
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(self.settings.max_retries))
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            uri = self.settings.uri
            if uri.startswith("sqlite:///"):
                Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=uri)
        return self._client

    def _experiment_id(self, client: MlflowClient) -> str:
        name = self.settings.experiment
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        location = None
        if self.settings.uri.startswith("sqlite:///"):  # else MLflow puts artifacts in ./mlruns of the cwd
            location = (Path(self.settings.uri[len("sqlite:///") :]).parent / "artifacts").resolve().as_uri()
        try:
            return str(client.create_experiment(name, artifact_location=location))
        except Exception:  # another step created it meanwhile
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return str(experiment.experiment_id)

    def _search(self, client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
        runs: list[Run] = []
        token = None
        while True:
            page = client.search_runs([experiment_id], filter_string, max_results=1000,
                                      order_by=["attributes.start_time ASC"], page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def parent(self, client: MlflowClient) -> Run:
        """Find the run's parent MLflow run by its tags, or create it (with the config as params)."""
        if self._parent is not None:
            return self._parent
        experiment_id = self._experiment_id(client)
        run_id, ref = self.ctx.layout.run_id, store_ref(self.ctx)
        query = (f"tags.`{TAG_RUN_ID}` = '{run_id}' and tags.`{TAG_STORE}` = '{_quote(ref)}' "
                 f"and tags.`{TAG_ROLE}` = 'parent'")
        found = self._search(client, experiment_id, query)
        if found:
            self._parent = found[0]  # the oldest, should two steps ever have raced to create one
            return self._parent
        tags = {TAG_RUN_ID: run_id, TAG_STORE: ref, TAG_ROLE: "parent", TAG_LAST_ROUND: "-1"}
        created = client.create_run(experiment_id, tags=tags, run_name=run_id)
        params = flatten(self.ctx.config.model_dump(mode="json"))
        params.update({"fleet.train_twins": str(len(self.ctx.fleet.train)),
                       "fleet.validation_twins": str(len(self.ctx.fleet.validation)),
                       "fleet.heldout_twins": str(len(self.ctx.fleet.heldout))})
        package = kind_package(kind_of(self.ctx.fleet.train))
        if package is not None:  # a user's kind: which version of its simulator trained the run
            params["fleet.kind_package"] = package
        from mlflow.entities import Param

        items = sorted(params.items())
        for start in range(0, len(items), BATCH):
            client.log_batch(created.info.run_id,
                             params=[Param(k, v[:6000]) for k, v in items[start : start + BATCH]])
        self._parent = client.get_run(created.info.run_id)
        return self._parent

    def _twin_runs(self, client: MlflowClient, parent: Run) -> dict[str, Run]:
        if self._twins is None:
            query = f"tags.`{TAG_PARENT}` = '{parent.info.run_id}' and tags.`{TAG_ROLE}` = 'twin'"
            self._twins = {}
            for run in self._search(client, parent.info.experiment_id, query):
                self._twins.setdefault(run.data.tags[TAG_TWIN], run)
        return self._twins

    def _twin_run(self, client: MlflowClient, parent: Run, twin_id: str) -> Run:
        twins = self._twin_runs(client, parent)
        if twin_id not in twins:
            tags = {TAG_RUN_ID: self.ctx.layout.run_id, TAG_STORE: parent.data.tags[TAG_STORE],
                    TAG_ROLE: "twin", TAG_TWIN: twin_id, TAG_PARENT: parent.info.run_id,
                    TAG_LAST_ROUND: "-1"}
            twins[twin_id] = client.create_run(parent.info.experiment_id, tags=tags, run_name=twin_id)
        return twins[twin_id]

    def _sync_rounds(self) -> tuple[MlflowClient, Run]:
        """Log the store's rounds newer than each MLflow run's `fedtwin.last_logged_round` tag."""
        client = self.client()
        parent = self.parent(client)
        store, layout = self.ctx.store, self.ctx.layout
        logged = int(parent.data.tags.get(TAG_LAST_ROUND, "-1"))
        next_round = int(self.ctx.state()["next_round"])
        for round_index in range(logged + 1, next_round):
            if not store.exists(layout.summary(round_index)):
                continue
            summary = store.get_json(layout.summary(round_index))
            now = _now_ms()
            twin_ids = sorted(set(summary.get("twin_metrics", {})) | set(summary.get("participants", [])))
            for twin_id in twin_ids:
                run = self._twin_run(client, parent, twin_id)
                if int(run.data.tags.get(TAG_LAST_ROUND, "-1")) >= round_index:
                    continue
                # Metrics and the marker tag in one request: SQL backends apply it atomically.
                client.log_batch(run.info.run_id,
                                 metrics=_metrics(twin_round_metrics(summary, twin_id), round_index, now),
                                 tags=_tags({TAG_LAST_ROUND: str(round_index)}))
                run.data.tags[TAG_LAST_ROUND] = str(round_index)
            if summary["rejected"]:  # who was rejected and why, readable in the MLflow UI
                client.log_dict(parent.info.run_id, {"round": round_index, "rejected": summary["rejected"]},
                                f"rounds/{round_index:04d}/rejected.json")
            client.log_batch(parent.info.run_id, metrics=_metrics(round_metrics(summary), round_index, now),
                             tags=_tags({TAG_LAST_ROUND: str(round_index)}))
            parent.data.tags[TAG_LAST_ROUND] = str(round_index)
        return client, parent

    def _log_store_objects(self, client: MlflowClient, parent: Run, keys: Mapping[str, str]) -> None:
        """Copy store objects into the parent run's artifacts (same path again = same artifact)."""
        with tempfile.TemporaryDirectory(prefix="fedtwin-mlflow-") as tmp:
            for key, artifact_dir in keys.items():
                if not self.ctx.store.exists(key):
                    continue
                path = Path(tmp, artifact_dir or ".", key.rsplit("/", 1)[-1])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(self.ctx.store.get_bytes(key))
                client.log_artifact(parent.info.run_id, str(path), artifact_dir or None)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def _metrics(values: Mapping[str, float], step: int, timestamp: int) -> list[Any]:
    from mlflow.entities import Metric

    return [Metric(key, float(value), timestamp, step) for key, value in sorted(values.items())]


def _tags(values: Mapping[str, str]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(key, value) for key, value in values.items()]


def log_round(ctx: RunContext) -> None:
    """Called by the aggregate step once the round's summary is in the store."""
    Tracker(ctx, "aggregate").log_rounds()


def log_evaluation(ctx: RunContext, evaluation: Mapping[str, Any]) -> None:
    Tracker(ctx, "evaluate").log_evaluation(evaluation)


def log_report(ctx: RunContext, keys: list[str]) -> None:
    Tracker(ctx, "report").log_report(keys)
