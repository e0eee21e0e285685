"""`fedtwin-federated`: federated training of a twin fleet, one isolated pod per twin and round.

    main:   init ──> rounds ──> evaluate ──> report        (onExit: exit-handler ──> finish)
    rounds: round(0:0), round(1:1), ...     one at a time; an unplayed round is one Skipped node
    round:  train(0:twin-000) ... train(7:twin-007) ──> aggregate

`init` creates (or resumes) the run and exports two workflow outputs: `first-round`, the first round
still to play, and `last-round`, the last round that may start. `rounds` is a sequential Steps loop
(parallelism 1, failFast) over every round number, so a node's index is its round number, also after
a resume. Each round runs only when `ROUND >= first-round && ROUND <= last-round`; every `aggregate`
re-exports `last-round` (its own round once the run stopped), and the controller re-reads it before
it starts the next round (steps.go executeStepGroup re-resolves `when` on every pass; operator.go
podReconciliation adds a finished pod's global outputs before the tree is walked). So after an
early stop at `target-return` every remaining round is a single Skipped node: no pod, no gate. A
loop rather than recursion, because Argo stops a workflow after 100 nested template calls. Within
a round, `train` fans out one pod per twin (or per shard, `twins-per-pod`) and `aggregate` runs
once the fan-out has finished, whatever became of single twins; it enforces the quorum
(`min-twins`) itself.
"""

from __future__ import annotations

from hera.workflows import DAG, Artifact, Counter, Gauge, Label, Parameter, Steps
from hera.workflows import models as m

from workflows.common import (
    AGGREGATOR_DP_NOISE_SECRET,
    AGGREGATOR_ENV,
    AGGREGATOR_POD_PARAMS,
    FAN_OUT_PARAMS,
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
    config_args,
    config_env,
    dp_noise_env,
    expr,
    fedtwin_step,
    fleet_volume,
    global_output,
    global_output_ref,
    input_param,
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
                     FAN_OUT_PARAMS, STORE_PARAMS, TWIN_STORE_PARAMS, TRACKING_PARAMS, IMAGE_PARAMS,
                     AGGREGATOR_POD_PARAMS, TWIN_POD_PARAMS])
RUN_ID_OUTPUT = "run-id"
"""globalName of init's run id: the exit handler finishes only a run this workflow initialized."""

STORE = param("store")
RUN_INPUT = [Parameter(name="run-id")]
FAN_OUT_FINISHED = "train.Succeeded || train.Failed || train.Errored"
"""`aggregate` waits for every twin pod but runs whatever became of them (it enforces the quorum)."""
FIRST_ROUND, LAST_ROUND = "first-round", "last-round"
"""Workflow outputs (globalName) that decide which rounds of the loop play: `init` exports both (the
first round still to play; the last round that may start), every `aggregate` re-exports LAST_ROUND
(the final round, or its own round once the run stopped)."""
NO_BOUND = str(2**31 - 1)


def bound(name: str, otherwise: str) -> str:
    """A round bound from a workflow output, `otherwise` when it reads "". An aggregate that failed
    before writing its outputs leaves "" in the controller's global parameters (Parameter.HasValue
    is true for a bare valueFrom, GetValue gives ""): read as is, the `when` below would not parse,
    and v4.0.7 then panics on the running round ("node ... already initialized") and ends the
    workflow Error instead of Failed (conformance case steps-failed-pod-blanks-global)."""
    return expr(f"sprig.default('{otherwise}', {global_output_ref(name)})")


ROUND_PLAYED = f"{STEP_SUCCEEDED} && {own_output('played')} == true"
"""`when` of the round metrics: only a round that was aggregated has a return to report."""
PLAY_ROUND = f"{ITEM} >= {bound(FIRST_ROUND, '0')} && {ITEM} <= {bound(LAST_ROUND, NO_BOUND)}"
"""`when` of each round of the loop (govaluate, after substitution: `3 >= 0 && 3 <= 19`). It must stay
true for the round that is running when its own aggregate re-exports LAST_ROUND: Argo never advances
a running child whose `when` turned false (steps.go executeStepGroup skips it), and the loop would hang.
It must also stay true for later rounds until a stop, since Argo marks a not-yet-started child Skipped
as soon as its `when` is false."""

# ------------------------------------------------------------------------------- pod templates
init = fedtwin_step(
    "init",
    ["step", "init", *config_args(), "--shard-size", param("twins-per-pod"),
     "--parallelism", param("parallelism"), "--max-workflow-nodes", param("max-workflow-nodes"),
     "--outputs-dir", OUTPUTS_DIR],
    env=[*AGGREGATOR_ENV, *config_env()],
    volumes=fleet_volume(),
    # No `twins` list among the outputs: every output is kept in the Workflow object, and 100,000 twin
    # ids would fill most of its 1 MiB (the fleet is in the store: `fedtwin runs show`).
    outputs=[outputs_param("run_id", default="", global_name=RUN_ID_OUTPUT),
             outputs_param("shards"), outputs_param("round"),
             outputs_param("first_round", global_name=FIRST_ROUND),
             outputs_param("last_round", global_name=LAST_ROUND)],
)

train = fedtwin_step(
    "train",
    ["step", "train", "--run", input_param("run-id"), "--round", input_param("round"),
     "--twin", input_param("twins"), "--store", STORE, "--device", TRAIN_DEVICE],
    pod=TWIN_POD,
    inputs=[Parameter(name="run-id"), Parameter(name="round"), Parameter(name="twins")],
    env=[*s3_env(TWIN_SECRET), *dp_noise_env(TWIN_DP_NOISE_SECRET)],
    labels={LABEL_TWIN: TWIN_LABEL, LABEL_ROUND: input_param("round")},
    annotations={SUBNET_ANNOTATION_KEY: param("subnet")},
)

aggregate = fedtwin_step(
    "aggregate",
    ["step", "aggregate", "--run", input_param("run-id"), "--round", input_param("round"), "--store", STORE,
     "--outputs-dir", OUTPUTS_DIR],
    inputs=[Parameter(name="run-id"), Parameter(name="round")],
    env=[*TRACKING_ENV, *dp_noise_env(AGGREGATOR_DP_NOISE_SECRET)],
    labels={LABEL_ROUND: input_param("round")},
    outputs=[outputs_param("round"), outputs_param("played", default="false"), outputs_param("participants"),
             outputs_param("rejected"), outputs_param("mean_return"),
             outputs_param("continue"), outputs_param("next_round"),
             outputs_param("last_round", global_name=LAST_ROUND),
             Artifact(name="global-model", path=f"{OUTPUTS_DIR}/model.safetensors",
                      archive=m.ArchiveStrategy(none=m.NoneStrategy()))],
    metrics=[
        Gauge(name="fedtwin_validation_return", help="Validation return of the global model after a round",
              labels=[Label(key="run_id", value=input_param("run-id"))], when=ROUND_PLAYED, realtime=False,
              value=own_output("mean_return")),
        Gauge(name="fedtwin_round_participants", help="Valid twin updates aggregated in a round",
              labels=[Label(key="run_id", value=input_param("run-id"))], when=ROUND_PLAYED, realtime=False,
              value=own_output("participants")),
        Counter(name="fedtwin_rejected_updates", help="Twin updates the aggregator rejected",
                labels=[Label(key="run_id", value=input_param("run-id"))], when=ROUND_PLAYED,
                value=own_output("rejected")),
    ],
)

evaluate = fedtwin_step(
    "evaluate",
    ["step", "evaluate", "--run", input_param("run-id"), "--store", STORE, "--outputs-dir", OUTPUTS_DIR],
    inputs=RUN_INPUT,
    env=AGGREGATOR_ENV,
    # Workflow outputs too: `argo get` and the UI show a finished run's result on the workflow itself.
    outputs=[outputs_param("heldout_return", global_name="heldout-return"),
             outputs_param("generalization_gap", global_name="generalization-gap")],
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
        round_args = {"run-id": input_param("run-id"), "round": input_param("round")}
        train(name="train", arguments={**round_args, "twins": ITEM}, with_param=input_param("shards"))
        aggregate(name="aggregate", arguments=round_args, depends=FAN_OUT_FINISHED)

    rounds_inputs = [Parameter(name="run-id"), Parameter(name="shards")]
    with Steps(name="rounds", parallelism=1, fail_fast=True, inputs=rounds_inputs) as rounds:
        one_round(name="round", with_sequence=m.Sequence(count=m.IntOrString(param("rounds"))),
                  when=PLAY_ROUND,
                  arguments={"run-id": input_param("run-id"), "round": ITEM, "shards": input_param("shards")})

    with Steps(name="exit-handler") as exit_handler:
        finish(name="finish", arguments={"run-id": global_output(RUN_ID_OUTPUT)},
               when=f"'{global_output(RUN_ID_OUTPUT)}' != ''")

    with DAG(name="main"):
        run_id = {"run-id": task_output("init", "run_id")}
        (
            init(name="init")
            >> rounds(name="rounds", arguments={**run_id, "shards": task_output("init", "shards")})
            >> evaluate(name="evaluate", arguments=run_id)
            >> report(name="report", arguments=run_id)
        )

# Templates in reading order: the flow first, then the pods in the order they run.
ORDER = ["main", "rounds", "round", "exit-handler",
         "init", "train", "aggregate", "evaluate", "report", "finish"]
w.templates.sort(key=lambda t: ORDER.index(t.name))
