"""Where a run's objects live inside a store (see DESIGN.md, 'Storage, layout and tracking'), and
what to do about a damaged one."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class RunLayout:
    """Keys of one run inside a store (see DESIGN.md, 'Storage, layout and tracking')."""

    run_id: str

    @property
    def prefix(self) -> str:
        return f"runs/{self.run_id}/"

    @property
    def config(self) -> str:
        return self.prefix + "config.yaml"

    @property
    def twins(self) -> str:
        return self.prefix + "twins.yaml"

    @property
    def state(self) -> str:
        return self.prefix + "state.json"

    @property
    def runner_lock(self) -> str:
        """Held by the one `fedtwin run` driving the run (not a store object)."""
        return self.prefix + "runner.lock"

    def round_dir(self, round_index: int) -> str:
        return f"{self.prefix}rounds/{round_index:04d}/"

    def global_model(self, round_index: int) -> str:
        return self.round_dir(round_index) + "global.safetensors"

    def updates_dir(self, round_index: int) -> str:
        return self.round_dir(round_index) + "updates/"

    def update_weights(self, round_index: int, twin_id: str) -> str:
        return f"{self.updates_dir(round_index)}{twin_id}.safetensors"

    def update_meta(self, round_index: int, twin_id: str) -> str:
        return f"{self.updates_dir(round_index)}{twin_id}.json"

    def summary(self, round_index: int) -> str:
        return self.round_dir(round_index) + "summary.json"

    def server_state(self, round_index: int) -> str:
        """Strategy state (e.g. FedAdam moments) after aggregating `round_index`."""
        return self.round_dir(round_index) + "server_state.safetensors"

    def report(self, name: str) -> str:
        return f"{self.prefix}report/{name}"


_ROUND_OBJECT = re.compile(r"rounds/(\d{4})/(global|server_state)\.safetensors")
_SUMMARY = re.compile(r"rounds/(\d{4})/summary\.json")
_UPDATE = re.compile(r"rounds/(\d{4})/updates/([^/]+)\.(?:json|safetensors)")


def repair_advice(store_url: str, key: str, missing: bool = False) -> str:
    """What to do about one damaged object of a run, as commands that work (tests/test_repair.py follows
    each one). `missing`: the object is gone rather than corrupt; only what a repair rebuilds is named."""
    parts = key.split("/", 2)
    generic = "" if missing else "delete it and rerun the step that writes it"
    if len(parts) < 3 or parts[0] != "runs":
        return generic
    run, rest = parts[1], parts[2]
    store = f" --store {store_url}"
    delete = "" if missing else "delete it and "
    repair = f"`fedtwin runs repair {run}{store}`"
    if rest in ("state.json", "twins.yaml") or _ROUND_OBJECT.fullmatch(rest):
        return f"{delete}run {repair}, which rebuilds it from the run's config and stored rounds"
    if missing:
        return ""
    if rest == "config.yaml":
        return f"delete it and rerun `fedtwin step init --run-id {run}{store}` with the run's original config"
    if match := _SUMMARY.fullmatch(rest):
        return (f"delete it and run {repair}, then resume the run: round {int(match[1])} is aggregated again "
                "from its stored updates")
    if match := _UPDATE.fullmatch(rest):
        return (f"delete it and rerun `fedtwin step train --run {run} --round {int(match[1])} --twin "
                f"{match[2]}{store}` (once its round is aggregated only a local-DP run reads it again)")
    if rest.startswith("report/"):
        return (f"delete {store_url.rstrip('/')}/runs/{run}/report/evaluation.json and rerun "
                f"`fedtwin step evaluate --run {run}{store}`")
    return generic
