"""The one place for the image, fixed names and every Argo expression string the templates use.

Template modules never spell `{{...}}` themselves: they call the helpers here, so a renamed
parameter or a changed expression is one edit, and the tests parse the same strings back. Every pod
runs the `fedtwin` CLI from the project image; nothing is inlined.
"""

from __future__ import annotations

from hera.workflows import models as m

from fedtwin import __version__

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
