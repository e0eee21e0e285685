"""`fedtwin-evaluate`: evaluate a model greedily on a set of twins (e.g. real devices' twins).

    main:  evaluate

The model is an artifact key in the workflow's artifact repository (by default a run's final model,
`runs/<run-id>/report/final.safetensors`, which is where the store keeps it when the repository and
the store share a bucket); the twins come from a ConfigMap holding a fleet YAML.
"""

from __future__ import annotations

from hera.workflows import DAG, S3Artifact
from hera.workflows import models as m

from workflows.common import (
    AGGREGATOR_POD_PARAMS,
    ARTIFACT_REPOSITORY,
    FLEET_DIR,
    FLEET_KEY,
    IMAGE_PARAMS,
    WorkflowParam,
    fedtwin_step,
    if_given,
    literal,
    param,
    param_ref,
    parameters,
    template,
)

NAME = "fedtwin-evaluate"
MODEL_PATH = "/tmp/fedtwin/model.safetensors"
MODEL_KEY = if_given("model-key", param_ref("model-key"),
                     f"{literal('runs/')} + {param_ref('run-id')} + {literal('/report/final.safetensors')}")
"""The `model-key` parameter, or the final model of run `run-id`."""

PARAMS = parameters([
    [
        WorkflowParam("run-id", "", "Run whose final model to evaluate (key "
                      "`runs/<run-id>/report/final.safetensors`)."),
        WorkflowParam("model-key", "", "Artifact key of the model instead (e.g. a round's `global-model` "
                      "artifact, or `runs/<id>/rounds/0003/global.safetensors`); empty = the run's final "
                      "model."),
        WorkflowParam("twins-configmap", None, "ConfigMap with the twin set: a fleet YAML under key "
                      f"`{FLEET_KEY}` (required)."),
        WorkflowParam("episodes", "4", "Greedy episodes per twin."),
        WorkflowParam("seed", "0", "Evaluation seed."),
    ],
    IMAGE_PARAMS, AGGREGATOR_POD_PARAMS,
])

evaluate = fedtwin_step(
    "evaluate",
    ["evaluate", "--model", MODEL_PATH, "--twins", f"{FLEET_DIR}/{FLEET_KEY}",
     "--episodes", param("episodes"), "--seed", param("seed"), "--json"],
    inputs=[S3Artifact(name="model", path=MODEL_PATH, key=MODEL_KEY)],
    volumes=(
        [m.Volume(name="twins", config_map=m.ConfigMapVolumeSource(name=param("twins-configmap")))],
        [m.VolumeMount(name="twins", mount_path=FLEET_DIR, read_only=True)],
    ),
)

with template(
    NAME,
    "Evaluate a model greedily on a twin set (see workflows/README.md).",
    PARAMS,
    artifact_repository_ref=ARTIFACT_REPOSITORY,
    pod_metadata=m.Metadata(labels={"app.kubernetes.io/name": "fedtwin"}),
) as w, DAG(name="main"):
    evaluate(name="evaluate")
