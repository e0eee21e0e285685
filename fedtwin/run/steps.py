"""The step functions every engine runs: init, train, aggregate, evaluate, finish (and repair).

Each reads its inputs from the store and writes its outputs atomically, and is idempotent: a
retried step whose output already exists returns it instead of recomputing or duplicating it. The
local runner, the Argo templates and the multi-cluster members all call exactly these functions;
each lives in a module of its own (init_step, train_step, aggregate, evaluate_step, repair).
"""

from __future__ import annotations

from fedtwin.run.aggregate import aggregate, combine, validation_seed
from fedtwin.run.evaluate_step import evaluate, evaluate_final, final_round
from fedtwin.run.init_step import DEFAULT_PARALLELISM, FanOut, InitResult, build_fleet, init, initial_model
from fedtwin.run.repair import repair
from fedtwin.run.runstate import finish, last_round, write_outputs
from fedtwin.run.train_step import choose_engine, train, train_seed
from fedtwin.store.context import RunContext

__all__ = [
    "DEFAULT_PARALLELISM",
    "FanOut",
    "InitResult",
    "RunContext",
    "aggregate",
    "build_fleet",
    "choose_engine",
    "combine",
    "evaluate",
    "evaluate_final",
    "final_round",
    "finish",
    "init",
    "initial_model",
    "last_round",
    "repair",
    "train",
    "train_seed",
    "validation_seed",
    "write_outputs",
]
