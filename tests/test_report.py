"""The run report: every plot is written as a PNG and embedded in the self-contained HTML."""

from __future__ import annotations

import base64
import re
from types import SimpleNamespace

import pytest
import torch

from fedtwin.config import load_config
from fedtwin.observe.report import ReportData, plot_epsilon, write_report
from fedtwin.run.baseline import run_baseline
from fedtwin.run.runner import run
from fedtwin.store import LocalStore, RunLayout
from tests.helpers import write_tiny_config

torch.set_num_threads(1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A tiny run of `hard`-preset twins (imperfections too) with a pooled baseline, reported."""
    tmp = tmp_path_factory.mktemp("report")
    config = load_config(write_tiny_config(tmp, **{"fleet.preset": "hard"}),
                         {"run_id": "demo", "store": str(tmp / "store")}, environ={})
    store = LocalStore(tmp / "store")
    run(config, progress=False, report=False)
    run_baseline(store, "demo", "pooled")
    location = write_report(store, "demo")
    return store, location


def test_every_plot_is_stored_and_embedded_in_the_html(reported):
    store, location = reported
    layout = RunLayout("demo")
    html = store.get_text(layout.report("report.html"))
    markdown = store.get_text(layout.report("report.md"))

    assert location == store.describe(layout.report("report.html"))
    expected = ["validation_return.png", "twin_returns.png", "physics_spread.png", "generalization.png"]
    stored = sorted(k.rsplit("/", 1)[-1] for k in store.list(layout.report("")) if k.endswith(".png"))
    assert stored == sorted(expected)  # privacy is off: no epsilon plot
    for name in expected:
        png = store.get_bytes(layout.report(name))
        assert png.startswith(PNG_MAGIC) and len(png) > 5_000, name
        assert f"src='data:image/png;base64,{base64.b64encode(png).decode()}'" in html, name
        assert f"]({name})" in markdown, name
    assert not re.search(r"<img[^>]+src='(?!data:)", html)  # self-contained: no external images
    assert "Privacy is off" in html and "Privacy is off" in markdown


def test_report_tables_hold_federated_and_baseline_numbers(reported):
    store, _ = reported
    markdown = store.get_text(RunLayout("demo").report("report.md"))

    assert "| final | federated | baseline: pooled |" in markdown
    for row in ("| rounds | 2 | 2 |", "| env steps | 192 | 192 |", "| held-out return |",
                "| generalization gap |"):
        assert row in markdown, row
    assert "Validation return vs single-agent baseline" in markdown


def test_epsilon_plot_only_when_some_twin_has_an_epsilon():
    ctx = SimpleNamespace(config=SimpleNamespace(privacy=SimpleNamespace(mode="local", target_epsilon=8.0)))
    with_eps = [{"round": r, "twin_epsilon": {"twin-000": 1.0 + r, "twin-001": 0.5 * r, "twin-002": None}}
                for r in range(3)]
    without = [{"round": r, "twin_epsilon": {"twin-000": None}} for r in range(3)]

    plot = plot_epsilon(ReportData(ctx, with_eps, {}, []))  # type: ignore[arg-type]

    assert plot is not None and plot.name == "epsilon.png" and plot.png.startswith(PNG_MAGIC)
    assert plot_epsilon(ReportData(ctx, without, {}, [])) is None  # type: ignore[arg-type]
