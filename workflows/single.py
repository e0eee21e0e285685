"""`fedtwin-single`: the single-agent baseline, one pod, with the federated run's env-step budget.

    main:  baseline

It takes the federated template's run parameters (rounds, twins or fleet ConfigMap, seed, algo,
strategy, quorum, target return, privacy), so `fedtwin baseline` spends exactly the environment
steps a federated run with the same values does; given the federated run's `run-id`, it attaches
to that run (same config, same initial model; stored under `runs/<run-id>/baseline/`) and the
report plots both. It shares the run's mutex, so it waits while a federated workflow on the same
run id is running.
"""

from __future__ import annotations

from hera.workflows import DAG

from workflows.common import (
    AGGREGATOR_ENV,
    AGGREGATOR_POD_PARAMS,
    FEDERATION_PARAMS,
    IMAGE_PARAMS,
    RUN_PARAMS,
    STORE_PARAMS,
    TRACKING_PARAMS,
    TRACKING_URI_ENV,
    WorkflowParam,
    config_args,
    config_env,
    fedtwin_step,
    fleet_volume,
    param,
    parameters,
    run_template,
)

NAME = "fedtwin-single"
PARAMS = parameters([
    RUN_PARAMS, FEDERATION_PARAMS,
    [WorkflowParam(
        "mode", "pooled",
        "pooled: one agent cycling over every training twin (all data on one machine); single: one agent on "
        "one twin."),
     WorkflowParam("twin", "", "The twin of a `single` baseline; empty = the fleet's first.")],
    STORE_PARAMS, TRACKING_PARAMS, IMAGE_PARAMS, AGGREGATOR_POD_PARAMS,
])

baseline = fedtwin_step(
    "baseline",
    ["baseline", *config_args(), "--mode", param("mode"), "--twin", param("twin"),
     "--no-progress", "--json"],
    env=[*AGGREGATOR_ENV, *config_env(), TRACKING_URI_ENV],
    volumes=fleet_volume(),
)


with run_template(
    NAME,
    "Single-agent baseline with the env-step budget of "
    "a federated run (see workflows/README.md).",
    PARAMS,
) as w, DAG(name="main"):
    baseline(name="baseline")
