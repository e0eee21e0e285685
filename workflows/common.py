"""The one place for the image, fixed names and every Argo expression string the templates use.

Template modules never spell `{{...}}` themselves: they call the helpers here, so a renamed
parameter or a changed expression is one edit, and the tests parse the same strings back. Every pod
runs the `fedtwin` CLI from the project image; nothing is inlined.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hera.workflows import Container, Env, Parameter, RetryStrategy, SecretEnv, WorkflowTemplate
from hera.workflows import models as m

from fedtwin import __version__
from fedtwin.config import Config

# ------------------------------------------------------------------------------- fixed names
IMAGE = f"fedtwin:{__version__}"
"""Default image: a plain name:tag. Which registry serves it is the installer's choice (Helm values)."""
IMAGE_PULL_POLICY = "IfNotPresent"
"""A fixed field, not a parameter (Hera validates it); Helm may rewrite it in the rendered YAML."""
ENTRYPOINT = "fedtwin"
OUTPUTS_DIR = "/tmp/fedtwin/outputs"
"""Where steps write their Argo output parameters (`--outputs-dir`)."""
FLEET_DIR = "/etc/fedtwin/fleet"
FLEET_KEY = "fleet.yaml"
"""Key of the fleet YAML in a fleet ConfigMap (mounted at FLEET_DIR)."""
NO_CONFIGMAP = "fedtwin-no-fleet"
"""Stand-in ConfigMap name (mounted optional) when no fleet ConfigMap is given."""
ARTIFACT_REPOSITORY = m.ArtifactRepositoryRef(
    config_map="artifact-repositories", key="default-v1-s3-artifact-repository"
)
S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "accessKey", "AWS_SECRET_ACCESS_KEY": "secretKey"}
"""Env var -> key in the S3 credentials Secret."""
STEP_DEADLINE_SECONDS = "3600"
"""activeDeadlineSeconds of the aggregator-side steps (twin pods have a parameter)."""
IMAGE_UID = 10001
"""The image's numeric user and group (the Dockerfile's USER; a test keeps the two equal)."""
POD_SECURITY = m.PodSecurityContext(
    run_as_non_root=True, run_as_user=IMAGE_UID, run_as_group=IMAGE_UID, fs_group=IMAGE_UID,
    seccomp_profile=m.SeccompProfile(type="RuntimeDefault"),
)
"""Every pod meets the Kubernetes `restricted` Pod Security Standard (with the container part below)."""
CONTAINER_SECURITY = m.SecurityContext(
    allow_privilege_escalation=False, capabilities=m.Capabilities(drop=["ALL"]), run_as_non_root=True,
)
TERMINATION_LOG = "/dev/termination-log"
"""The container's terminationMessagePath: `fedtwin` writes its one-line error there
(FEDTWIN_TERMINATION_LOG), and Argo shows it as the failed node's message."""
RUN_DEADLINE_SECONDS = 7 * 86400
"""The workflow's activeDeadlineSeconds (an integer field of the spec: Argo cannot take it from a
parameter; the chart sets it from a value, a Workflow manifest per run; see workflows/README.md)."""
POD_GC = m.PodGC(strategy="OnPodSuccess", delete_delay_duration="10m")
TTL = m.TTLStrategy(seconds_after_success=3 * 86400, seconds_after_failure=7 * 86400)

APP = "fedtwin"
LABEL_APP = "app.kubernetes.io/name"
LABEL_ROLE = "fedtwin.io/role"
LABEL_RUN = "fedtwin.io/run-id"
LABEL_TWIN = "fedtwin.io/twin-id"
LABEL_ROUND = "fedtwin.io/round"
ROLE_TWIN = "twin"
ROLE_AGGREGATOR = "aggregator"
KUBEOVN_SWITCH = "ovn.kubernetes.io/logical_switch"
UNUSED_SWITCH = "fedtwin.io/logical-switch"
"""Harmless annotation key used instead of KUBEOVN_SWITCH when no subnet is given."""


# ---------------------------------------------------------------------- Argo expression strings
def param(name: str) -> str:
    """A workflow parameter: `{{workflow.parameters.NAME}}`."""
    return "{{workflow.parameters." + name + "}}"


def input_param(name: str) -> str:
    """An input parameter of the current template."""
    return "{{inputs.parameters." + name + "}}"


def task_output(task: str, name: str) -> str:
    """An output parameter of an earlier DAG task."""
    return "{{tasks." + task + ".outputs.parameters." + name + "}}"


def global_output(name: str) -> str:
    """A workflow output parameter (exported with `globalName`), readable in the exit handler."""
    return "{{workflow.outputs.parameters." + name + "}}"


def global_output_ref(name: str) -> str:
    """A workflow output inside an expression (index form: names contain '-')."""
    return f"workflow.outputs.parameters['{name}']"


def own_output(name: str) -> str:
    """An output parameter of the template itself (metrics are emitted after the step ran)."""
    return "{{outputs.parameters." + name + "}}"


ITEM = "{{item}}"
WORKFLOW_NAME = "{{workflow.name}}"
WORKFLOW_STATUS = "{{workflow.status}}"
STEP_SUCCEEDED = "{{status}} == Succeeded"
"""`when` of a template metric: emit only after a successful step."""


def expr(source: str) -> str:
    """An expression tag, evaluated by Argo (expr-lang with sprig) at run time."""
    return "{{=" + source + "}}"


def param_ref(name: str) -> str:
    """A workflow parameter inside an expression (index form: names contain '-')."""
    return f"workflow.parameters['{name}']"


def literal(text: str) -> str:
    return "'" + text.replace("'", "\\'") + "'"


def if_given(name: str, then: str, otherwise: str) -> str:
    """Expression: `then` when parameter `name` is not empty, else `otherwise` (both expressions)."""
    return expr(f"{param_ref(name)} != '' ? {then} : {otherwise}")


RUN_ID_SOURCE = f"{param_ref('run-id')} != '' ? {param_ref('run-id')} : workflow.name"
RUN_ID = expr(RUN_ID_SOURCE)
"""The run id: the `run-id` parameter, or the workflow name when it is empty."""
FLEET_CONFIGMAP = if_given("fleet-configmap", param_ref("fleet-configmap"), literal(NO_CONFIGMAP))
FLEET_FILE = if_given("fleet-configmap", literal(f"{FLEET_DIR}/{FLEET_KEY}"), "''")
"""FEDTWIN_FLEET__FILE: the mounted fleet, or empty (generate `twins` twins)."""
TRAIN_DEVICE = expr(f"asInt({param_ref('twin-gpu-limit')}) > 0 ? 'cuda' : 'cpu'")
SUBNET_ANNOTATION_KEY = if_given("subnet", literal(KUBEOVN_SWITCH), literal(UNUSED_SWITCH))
"""KubeOVN reads an *empty* logical_switch annotation as a subnet named "", so without a subnet the
annotation goes under a key KubeOVN ignores (Argo substitutes keys as well as values)."""
TWIN_LABEL = expr(
    "sprig.trimAll('.-', sprig.trunc(63, sprig.replace(',', '.', inputs.parameters.twins)))"
)
"""Label value for a pod's twins: the twin id, or a shard's ids joined by '.' (<= 63 characters)."""
TWIN_SECRET = expr(
    f"{param_ref('per-twin-secrets')} == 'true'"
    f" ? {param_ref('twin-s3-secret')} + '-' + inputs.parameters.twins : {param_ref('twin-s3-secret')}"
)
"""The twin pod's S3 Secret: the shared twin identity, or `<twin-s3-secret>-<twin id>` per twin."""
RETRY_UNLESS_BAD_INPUT = "lastRetry.exitCode != '2' && lastRetry.exitCode != '3'"
"""fedtwin exits 2 on bad input and 3 on a lost quorum: retrying cannot help; 1 and pod errors may be
transient."""


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


# ------------------------------------------------------------------------------- pod pieces
def s3_env(secret: str) -> list[Env | SecretEnv]:
    """S3 credentials from a Secret (optional: IRSA/workload identity need none) and the endpoint."""
    env: list[Env | SecretEnv] = [
        SecretEnv(name=var, secret_name=secret, secret_key=key, optional=True)
        for var, key in S3_SECRET_KEYS.items()
    ]
    env += [Env(name="FEDTWIN_S3_ENDPOINT", value=param("s3-endpoint")),
            Env(name="FEDTWIN_S3_REGION", value=param("s3-region"))]
    return env


def dp_noise_env(secret: WorkflowParam) -> list[Env | SecretEnv]:
    """The DP noise key from the Secret named by `secret` (twins: local DP; aggregator: central DP).

    Optional, like the S3 keys: without the Secret the step still runs, with unkeyed noise.
    """
    return [SecretEnv(name=DP_NOISE_KEY_ENV, secret_name=param(secret.name), secret_key="key", optional=True)]


AGGREGATOR_ENV = s3_env(param("aggregator-s3-secret"))
"""Aggregator-side pods: the aggregator's S3 identity (reads and writes the whole run)."""
TRACKING_URI_ENV = Env(name="MLFLOW_TRACKING_URI", value=param("mlflow-uri"))
TRACKING_ENV = [*AGGREGATOR_ENV, TRACKING_URI_ENV]
"""Aggregator-side pods that log to MLflow."""


def yaml_string(value: str) -> str:
    """A FEDTWIN_* value that stays a string: the variables are parsed as YAML scalars, where a bare
    `off` is the boolean false and `123` a number."""
    return f"'{value}'"


def config_env() -> list[Env]:
    """Config keys without a CLI flag, as FEDTWIN_<SECTION>__<KEY> (an empty value means null)."""
    return [
        Env(name="FEDTWIN_FLEET__FILE", value=FLEET_FILE),
        Env(name="FEDTWIN_FEDERATION__MIN_TWINS", value=param("min-twins")),
        Env(name="FEDTWIN_FEDERATION__TARGET_RETURN", value=param("target-return")),
        Env(name="FEDTWIN_PRIVACY__MODE", value=yaml_string(param("privacy"))),
        Env(name="FEDTWIN_PRIVACY__TARGET_EPSILON", value=param("privacy-epsilon")),
        Env(name="FEDTWIN_PRIVACY__DELTA", value=param("privacy-delta")),
        Env(name="FEDTWIN_TRACKING__EXPERIMENT", value=yaml_string(param("mlflow-experiment"))),
    ]


def config_args() -> list[str]:
    """The run's config as `fedtwin step init` / `fedtwin baseline` flags (the rest: config_env)."""
    return ["--store", param("store"), "--run-id", RUN_ID, "--seed", param("seed"),
            "--rounds", param("rounds"), "--twins", param("twins"), "--algo", param("algo"),
            "--strategy", param("strategy")]


def fleet_volume() -> tuple[list[m.Volume], list[m.VolumeMount]]:
    """The optional fleet ConfigMap, mounted read-only at FLEET_DIR."""
    volume = m.Volume(name="fleet", config_map=m.ConfigMapVolumeSource(name=FLEET_CONFIGMAP, optional=True))
    return [volume], [m.VolumeMount(name="fleet", mount_path=FLEET_DIR, read_only=True)]


def resources_patch(prefix: str, gpu: bool = False) -> str:
    """The main container's requests and limits from the `<prefix>-cpu-request`, ... parameters, as a
    `podSpecPatch`. Not in `container.resources`: Argo's full CRDs hold those fields to the quantity
    pattern (`500m`, `1Gi`), so the API server refuses a `{{...}}` there; a patch is a string, and
    Argo substitutes it before it merges it into the pod (workflowpod.go)."""
    limits = {"cpu": param(f"{prefix}-cpu-limit"), "memory": param(f"{prefix}-memory-limit")}
    if gpu:
        limits["nvidia.com/gpu"] = param(f"{prefix}-gpu-limit")
    requests = {"cpu": param(f"{prefix}-cpu-request"), "memory": param(f"{prefix}-memory-request")}
    container = {"name": "main", "resources": {"requests": requests, "limits": limits}}
    return json.dumps({"containers": [container]}, separators=(",", ":"))


def retry(limit: str) -> RetryStrategy:
    """Retry transient failures with exponential backoff; never retry bad input (exit 2)."""
    return RetryStrategy(
        limit=limit,
        retry_policy="Always",
        expression=RETRY_UNLESS_BAD_INPUT,
        # `cap`, not `maxDuration`: Argo counts maxDuration from the first attempt's start and also
        # cuts each retried pod's deadline to it (operator.go processNodeRetries), so a step longer
        # than it would never be retried.
        backoff=m.Backoff(duration="15s", factor=m.IntOrString("2"), cap="5m"),
    )


def outputs_param(name: str, default: str | None = None, global_name: str | None = None) -> Parameter:
    """An output parameter read from the file a step wrote with `--outputs-dir`."""
    value_from = m.ValueFrom(path=f"{OUTPUTS_DIR}/{name}", default=default)
    return Parameter(name=name, value_from=value_from, global_name=global_name)


@dataclass(frozen=True)
class PodKind:
    """Who a pod is: its role label, service account, resources, deadline and retries."""

    role: str
    prefix: str
    """Parameter prefix: `<prefix>-service-account`, `<prefix>-cpu-request`, ..."""
    gpu: bool = False
    deadline: str = STEP_DEADLINE_SECONDS
    retries: str = "2"


TWIN_POD = PodKind(ROLE_TWIN, "twin", gpu=True, deadline=param("twin-deadline"),
                   retries=param("twin-retries"))
AGGREGATOR_POD = PodKind(ROLE_AGGREGATOR, "aggregator")


def fedtwin_step(
    name: str,
    args: list[str],
    *,
    pod: PodKind = AGGREGATOR_POD,
    inputs: list[Parameter] | None = None,
    outputs: list | None = None,
    env: list | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    volumes: tuple[list[m.Volume], list[m.VolumeMount]] | None = None,
    **template: object,
) -> Container:
    """A template running `fedtwin ARGS` from the project image."""
    return Container(
        name=name,
        image=param("image"),
        image_pull_policy=IMAGE_PULL_POLICY,
        command=[ENTRYPOINT],
        args=args,
        inputs=inputs,
        outputs=outputs,
        env=[*(env or []), Env(name="PYTHONUNBUFFERED", value="1"),
             Env(name="FEDTWIN_TERMINATION_LOG", value=TERMINATION_LOG)],
        termination_message_path=TERMINATION_LOG,
        termination_message_policy="FallbackToLogsOnError",
        security_context=CONTAINER_SECURITY,
        labels={LABEL_ROLE: pod.role, **(labels or {})},
        annotations=annotations,
        service_account_name=param(f"{pod.prefix}-service-account"),
        pod_spec_patch=resources_patch(pod.prefix, gpu=pod.gpu),
        volumes=volumes[0] if volumes else None,
        volume_mounts=volumes[1] if volumes else None,
        active_deadline_seconds=pod.deadline,
        retry_strategy=retry(pod.retries),
        **template,  # type: ignore[arg-type]
    )


def run_mutex() -> m.Synchronization:
    """One workflow per run id at a time (Argo v4 `mutexes`): two submissions never write one run."""
    return m.Synchronization(mutexes=[m.Mutex(name=f"fedtwin-run-{RUN_ID}")])


def run_metadata() -> tuple[m.Metadata, m.WorkflowMetadata]:
    """Labels on every pod (app, run id) and on the Workflow object (run id, for `argo list -l`)."""
    pod = m.Metadata(labels={LABEL_APP: APP, LABEL_RUN: RUN_ID})
    workflow = m.WorkflowMetadata(
        labels={LABEL_APP: APP},
        labels_from={LABEL_RUN: m.LabelValueFrom(expression=RUN_ID_SOURCE)},
    )
    return pod, workflow


def template(name: str, description: str, params: Sequence[WorkflowParam], **extra: Any) -> WorkflowTemplate:
    """Every fedtwin WorkflowTemplate: description, label, `main` entrypoint, parameters, pod GC, TTL."""
    return WorkflowTemplate(
        name=name,
        annotations={"workflows.argoproj.io/description": description},
        labels={"app.kubernetes.io/name": "fedtwin"},
        entrypoint="main",
        arguments=[p.build() for p in params],
        pod_gc=POD_GC,
        ttl_strategy=TTL,
        security_context=POD_SECURITY,
        active_deadline_seconds=RUN_DEADLINE_SECONDS,
        **extra,
    )


def run_template(
    name: str, description: str, params: Sequence[WorkflowParam], **extra: Any
) -> WorkflowTemplate:
    """A template that writes a run: the run mutex, artifact repository and run labels besides."""
    pod_metadata, workflow_metadata = run_metadata()
    return template(name, description, params, synchronization=run_mutex(),
                    artifact_repository_ref=ARTIFACT_REPOSITORY, pod_metadata=pod_metadata,
                    workflow_metadata=workflow_metadata, **extra)


def report_and_finish(env: list[Env]) -> tuple[Container, Container]:
    """The `report` step and the exit handler's `finish` step, both taking the run id as input."""
    store = param("store")
    run_input = [Parameter(name="run-id")]
    report = fedtwin_step("report", ["step", "report", "--run", input_param("run-id"), "--store", store],
                          inputs=run_input, env=env)
    finish = fedtwin_step(
        "finish",
        ["step", "finish", "--run", input_param("run-id"), "--status", WORKFLOW_STATUS, "--store", store,
         "--reason", f"Argo workflow {WORKFLOW_NAME} ended {WORKFLOW_STATUS}"],
        inputs=run_input,
        env=env,
    )
    return report, finish
