"""The workflow-level parameters the templates declare: name, default (from the config's defaults)
and meaning."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hera.workflows import Parameter

from fedtwin.config import Config
from workflows.names import (
    FLEET_KEY,
    IMAGE,
)


# ------------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class WorkflowParam:
    """A workflow-level parameter: name, default (None = must be given at submit) and meaning."""

    name: str
    default: str | None
    description: str

    def build(self) -> Parameter:
        if self.default is None:
            return Parameter(name=self.name, description=self.description)
        return Parameter(name=self.name, value=self.default, description=self.description)


def _number(value: float) -> str:
    return f"{value:g}"


DEFAULTS = Config()


RUN_PARAMS = [
    WorkflowParam("run-id", "", "Run id (DNS-1123 label); empty = the workflow name. An existing run id "
                  "resumes that run."),
    WorkflowParam("seed", str(DEFAULTS.seed), "Run seed; the same seed reproduces the run."),
    WorkflowParam("rounds", str(DEFAULTS.federation.rounds), "Federated rounds (maximum; the run stops early "
                  "at `target-return`)."),
    WorkflowParam("twins", str(DEFAULTS.fleet.count), "Number of generated training twins (ignored with "
                  "`fleet-configmap`)."),
    WorkflowParam("fleet-configmap", "", f"ConfigMap with a fleet YAML under key `{FLEET_KEY}` describing "
                  "real devices; empty = generate `twins` twins."),
    WorkflowParam("kind", "", "Twin kind of generated twins: cartpole, pendulum, acrobot, or a user's kind "
                  "(module:Class or a `fedtwin.twins` entry point installed in `image`); empty = the "
                  "`fleet-configmap`'s `kind:` line, else cartpole."),
    WorkflowParam("algo", DEFAULTS.train.algo, "Local trainer: ppo or reinforce."),
]
TARGET_RETURN = WorkflowParam(
    "target-return", _number(DEFAULTS.federation.target_return or 0),
    "Stop early when the (global) model's validation return reaches this; empty = always spend all rounds.")
DP_NOISE_KEY_ENV = "FEDTWIN_DP_NOISE_KEY"
"""fedtwin.learn.accounting.NOISE_KEY_ENV (not imported: that module imports torch)."""
TWIN_DP_NOISE_SECRET = WorkflowParam(
    "twin-dp-noise-secret", "fedtwin-dp-noise-twin",
    "Secret (key `key`) that keys the twins' local-DP noise seeds: a retried pod draws the same noise, and "
    "the run's stored seed alone cannot regenerate it. Never give it to the aggregator (with it, the "
    "aggregator could regenerate and subtract a twin's noise). No such Secret = fresh OS entropy per pod "
    "(private, not reproducible).")
AGGREGATOR_DP_NOISE_SECRET = WorkflowParam(
    "aggregator-dp-noise-secret", "fedtwin-dp-noise-aggregator",
    "Secret (key `key`) that keys the aggregator's central-DP noise seeds; a different secret from the "
    "twins'. No such Secret = fresh OS entropy per aggregation.")
FEDERATION_PARAMS = [
    WorkflowParam("min-twins", _number(DEFAULTS.federation.min_twins), "Quorum of valid updates per round: a "
                  "count (>= 1) or a fraction of the fleet (< 1); below it the round fails."),
    WorkflowParam("strategy", DEFAULTS.federation.strategy, "Aggregation strategy (e.g. fedavg, fedprox, "
                  "fedadam, median, krum)."),
    TARGET_RETURN,
    WorkflowParam("privacy", DEFAULTS.privacy.mode, "Differential privacy: off, local (Opacus per twin) or "
                  "central (at the aggregator)."),
    WorkflowParam("privacy-epsilon", "", "Privacy budget epsilon (per twin with local DP, of the global "
                  "models with central DP); the noise is calibrated to spend at most this over the planned "
                  "rounds."),
    WorkflowParam("privacy-delta", _number(DEFAULTS.privacy.delta), "Delta of the (epsilon, delta) "
                  "guarantee: below 1 / a twin's transitions over the run (local) or 1 / twins (central)."),
]
MAX_WORKFLOW_NODES = 12_000
"""What one Workflow object holds with room to spare (1 MiB compressed; tests/test_workflow_size.py)."""
FAN_OUT_PARAMS = [
    WorkflowParam("twins-per-pod", "0", "Twins per training pod: 1 = one pod per twin; N > 1 = shards of N "
                  "twins trained together by the fleet engine; 0 = one pod per twin up to `parallelism` "
                  "pods, then the fewest equal shards that fit."),
    WorkflowParam("parallelism", "100", "The most training pods a round runs at once (a round starts them "
                  "together); with `twins-per-pod` 0 the twins are packed into at most this many pods, with "
                  "N >= 1 a fleet that needs more pods is refused before round 0."),
    WorkflowParam("max-workflow-nodes", str(MAX_WORKFLOW_NODES), "Refuse, before round 0, a run whose "
                  "workflow would make more nodes than this: Argo keeps them all in one Workflow object of "
                  "at most 1 MiB (see \"Limits on a real cluster\"); 0 = no check, for a controller that "
                  "offloads node status to a database."),
]
STORE_PARAMS = [
    WorkflowParam("store", "s3://fedtwin", "Artifact store of the runs (s3://BUCKET[/PREFIX]); the single "
                  "source of truth."),
    WorkflowParam("s3-endpoint", "", "S3 endpoint URL (MinIO, SeaweedFS, ...); empty = AWS."),
    WorkflowParam("s3-region", "us-east-1", "S3 region."),
    WorkflowParam("aggregator-s3-secret", "fedtwin-platform-s3-aggregator", "Secret (keys `accessKey`, "
                  "`secretKey`) with the aggregator-side S3 identity: reads and writes the run."),
]
TWIN_STORE_PARAMS = [
    WorkflowParam("twin-s3-secret", "fedtwin-platform-s3-twin", "Secret (keys `accessKey`, `secretKey`) with "
                  "the twin S3 identity: reads global models, writes only updates."),
    WorkflowParam("per-twin-secrets", "false", "true = each twin pod uses the Secret `<twin-s3-secret>-<twin "
                  "id>`, an identity that may write only that twin's updates (needs `twins-per-pod` 1)."),
]
TRACKING_PARAMS = [
    WorkflowParam("mlflow-uri", "", "MLflow tracking URI for the aggregator-side steps; empty = no MLflow."),
    WorkflowParam("mlflow-experiment", DEFAULTS.tracking.experiment, "MLflow experiment name."),
]
IMAGE_PARAMS = [
    WorkflowParam("image", IMAGE, "Image every step runs (it provides the `fedtwin` CLI)."),
]
AGGREGATOR_POD_PARAMS = [
    WorkflowParam("aggregator-service-account", "fedtwin-aggregator", "Service account of the "
                  "aggregator-side pods (every pod but the twins')."),
    WorkflowParam("aggregator-cpu-request", "500m", "CPU request of aggregator-side pods."),
    WorkflowParam("aggregator-memory-request", "512Mi", "Memory request of aggregator-side pods."),
    WorkflowParam("aggregator-cpu-limit", "2", "CPU limit of aggregator-side pods."),
    WorkflowParam("aggregator-memory-limit", "2Gi", "Memory limit of aggregator-side pods."),
]
TWIN_POD_PARAMS = [
    WorkflowParam("twin-service-account", "fedtwin-twin", "Service account of twin pods."),
    WorkflowParam("subnet", "", "KubeOVN subnet (logical switch) of twin pods; empty = none (no KubeOVN "
                  "annotation)."),
    WorkflowParam("twin-cpu-request", "500m", "CPU request of each twin pod."),
    WorkflowParam("twin-memory-request", "512Mi", "Memory request of each twin pod."),
    WorkflowParam("twin-cpu-limit", "1", "CPU limit of each twin pod."),
    WorkflowParam("twin-memory-limit", "1Gi", "Memory limit of each twin pod."),
    WorkflowParam("twin-gpu-limit", "0", "GPUs (nvidia.com/gpu) per twin pod; > 0 also trains on cuda."),
    WorkflowParam("twin-retries", "2", "Retries of a failed twin pod (with exponential backoff); bad input "
                  "(exit 2) is not retried."),
    WorkflowParam("twin-deadline", "3600", "activeDeadlineSeconds of each twin pod attempt."),
]


def parameters(groups: Sequence[Sequence[WorkflowParam]]) -> list[WorkflowParam]:
    """Concatenate parameter groups, refusing duplicates."""
    out: list[WorkflowParam] = []
    for group in groups:
        for p in group:
            if any(q.name == p.name for q in out):
                raise ValueError(f"parameter {p.name!r} declared twice")
            out.append(p)
    return out
