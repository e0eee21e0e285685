"""benchmarks/round_overhead.py (issue 20, item 1): its import-time profile and its in-process round."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:       100 |        100 |   _io
import time:    200000 |     900000 | torch
import time:    700000 |     700000 |   torch._C
import time:      5000 |     405000 | fedtwin.run.steps
import time:    400000 |     400000 |   fedtwin.learn.train
import time:     50000 |    1100000 | torch._dynamo
import time:   1050000 |    1050000 |   sympy
not an import line
"""


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("round_overhead", None)
    import round_overhead

    return round_overhead


def test_import_profile_names_top_level_importers_packages_and_fedtwin_modules(bench):
    profile = bench.import_profile(IMPORTTIME)

    assert profile["total"] == pytest.approx(2.4051)
    assert profile["top_level"][:3] == [("torch._dynamo", 1.1), ("torch", 0.9), ("fedtwin.run.steps", 0.405)]
    assert dict(profile["packages"])["torch"] == pytest.approx(0.95)
    assert profile["fedtwin"] == [("fedtwin.run.steps", 0.405), ("fedtwin.learn.train", 0.4)]


def test_fedtwin_round_in_process_times_train_and_aggregate_after_a_warm_up(bench, tmp_path):
    results = bench.fedtwin_in_process([2, 3], tmp_path, repeats=2)

    assert sorted(results) == [2, 3]
    for timing in results.values():
        assert timing["round"] == pytest.approx(timing["train"] + timing["aggregate"])
        assert timing["cpu"] > 0
    runs = sorted(p.name for p in (tmp_path / "inproc" / "runs").iterdir())
    assert runs == ["inproc-2-0", "inproc-2-1", "inproc-3-0", "inproc-3-1", "warm-up"]


def test_round_phases_time_each_phase_and_leave_the_functions_as_they_were(bench, tmp_path):
    import fedtwin.run.train_step as train_step

    original = train_step.train_twins
    rounds = bench.round_phases(tmp_path, 3, repeats=2)

    assert train_step.train_twins is original
    assert len(rounds) == 2
    for phases in rounds:
        assert 0 < phases["train: rollouts and PPO of every twin"] < phases["train"]
        assert 0 < phases["aggregate: read and check the updates"] < phases["aggregate"]


def test_objects_vs_bundle_times_both_layouts(bench, tmp_path):
    timings = bench.objects_vs_bundle(tmp_path, 4, repeats=1)

    assert set(timings[0]) == {"objects_write", "objects_read", "bundle_write", "bundle_read"}
    assert all(v > 0 for v in timings[0].values())
    assert len(list((tmp_path / "bundle" / "o0").glob("twin-*.safetensors"))) == 4
