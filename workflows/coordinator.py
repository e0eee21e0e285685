"""`fedtwin-coordinator`: the host cluster's side of a multi-cluster run.

    main:  init ──> coordinate ──> report          (onExit: exit-handler ──> finish)

`init` creates (or resumes) the run with the protocol settings in its stored config, so every
member reads the same deadline and polling; `coordinate` (one long-lived aggregator pod) aggregates
each round as soon as every twin's update is in the store, or at `round-deadline` with at least
`min-twins` of them, records late updates, and evaluates the final model; `report` writes the
report. Members run `fedtwin-member` in their own clusters; nothing but the S3 store connects
them (karmada/README.md). On Karmada this Workflow stays on the host: no policy propagates it.
"""

from __future__ import annotations

from hera.workflows import DAG, Env, Parameter, Steps

from workflows.common import (
    AGGREGATOR_DP_NOISE_SECRET,
    AGGREGATOR_ENV,
    AGGREGATOR_POD_PARAMS,
    DEFAULTS,
    FEDERATION_PARAMS,
    IMAGE_PARAMS,
    OUTPUTS_DIR,
    ROLE_AGGREGATOR,
    RUN_PARAMS,
    STORE_PARAMS,
    TRACKING_ENV,
    TRACKING_PARAMS,
    PodKind,
    WorkflowParam,
    config_args,
    config_env,
    dp_noise_env,
    fedtwin_step,
    fleet_volume,
    global_output,
    input_param,
    outputs_param,
    param,
    parameters,
    report_and_finish,
    run_template,
    task_output,
)

NAME = "fedtwin-coordinator"
_MC = DEFAULTS.multicluster
PROTOCOL_PARAMS = [
    WorkflowParam("round-deadline", f"{_MC.round_deadline_seconds:g}", "Seconds a round waits for every "
                  "twin's update; then it aggregates with at least `min-twins`, or the run fails."),
    WorkflowParam("wait-timeout", f"{_MC.wait_timeout_seconds:g}", "Seconds a member waits for one thing "
                  "(the run, a global model, an aggregation) before giving up; must exceed "
                  "`round-deadline`."),
    WorkflowParam("poll-interval", f"{_MC.poll_interval:g}", "Seconds between the first looks at the store "
                  "while waiting (host and members)."),
    WorkflowParam("max-poll-interval", f"{_MC.max_poll_interval:g}", "Cap of the backed-off poll interval."),
    WorkflowParam("coordinator-deadline", "604800", "activeDeadlineSeconds of the coordinate pod, which "
                  "lives for the whole run."),
]
PARAMS = parameters([RUN_PARAMS, FEDERATION_PARAMS, [AGGREGATOR_DP_NOISE_SECRET], PROTOCOL_PARAMS,
                     STORE_PARAMS, TRACKING_PARAMS, IMAGE_PARAMS, AGGREGATOR_POD_PARAMS])
RUN_ID_OUTPUT = "run-id"
"""globalName of init's run id: the exit handler finishes only a run this workflow initialized."""

STORE = param("store")
PROTOCOL_ENV = [
    Env(name="FEDTWIN_MULTICLUSTER__ROUND_DEADLINE_SECONDS", value=param("round-deadline")),
    Env(name="FEDTWIN_MULTICLUSTER__WAIT_TIMEOUT_SECONDS", value=param("wait-timeout")),
    Env(name="FEDTWIN_MULTICLUSTER__POLL_INTERVAL", value=param("poll-interval")),
    Env(name="FEDTWIN_MULTICLUSTER__MAX_POLL_INTERVAL", value=param("max-poll-interval")),
]
"""Stored with the run at init: the members read the same settings from the store."""
RUN_INPUT = [Parameter(name="run-id")]
COORDINATOR_POD = PodKind(ROLE_AGGREGATOR, "aggregator", deadline=param("coordinator-deadline"))

init = fedtwin_step(
    "init",
    ["step", "init", *config_args(), "--outputs-dir", OUTPUTS_DIR],
    env=[*AGGREGATOR_ENV, *config_env(), *PROTOCOL_ENV],
    volumes=fleet_volume(),
    outputs=[outputs_param("run_id", default="", global_name=RUN_ID_OUTPUT)],
)

coordinate = fedtwin_step(
    "coordinate",
    ["step", "coordinate", "--run", input_param("run-id"), "--store", STORE, "--outputs-dir", OUTPUTS_DIR],
    pod=COORDINATOR_POD,
    inputs=RUN_INPUT,
    env=[*TRACKING_ENV, *PROTOCOL_ENV, *dp_noise_env(AGGREGATOR_DP_NOISE_SECRET)],
    outputs=[outputs_param("status"), outputs_param("rounds_played"), outputs_param("heldout_return"),
             outputs_param("late")],
)

report, finish = report_and_finish(TRACKING_ENV)


with run_template(
    NAME,
    "The host side of a multi-cluster run: init, then "
    "aggregate each round as the member clusters' updates arrive in S3 (karmada/README.md).",
    PARAMS,
    on_exit="exit-handler",
) as w:
    with Steps(name="exit-handler") as exit_handler:
        finish(name="finish", arguments={"run-id": global_output(RUN_ID_OUTPUT)},
               when=f"'{global_output(RUN_ID_OUTPUT)}' != ''")

    with DAG(name="main"):
        run_id = {"run-id": task_output("init", "run_id")}
        (
            init(name="init")
            >> coordinate(name="coordinate", arguments=run_id)
            >> report(name="report", arguments=run_id)
        )

ORDER = ["main", "exit-handler", "init", "coordinate", "report", "finish"]
w.templates.sort(key=lambda t: ORDER.index(t.name))
