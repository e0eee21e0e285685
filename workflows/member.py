"""`fedtwin-member`: a member cluster's share of a multi-cluster run (its twins, every round).

    main:  member        (one pod: `fedtwin step member`, from the first open round to the last)

Clusters meet only in the S3 store (fedtwin/run/multicluster.py, karmada/README.md): the pod waits
for each round's global model, trains this cluster's twins, writes their updates and waits for the
host's aggregation, until the run's last round is aggregated; it fails when the run fails (exit 3,
not retried). A retried or resubmitted member resumes at the first open round and skips stored
updates. The pod is a twin pod: twin service account, twin S3 identity (reads global models,
writes updates), twin NetworkPolicy and KubeOVN subnet, no MLflow. On Karmada, one Workflow of
this template is propagated to every member cluster and an OverridePolicy per cluster sets its
`twins` and `s3-endpoint`.
"""

from __future__ import annotations

from hera.workflows import DAG, Env, Parameter
from hera.workflows import models as m

from workflows.common import (
    IMAGE_PARAMS,
    LABEL_RUN,
    LABEL_TWIN,
    OUTPUTS_DIR,
    ROLE_TWIN,
    STORE_PARAMS,
    SUBNET_ANNOTATION_KEY,
    TRAIN_DEVICE,
    TWIN_DP_NOISE_SECRET,
    TWIN_LABEL,
    TWIN_POD_PARAMS,
    TWIN_STORE_PARAMS,
    PodKind,
    WorkflowParam,
    dp_noise_env,
    fedtwin_step,
    input_param,
    outputs_param,
    param,
    parameters,
    s3_env,
    template,
)

NAME = "fedtwin-member"
MEMBER_PARAMS = [
    WorkflowParam("run-id", "", "The run to take part in: the coordinator's run id (required)."),
    WorkflowParam("twins", "", "This cluster's twins, comma-separated (required; on Karmada, set per member "
                  "cluster by its OverridePolicy)."),
    WorkflowParam("workers", "1", "Training processes in the member pod (at most one per twin); match "
                  "`twin-cpu-limit`."),
    WorkflowParam("wait-timeout", "", "Seconds one wait (for the run, a global model, an aggregation) may "
                  "last; empty = the run's `multicluster.wait_timeout_seconds`."),
    WorkflowParam("poll-interval", "", "Seconds between the first looks at the store while waiting; empty = "
                  "the run's `multicluster.poll_interval`."),
    WorkflowParam("max-poll-interval", "", "Cap of the backed-off poll interval; empty = the run's "
                  "`multicluster.max_poll_interval`."),
    WorkflowParam("member-deadline", "604800", "activeDeadlineSeconds of the member pod, which lives for the "
                  "whole run."),
]
STORE = [p for p in STORE_PARAMS if p.name != "aggregator-s3-secret"]
TWIN_STORE = [p for p in TWIN_STORE_PARAMS if p.name == "twin-s3-secret"]
TWIN_POD = [p for p in TWIN_POD_PARAMS if p.name != "twin-deadline"]
PARAMS = parameters([MEMBER_PARAMS, [TWIN_DP_NOISE_SECRET], STORE, TWIN_STORE, IMAGE_PARAMS, TWIN_POD])

MEMBER_POD = PodKind(ROLE_TWIN, "twin", gpu=True, deadline=param("member-deadline"),
                     retries=param("twin-retries"))
"""A twin pod that lives for the whole run: its own deadline, the twins' retries."""
WAIT_ENV = [
    Env(name="FEDTWIN_MULTICLUSTER__WAIT_TIMEOUT_SECONDS", value=param("wait-timeout")),
    Env(name="FEDTWIN_MULTICLUSTER__POLL_INTERVAL", value=param("poll-interval")),
    Env(name="FEDTWIN_MULTICLUSTER__MAX_POLL_INTERVAL", value=param("max-poll-interval")),
]
"""An empty value keeps the run's stored setting (`fedtwin.run.multicluster.resolve_settings`)."""

member = fedtwin_step(
    "member",
    ["step", "member", "--run", input_param("run-id"), "--twins", input_param("twins"),
     "--store", param("store"), "--device", TRAIN_DEVICE, "--workers", param("workers"),
     "--outputs-dir", OUTPUTS_DIR],
    pod=MEMBER_POD,
    inputs=[Parameter(name="run-id"), Parameter(name="twins")],
    env=[*s3_env(param("twin-s3-secret")), *WAIT_ENV, *dp_noise_env(TWIN_DP_NOISE_SECRET)],
    labels={LABEL_TWIN: TWIN_LABEL},
    annotations={SUBNET_ANNOTATION_KEY: param("subnet")},
    outputs=[outputs_param("rounds"), outputs_param("status")],
)

with template(
    NAME,
    "A member cluster's twins in every round of a multi-cluster run, meeting the host only in the S3 "
    "store (see karmada/README.md).",
    PARAMS,
    synchronization=m.Synchronization(mutexes=[m.Mutex(name=f"fedtwin-member-{param('run-id')}")]),
    pod_metadata=m.Metadata(labels={"app.kubernetes.io/name": "fedtwin", LABEL_RUN: param("run-id")}),
) as w, DAG(name="main"):
    member(name="member", arguments={"run-id": param("run-id"), "twins": param("twins")})
