"""What the templates import: the pod pieces they share (environment, arguments, volumes, retries, the
fedtwin step container, the template frame), defined here, and the names, Argo expressions
(workflows/names.py) and parameters (workflows/params.py), named here too so a template has one import."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hera.workflows import Container, Env, Parameter, RetryStrategy, SecretEnv, WorkflowTemplate
from hera.workflows import models as m

from workflows.names import *  # noqa: F403  (named here for the templates)
from workflows.names import (
    APP,
    ARTIFACT_REPOSITORY,
    CONTAINER_SECURITY,
    ENTRYPOINT,
    FLEET_CONFIGMAP,
    FLEET_DIR,
    FLEET_FILE,
    IMAGE_PULL_POLICY,
    LABEL_APP,
    LABEL_ROLE,
    LABEL_RUN,
    OUTPUTS_DIR,
    POD_GC,
    POD_SECURITY,
    RETRY_UNLESS_BAD_INPUT,
    ROLE_AGGREGATOR,
    ROLE_TWIN,
    RUN_DEADLINE_SECONDS,
    RUN_ID,
    RUN_ID_SOURCE,
    S3_SECRET_KEYS,
    STEP_DEADLINE_SECONDS,
    TERMINATION_LOG,
    TTL,
    WORKFLOW_NAME,
    WORKFLOW_STATUS,
    input_param,
    param,
)
from workflows.params import *  # noqa: F403
from workflows.params import (
    DP_NOISE_KEY_ENV,
    WorkflowParam,
)


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
        Env(name="FEDTWIN_FLEET__KIND", value=param("kind")),
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
