"""`fedtwin step init` refuses a workflow fan-out a cluster cannot hold, as the README's bad-input
table shows: one line, exit 2, nothing written (Argo's first pod of fedtwin-federated runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import clean_env, fedtwin


@pytest.mark.parametrize(("flags", "line"), [
    (["--twins", "1000", "--shard-size", "1", "--parallelism", "100"],
     "Error: 1 twin(s) per pod makes 1000 training pods per round for 1000 twins, more than the "
     "parallelism of 100; raise the parallelism, or let the shard size be chosen (twins-per-pod 0)"),
    (["--twins", "1000", "--rounds", "200", "--shard-size", "0", "--parallelism", "100",
      "--max-workflow-nodes", "12000"],
     "Error: 200 rounds of 100 training pods make 40813 Argo workflow nodes, more than max-workflow-nodes "
     "(12000, what one Workflow object holds without node-status offload); lower the parallelism to 27 "
     "(twins-per-pod 0 packs the twins into fewer pods), or set max-workflow-nodes 0 if the controller "
     "offloads node status"),
])
def test_a_fan_out_the_cluster_cannot_hold_is_refused_before_anything_is_written(
    tmp_path: Path, flags: list[str], line: str
) -> None:
    store = tmp_path / "store"
    result = fedtwin("step", "init", "--run-id", "big", "--store", str(store), *flags, env=clean_env())
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [line]
    assert not store.exists() or not any(store.rglob("*.json"))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert line in readme
