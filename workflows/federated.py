"""`fedtwin-federated`: federated training of a twin fleet, one isolated pod per twin and round.

    main:  init ──> rounds ──> evaluate ──> report          (onExit: exit-handler ──> finish)
    rounds: round(0:0), round(1:1), ...   one at a time, stops at the first failed round
    round:  gate ──> train(0:twin-000) ... train(7:twin-007) ──> aggregate

`init` creates (or resumes) the run and outputs the twin list and the rounds still to play. The
rounds run as a sequential loop (parallelism 1, failFast) rather than by recursion: Argo stops a
workflow after 100 nested template calls, and a loop keeps every round a sibling node named by its
number in the UI. Each round first asks the store whether it should still be played (`gate`: not
yet played, run not stopped early), fans out one training pod per twin (or per shard of
`twins-per-pod` twins), and aggregates once the fan-out has finished, whatever became of single
twins; `aggregate` itself fails the round below `min-twins`. The exit handler records the run's
end state in the store.
"""

from __future__ import annotations

from hera.workflows import DAG, Artifact, Counter, Gauge, Label, Parameter, Steps
from hera.workflows import models as m

from workflows.common import (
    AGGREGATOR_DP_NOISE_SECRET,
    AGGREGATOR_ENV,
    AGGREGATOR_POD_PARAMS,
    ENGINE,
    FEDERATION_PARAMS,
    IMAGE_PARAMS,
    ITEM,
    LABEL_ROUND,
    LABEL_TWIN,
    OUTPUTS_DIR,
    RUN_PARAMS,
    STEP_SUCCEEDED,
    STORE_PARAMS,
    SUBNET_ANNOTATION_KEY,
    TRACKING_ENV,
    TRACKING_PARAMS,
    TRAIN_DEVICE,
    TWIN_DP_NOISE_SECRET,
    TWIN_LABEL,
    TWIN_POD,
    TWIN_POD_PARAMS,
    TWIN_SECRET,
    TWIN_STORE_PARAMS,
    TWINS_PER_POD,
    config_args,
    config_env,
    dp_noise_env,
    fedtwin_step,
    fleet_volume,
    global_output,
    inp,
    outputs_param,
    own_output,
    param,
    parameters,
    report_and_finish,
    run_template,
    s3_env,
    task_output,
)

NAME = "fedtwin-federated"
PARAMS = parameters([RUN_PARAMS, FEDERATION_PARAMS, [TWIN_DP_NOISE_SECRET, AGGREGATOR_DP_NOISE_SECRET],
                     [TWINS_PER_POD], STORE_PARAMS, TWIN_STORE_PARAMS, TRACKING_PARAMS, IMAGE_PARAMS,
                     AGGREGATOR_POD_PARAMS, TWIN_POD_PARAMS])
RUN_ID_OUTPUT = "run-id"
"""globalName of init's run id: the exit handler finishes only a run this workflow initialized."""

STORE = param("store")
RUN_INPUT = [Parameter(name="run-id")]
FAN_OUT_FINISHED = "train.Succeeded || train.Failed || train.Errored"
"""`aggregate` waits for every twin pod but runs whatever became of them (it enforces the quorum)."""

# ------------------------------------------------------------------------------- pod templates
init = fedtwin_step(
    "init",
    ["step", "init", *config_args(), "--engine", ENGINE, "--shard-size", param("twins-per-pod"),
     "--outputs-dir", OUTPUTS_DIR],
    env=[*AGGREGATOR_ENV, *config_env()],
    volumes=fleet_volume(),
    outputs=[outputs_param("run_id", default="", global_name=RUN_ID_OUTPUT), outputs_param("twins"),
             outputs_param("shards"), outputs_param("round"), outputs_param("pending_rounds")],
)

gate = fedtwin_step(
    "gate",
    ["step", "status", "--run", inp("run-id"), "--round", inp("round"), "--store", STORE,
     "--outputs-dir", OUTPUTS_DIR],
    inputs=[Parameter(name="run-id"), Parameter(name="round")],
    env=AGGREGATOR_ENV,
    labels={LABEL_ROUND: inp("round")},
    outputs=[outputs_param("play"), outputs_param("next_round")],
)

train = fedtwin_step(
    "train",
    ["step", "train", "--run", inp("run-id"), "--round", inp("round"), "--twin", inp("twins"),
     "--store", STORE, "--device", TRAIN_DEVICE],
    pod=TWIN_POD,
    inputs=[Parameter(name="run-id"), Parameter(name="round"), Parameter(name="twins")],
    env=[*s3_env(TWIN_SECRET), *dp_noise_env(TWIN_DP_NOISE_SECRET)],
    labels={LABEL_TWIN: TWIN_LABEL, LABEL_ROUND: inp("round")},
    annotations={SUBNET_ANNOTATION_KEY: param("subnet")},
)

aggregate = fedtwin_step(
    "aggregate",
    ["step", "aggregate", "--run", inp("run-id"), "--round", inp("round"), "--store", STORE,
     "--outputs-dir", OUTPUTS_DIR],
    inputs=[Parameter(name="run-id"), Parameter(name="round")],
    env=[*TRACKING_ENV, *dp_noise_env(AGGREGATOR_DP_NOISE_SECRET)],
    labels={LABEL_ROUND: inp("round")},
    outputs=[outputs_param("round"), outputs_param("participants"), outputs_param("rejected"),
             outputs_param("mean_return"), outputs_param("continue"), outputs_param("next_round"),
             Artifact(name="global-model", path=f"{OUTPUTS_DIR}/model.safetensors",
                      archive=m.ArchiveStrategy(none=m.NoneStrategy()))],
    metrics=[
        Gauge(name="fedtwin_validation_return", help="Validation return of the global model after a round",
              labels=[Label(key="run_id", value=inp("run-id"))], when=STEP_SUCCEEDED, realtime=False,
              value=own_output("mean_return")),
        Gauge(name="fedtwin_round_participants", help="Valid twin updates aggregated in a round",
              labels=[Label(key="run_id", value=inp("run-id"))], when=STEP_SUCCEEDED, realtime=False,
              value=own_output("participants")),
        Counter(name="fedtwin_rejected_updates", help="Twin updates the aggregator rejected",
                labels=[Label(key="run_id", value=inp("run-id"))], when=STEP_SUCCEEDED,
                value=own_output("rejected")),
    ],
)

evaluate = fedtwin_step(
    "evaluate",
    ["step", "evaluate", "--run", inp("run-id"), "--store", STORE, "--outputs-dir", OUTPUTS_DIR],
    inputs=RUN_INPUT,
    env=AGGREGATOR_ENV,
    outputs=[outputs_param("heldout_return"), outputs_param("generalization_gap")],
)

report, finish = report_and_finish(TRACKING_ENV)

# --------------------------------------------------------------------------------- the workflow

with run_template(
    NAME,
    "Federated training of a digital-twin fleet: "
    "per round, one isolated pod per twin, then aggregation (see workflows/README.md).",
    PARAMS,
    on_exit="exit-handler",
) as w:
    with DAG(name="round", inputs=[Parameter(name="run-id"), Parameter(name="round"),
                                   Parameter(name="shards")]) as one_round:
        round_args = {"run-id": inp("run-id"), "round": inp("round")}
        g = gate(name="gate", arguments=round_args)
        t = train(name="train", arguments={**round_args, "twins": ITEM}, with_param=inp("shards"),
                  when=f"{task_output('gate', 'play')} == true")
        g >> t
        aggregate(name="aggregate", arguments=round_args, depends=FAN_OUT_FINISHED)

    rounds_inputs = [Parameter(name="run-id"), Parameter(name="rounds"), Parameter(name="shards")]
    with Steps(name="rounds", parallelism=1, fail_fast=True, inputs=rounds_inputs) as rounds:
        one_round(name="round", with_param=inp("rounds"),
                  arguments={"run-id": inp("run-id"), "round": ITEM, "shards": inp("shards")})

    with Steps(name="exit-handler") as exit_handler:
        finish(name="finish", arguments={"run-id": global_output(RUN_ID_OUTPUT)},
               when=f"'{global_output(RUN_ID_OUTPUT)}' != ''")

    with DAG(name="main"):
        run_id = {"run-id": task_output("init", "run_id")}
        (
            init(name="init")
            >> rounds(name="rounds", arguments={**run_id, "rounds": task_output("init", "pending_rounds"),
                                               "shards": task_output("init", "shards")})
            >> evaluate(name="evaluate", arguments=run_id)
            >> report(name="report", arguments=run_id)
        )

# Templates in reading order: the flow first, then the pods in the order they run.
ORDER = ["main", "rounds", "round", "exit-handler",
         "init", "gate", "train", "aggregate", "evaluate", "report", "finish"]
w.templates.sort(key=lambda t: ORDER.index(t.name))
