"""The run report: what a user shows others after a run.

`write_report` reads only the store and writes, under `runs/<run_id>/report/`:
- `report.md`, with the plots as PNG files next to it;
- `report.html`, self-contained (the same PNGs embedded as base64 data URIs);
- the plots: `validation_return.png` (global model vs the single-agent baselines at equal env
  steps), `twin_returns.png` (each twin's local return per round), `physics_spread.png` (how far
  each twin's physics is from CartPole-v1), `generalization.png` (final model per training and
  held-out twin) and, when privacy is on, `epsilon.png` (epsilon per twin per round).

Plots use matplotlib's object API with the Agg renderer (no pyplot state, no display needed).
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fedtwin.observe import tracking
from fedtwin.sim.kind_registry import kind_of
from fedtwin.sim.kinds import KindTwin
from fedtwin.sim.twins import Fleet
from fedtwin.store import ArtifactStore
from fedtwin.store.baselines import list_baselines, load_baseline
from fedtwin.store.context import RunContext, round_summaries

RETURN_METRIC = "charts/episodic_return"
PHYSICAL = ("gravity", "masscart", "masspole", "length", "force_mag", "tau")
"""CartPole's parameters with a non-zero default; any kind's such parameters are plotted as the relative
deviation from the default (`physical_params`)."""
SET_COLORS = {"training": "tab:blue", "validation": "tab:green", "held-out": "tab:orange"}


@dataclass
class Plot:
    name: str
    """File name under report/ (e.g. `validation_return.png`)."""
    title: str
    caption: str
    png: bytes


@dataclass
class ReportData:
    ctx: RunContext
    summaries: list[dict[str, Any]]
    evaluation: dict[str, Any]
    baselines: list[dict[str, Any]]


def load_report_data(ctx: RunContext) -> ReportData:
    key = ctx.layout.report("evaluation.json")
    evaluation = ctx.store.get_json(key) if ctx.store.exists(key) else {}
    baselines = [load_baseline(ctx.store, ctx.layout.run_id, name)
                 for name in list_baselines(ctx.store, ctx.layout.run_id)]
    return ReportData(ctx, round_summaries(ctx), evaluation, [b for b in baselines if b["rounds"]])


def to_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


# -------------------------------------------------------------------------------------- plots
def plot_validation(data: ReportData) -> Plot | None:
    """(1) Global validation return per round against each baseline, at equal env steps."""
    if not data.summaries:
        return None
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    steps = np.cumsum([s["num_samples"] for s in data.summaries])
    ax.plot(steps, [s["validation_return"] for s in data.summaries], marker="o", lw=2,
            label=f"federated ({data.ctx.config.federation.strategy})")
    for baseline in data.baselines:
        rounds = baseline["rounds"]
        ax.plot([r["cumulative_env_steps"] for r in rounds], [r["validation_return"] for r in rounds],
                marker="s", ls="--", label=f"single agent: {baseline['name']}")
    target = data.ctx.config.federation.target_return
    if target is not None:
        ax.axhline(target, color="grey", ls=":", lw=1, label=f"target {target:g}")
    ax.set_xlabel("environment steps (all twins together)")
    ax.set_ylabel("mean return on validation twins")
    ax.set_title("Global model per round vs single-agent baseline (same env-step budget)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    caption = "Each marker is one round; the x axis counts every environment step taken so far."
    if not data.baselines:
        caption += " No baseline in the store yet: run `fedtwin baseline` with the same run id."
    return Plot("validation_return.png", "Validation return vs single-agent baseline", caption, to_png(fig))


def plot_twin_returns(data: ReportData) -> Plot | None:
    """(2a) Heatmap: each training twin's local episodic return per round (blank: not taking part)."""
    if not data.summaries:
        return None
    twin_ids = [t.id for t in data.ctx.fleet.train]
    grid = np.full((len(twin_ids), len(data.summaries)), np.nan)
    row = {twin_id: i for i, twin_id in enumerate(twin_ids)}
    for col, summary in enumerate(data.summaries):
        for twin_id, metrics in summary.get("twin_metrics", {}).items():
            if twin_id in row and RETURN_METRIC in metrics:
                grid[row[twin_id], col] = metrics[RETURN_METRIC]
    fig = Figure(figsize=(7.5, min(2.0 + 0.25 * len(twin_ids), 9.0)), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(image, ax=ax, label="local episodic return")
    ax.set_xlabel("round")
    ax.set_ylabel("training twin")
    rounds = [s["round"] for s in data.summaries]
    ticks = range(0, len(rounds), max(1, len(rounds) // 10))
    ax.set_xticks(list(ticks), [str(rounds[i]) for i in ticks])
    if len(twin_ids) <= 40:
        ax.set_yticks(range(len(twin_ids)), twin_ids, fontsize="small")
    ax.set_title("Worker diversity: local return of each twin per round")
    return Plot("twin_returns.png", "Local return per twin and round",
                "Mean episodic return of each twin's own local training; "
                "blank: no update or no finished episode.",
                to_png(fig))


def _value(twin: Any, name: str) -> float:
    return float(twin[name]) if isinstance(twin, KindTwin) else float(getattr(twin, name))


def physical_params(fleet: Fleet) -> tuple[str, dict[str, float], list[str]]:
    """The twin kind's parameters with a non-zero default (plotted as deviation from it), those
    defaults, the zero-default ones some twin sets (imperfections: friction, noise, delay), and what
    the defaults are called."""
    kind = kind_of(fleet.all_twins())
    defaults = {p.name: float(p.default) for p in kind.params}
    main = [p.name for p in kind.params if p.default != 0]
    extra = [p.name for p in kind.params if p.default == 0
             and any(_value(t, p.name) for t in fleet.all_twins())]
    reference = "CartPole-v1" if kind.name == "cartpole" else f"the {kind.name} defaults"
    return reference, {n: defaults[n] for n in main}, extra


def plot_physics(data: ReportData) -> Plot:
    """(2b) Spread of the twins' physics: relative deviation from the kind's defaults (CartPole-v1's),
    per parameter and set."""
    fleet = data.ctx.fleet
    sets = {"training": fleet.train, "validation": fleet.validation, "held-out": fleet.heldout}
    reference, defaults, extra = physical_params(fleet)
    physical = tuple(defaults)
    fig = Figure(figsize=(9.5 if extra else 7.5, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=[len(physical), len(extra)]) if extra else [fig.add_subplot()]
    rng = np.random.default_rng(0)  # jitter only
    for offset, (label, twins) in zip((-0.2, 0.0, 0.2), sets.items(), strict=True):
        if not twins:
            continue
        for j, name in enumerate(physical):
            values = np.array([_value(t, name) for t in twins]) / defaults[name] - 1.0
            axes[0].scatter(j + offset + rng.uniform(-0.06, 0.06, len(values)), 100 * values, s=12,
                            color=SET_COLORS[label], alpha=0.7, label=label if j == 0 else None)
        for j, name in enumerate(extra):
            top = max(_value(t, name) for t in fleet.all_twins()) or 1.0
            values = np.array([_value(t, name) for t in twins]) / top
            axes[1].scatter(j + offset + rng.uniform(-0.06, 0.06, len(values)), values, s=12,
                            color=SET_COLORS[label], alpha=0.7)
    axes[0].set_xticks(range(len(physical)), physical, rotation=30)
    axes[0].axhline(0, color="grey", lw=1)
    axes[0].set_ylabel(f"deviation from {reference} (%)")
    axes[0].legend(fontsize="small")
    axes[0].grid(alpha=0.3, axis="y")
    if extra:
        tops = [max(_value(t, n) for t in fleet.all_twins()) for n in extra]
        labels = [f"{n}\n(max {v:.3g})" for n, v in zip(extra, tops, strict=True)]
        axes[1].set_xticks(range(len(extra)), labels, rotation=30, fontsize="small")
        axes[1].set_ylabel("value / fleet maximum")
        axes[1].grid(alpha=0.3, axis="y")
    fig.suptitle("Worker diversity: spread of the twins' physics")
    return Plot("physics_spread.png", "Spread of the twins' physics",
                "One dot per twin: how far its physical parameters are from gymnasium's CartPole-v1; "
                "device imperfections (friction, noise, delay) scaled to the fleet maximum.", to_png(fig))


def plot_generalization(data: ReportData) -> Plot | None:
    """(3) The final model's return per training twin and per held-out twin (the generalization gap)."""
    ev = data.evaluation
    if not ev:
        return None
    train, heldout = ev["train"]["per_twin"], ev["heldout"]["per_twin"]
    ids = [*train, *heldout]
    values = [*train.values(), *heldout.values()]
    colors = [SET_COLORS["training"]] * len(train) + [SET_COLORS["held-out"]] * len(heldout)
    fig = Figure(figsize=(max(6.0, min(0.3 * len(ids) + 2.0, 14.0)), 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(ids)), values, color=colors)
    ax.axhline(ev["train"]["mean_return"], color=SET_COLORS["training"], ls="--", lw=1,
               label=f"training twins: {ev['train']['mean_return']:.1f}")
    ax.axhline(ev["heldout"]["mean_return"], color=SET_COLORS["held-out"], ls="--", lw=1,
               label=f"held-out twins: {ev['heldout']['mean_return']:.1f}")
    for baseline in data.baselines[:1]:
        bev = baseline["evaluation"]
        if bev:
            per = {**bev["train"]["per_twin"], **bev["heldout"]["per_twin"]}
            ax.scatter(range(len(ids)), [per.get(i, np.nan) for i in ids], marker="x", color="black",
                       zorder=3, label=f"single agent ({baseline['name']})")
    if len(ids) <= 60:
        ax.set_xticks(range(len(ids)), ids, rotation=90, fontsize="x-small")
    ax.set_ylabel("greedy return of the final model")
    ax.set_title(f"Generalization gap (training − held-out): {ev['generalization_gap']:.1f}")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    return Plot("generalization.png", "Final model on training vs held-out twins",
                f"Mean of {ev['episodes']} greedy episode(s) per twin; held-out twins never trained.",
                to_png(fig))


def plot_epsilon(data: ReportData) -> Plot | None:
    """(4) Privacy budget spent per twin per round; None when no twin recorded an epsilon."""
    series: dict[str, list[tuple[int, float]]] = {}
    for summary in data.summaries:
        for twin_id, eps in summary.get("twin_epsilon", {}).items():
            if eps is not None and math.isfinite(float(eps)):
                series.setdefault(twin_id, []).append((int(summary["round"]), float(eps)))
    if not series:
        return None
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for twin_id, points in sorted(series.items()):
        ax.plot(*zip(*points, strict=True), marker=".", lw=1, label=twin_id if len(series) <= 12 else None)
    target = getattr(data.ctx.config.privacy, "target_epsilon", None)
    if target is not None:
        ax.axhline(float(target), color="red", ls=":", label=f"target epsilon {target:g}")
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon (cumulative)")
    ax.set_title("Privacy: epsilon per twin per round")
    ax.grid(alpha=0.3)
    if len(series) <= 12 or target is not None:
        ax.legend(fontsize="small")
    return Plot("epsilon.png", "Privacy budget per twin", "Cumulative epsilon of each twin's local DP.",
                to_png(fig))


def make_plots(data: ReportData) -> list[Plot]:
    plots = [plot_validation(data), plot_twin_returns(data), plot_physics(data), plot_generalization(data),
             plot_epsilon(data)]
    return [p for p in plots if p is not None]


# ------------------------------------------------------------------------------------- tables
def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def final_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    """Rows of final numbers; one column for the federated model and one per baseline."""
    s, ev = data.summaries, data.evaluation
    columns = [{
        "rounds": len(s),
        "env steps": sum(int(x["num_samples"]) for x in s),
        "validation return": s[-1]["validation_return"] if s else None,
        "held-out return": ev["heldout"]["mean_return"] if ev else None,
        "training-twin return": ev["train"]["mean_return"] if ev else None,
        "generalization gap": ev["generalization_gap"] if ev else None,
        "rejected updates": sum(len(x["rejected"]) for x in s),
    }]
    for baseline in data.baselines:
        rounds, bev = baseline["rounds"], baseline["evaluation"]
        columns.append({
            "rounds": len(rounds),
            "env steps": int(rounds[-1]["cumulative_env_steps"]),
            "validation return": rounds[-1]["validation_return"],
            "held-out return": bev["heldout"]["mean_return"] if bev else None,
            "training-twin return": bev["train"]["mean_return"] if bev else None,
            "generalization gap": bev["generalization_gap"] if bev else None,
            "rejected updates": None,
        })
    header = ["final", "federated", *[f"baseline: {b['name']}" for b in data.baselines]]
    rows = [[name, *[_fmt(col[name]) for col in columns]] for name in columns[0]]
    return header, rows


def rounds_table(data: ReportData) -> tuple[list[str], list[list[str]]]:
    header = ["round", "participants", "rejected", "env steps", "validation return"]
    rows = [[str(x["round"]), str(len(x["participants"])), str(len(x["rejected"])), f"{x['num_samples']:,}",
             f"{x['validation_return']:.1f}"] for x in data.summaries]
    return header, rows


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(row) + " |" for row in rows]]


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def twin_kind_label(kind: str) -> str:
    """'pendulum twins ' for other kinds; nothing for cartpole (its reports read as before)."""
    return "" if kind == "cartpole" else f"{kind} twins "


def overview(data: ReportData) -> list[str]:
    cfg, fleet = data.ctx.config, data.ctx.fleet
    return [
        f"algorithm: {cfg.train.algo}, strategy: {cfg.federation.strategy}, privacy: {cfg.privacy.mode}",
        f"twins: {len(fleet.train)} training, {len(fleet.validation)} validation, "
        f"{len(fleet.heldout)} held-out {twin_kind_label(cfg.fleet.kind)}(fleet seed {cfg.fleet.seed}, "
        f"preset {cfg.fleet.preset})",
        f"rounds played: {len(data.summaries)} of {cfg.federation.rounds}, "
        f"env steps: {sum(int(s['num_samples']) for s in data.summaries):,}",
        f"run status: {data.ctx.state().get('status')}, "
        f"store: {data.ctx.store.describe(data.ctx.layout.prefix)}",
    ]


# ------------------------------------------------------------------------------------ renders
def render_markdown(data: ReportData, plots: list[Plot]) -> str:
    lines = [f"# fedtwin run `{data.ctx.layout.run_id}`", "", *[f"- {item}" for item in overview(data)], "",
             "## Final numbers", "", *md_table(*final_table(data)), ""]
    for plot in plots:
        lines += [f"## {plot.title}", "", f"![{plot.title}]({plot.name})", "", plot.caption, ""]
    if not any(p.name == "epsilon.png" for p in plots):
        lines += ["Privacy is off (no epsilon recorded), so there is no privacy plot.", ""]
    lines += ["## Rounds", "", *md_table(*rounds_table(data))]
    return "\n".join(lines) + "\n"


CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}
td:first-child,th:first-child{text-align:left}img{max-width:100%}figcaption{color:#555;font-size:90%}"""


def render_html(data: ReportData, plots: list[Plot]) -> str:
    title = f"fedtwin run {data.ctx.layout.run_id}"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head>",
             f"<body><h1>{html.escape(title)}</h1><ul>",
             *[f"<li>{html.escape(item)}</li>" for item in overview(data)], "</ul>",
             "<h2>Final numbers</h2>", html_table(*final_table(data))]
    for plot in plots:
        encoded = base64.b64encode(plot.png).decode("ascii")
        parts += [f"<h2>{html.escape(plot.title)}</h2><figure>",
                  f"<img alt='{html.escape(plot.title)}' data-file='{plot.name}' "
                  f"src='data:image/png;base64,{encoded}'>",
                  f"<figcaption>{html.escape(plot.caption)}</figcaption></figure>"]
    if not any(p.name == "epsilon.png" for p in plots):
        parts.append("<p>Privacy is off (no epsilon recorded), so there is no privacy plot.</p>")
    parts += ["<h2>Rounds</h2>", html_table(*rounds_table(data)), "</body></html>"]
    return "\n".join(parts) + "\n"


def write_report(store: ArtifactStore, run_id: str) -> str:
    """Write the plots, report.md and report.html under the run's report/; return the HTML's location."""
    ctx = RunContext.load(store, run_id)
    data = load_report_data(ctx)
    plots = make_plots(data)
    keys = []
    for plot in plots:
        keys.append(ctx.layout.report(plot.name))
        store.put_bytes(keys[-1], plot.png)
    keys.append(ctx.layout.report("report.md"))
    store.put_text(keys[-1], render_markdown(data, plots))
    keys.append(ctx.layout.report("report.html"))
    store.put_text(keys[-1], render_html(data, plots))
    tracking.log_report(ctx, keys)
    return store.describe(ctx.layout.report("report.html"))
