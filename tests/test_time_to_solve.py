"""benchmarks/time_to_solve.py judges runs like the product: it stops on the validation twins and looks
at the held-out twins once, on the model it stopped with (issue 17, item 9)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it imports benchmarks/machine.py as `machine`
    sys.modules.pop("time_to_solve", None)
    import time_to_solve

    torch.set_num_threads(1)
    return time_to_solve


def test_a_run_stops_on_validation_and_evaluates_the_held_out_twins_once(bench, tmp_path, monkeypatch):
    from fedtwin.learn import evaluate
    from fedtwin.run import aggregate, evaluate_step

    heldout_calls = []
    real = evaluate.evaluate_policy

    def counting(params, spec, twins, *args, **kwargs):
        if twins and twins[0].id.startswith("heldout"):
            heldout_calls.append(len(twins))
        return real(params, spec, twins, *args, **kwargs)

    monkeypatch.setattr(aggregate, "evaluate_policy", counting)
    monkeypatch.setattr(evaluate_step, "evaluate_policy", counting)
    monkeypatch.setattr(bench.steps, "evaluate_policy", counting, raising=False)

    # A target every model reaches: the run must stop after its first round, on validation alone.
    outcome = bench.run_one(bench.REFERENCE, "reinforce", 0.01, 0, rounds=3, target=-1.0, root=tmp_path,
                            heldout=True)

    assert (outcome.stopped_round, outcome.rounds) == (1, 1)
    assert heldout_calls == [8]  # once, the stopped model, on the 8 held-out twins
    assert outcome.heldout_return is not None


def test_tuning_never_looks_at_the_held_out_twins_nor_uses_the_compared_seeds(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["time_to_solve.py", "--seeds", "0", "--tune-seeds", "0"])
    with pytest.raises(SystemExit):
        bench.main()
    calls = []
    monkeypatch.setattr(bench, "run_one", lambda *a, **k: calls.append(k["heldout"]) or bench.Outcome(
        bench.REFERENCE, a[2], a[3], None, 1, 1000 * (a[2] != 0.01), 0.0, 0.0, None))
    best, _ = bench.tune([0.001, 0.01], [100], 1, 475.0, tmp_path)
    assert best == 0.01 and calls == [False, False]


def test_defaults_mode_reports_median_and_worst_seed_of_both_configs(bench, tmp_path, monkeypatch):
    """`--defaults` runs `fedtwin run` and `fedtwin baseline` per seed and config; the summary is the median
    and the worst seed (most env steps and seconds, lowest held-out return), and the ratios use medians."""
    runs = {("old", 0): (100_000, 30.0, 480.0), ("new", 0): (20_000, 5.0, 490.0),
            ("old", 1): (200_000, 60.0, 470.0), ("new", 1): (40_000, 9.0, 476.0),
            ("old", 2): (300_000, 90.0, 500.0), ("new", 2): (60_000, 7.0, 499.0)}
    calls = []

    def fake(args):
        command, run_id = args[0], args[args.index("--run-id") + 1]
        name, seed = run_id.split("-")
        calls.append((command, name, int(seed)))
        steps, seconds, held = runs[(name, int(seed))]
        if command == "baseline":
            return {"env_steps": steps // 4}, 1.0, 1.0
        result = {"rounds": 2, "env_steps": steps, "seconds": seconds, "heldout_return": held}
        return result, seconds + 1, seconds

    monkeypatch.setattr(bench, "_fedtwin", fake)
    monkeypatch.setattr(bench, "DEFAULTS_RESULTS", tmp_path / "out.md")
    monkeypatch.setattr(sys, "argv", ["time_to_solve.py", "--defaults", "--seeds", "0", "1", "2"])
    assert bench.main() == 0
    text = (tmp_path / "out.md").read_text()
    assert calls[:4] == [("run", "old", 0), ("baseline", "old", 0), ("run", "new", 0), ("baseline", "new", 0)]
    assert "| old defaults | 2/3 | 200,000 / 300,000 | 60.0 / 90.0 |" in text
    assert "| proposed | 3/3 | 40,000 / 60,000 | 7.0 / 9.0 |" in text
    assert "held-out" in text and "490.0 / 476.0" in text
    assert "env steps 0.20x" in text
    assert "pooled agent (50,000, median): median 0.80x, worst seed 1.20x" in text
