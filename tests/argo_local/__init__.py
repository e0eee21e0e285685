"""A local stand-in for the Argo Workflows controller, for tests (see controller.py)."""

from tests.argo_local.controller import (
    DAG,
    ERROR,
    FAILED,
    OMITTED,
    PENDING,
    POD,
    RETRY,
    RUNNING,
    SKIPPED,
    STEP_GROUP,
    STEPS,
    SUCCEEDED,
    TASK_GROUP,
    LocalArgo,
    Node,
    Run,
)
from tests.argo_local.expressions import Unresolved, Unsupported, evaluate, substitute

__all__ = [
    "DAG",
    "ERROR",
    "FAILED",
    "OMITTED",
    "PENDING",
    "POD",
    "RETRY",
    "RUNNING",
    "SKIPPED",
    "STEPS",
    "STEP_GROUP",
    "SUCCEEDED",
    "TASK_GROUP",
    "LocalArgo",
    "Node",
    "Run",
    "Unresolved",
    "Unsupported",
    "evaluate",
    "substitute",
]
