"""The run report: what a user shows others after a run (markdown now; plots and HTML build on it)."""

from __future__ import annotations

from typing import Any

from fedtwin.steps import RunContext
from fedtwin.store import ArtifactStore


def round_summaries(ctx: RunContext) -> list[dict[str, Any]]:
    rounds = int(ctx.state()["next_round"])
    return [ctx.store.get_json(ctx.layout.summary(r)) for r in range(rounds)
            if ctx.store.exists(ctx.layout.summary(r))]


def render_markdown(ctx: RunContext, summaries: list[dict[str, Any]], evaluation: dict[str, Any]) -> str:
    cfg = ctx.config
    lines = [
        f"# fedtwin run `{ctx.layout.run_id}`",
        "",
        f"- algorithm: {cfg.train.algo}, strategy: {cfg.federation.strategy}, "
        f"twins: {len(ctx.fleet.train)} (validation {len(ctx.fleet.validation)}, "
        f"held-out {len(ctx.fleet.heldout)})",
        f"- rounds played: {len(summaries)} of {cfg.federation.rounds}, "
        f"env steps: {sum(s['num_samples'] for s in summaries):,}",
        "",
        "## Final model",
        "",
        "| set | mean return |",
        "|---|---|",
    ]
    if evaluation:
        lines += [
            f"| held-out twins | {evaluation['heldout']['mean_return']:.1f} |",
            f"| training twins | {evaluation['train']['mean_return']:.1f} |",
            f"| generalization gap | {evaluation['generalization_gap']:.1f} |",
        ]
    lines += ["", "## Rounds", "", "| round | participants | rejected | env steps | validation return |",
              "|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['round']} | {len(s['participants'])} | {len(s['rejected'])} | "
                     f"{s['num_samples']:,} | {s['validation_return']:.1f} |")
    return "\n".join(lines) + "\n"


def write_report(store: ArtifactStore, run_id: str) -> str:
    """Write report/report.md and return its location."""
    ctx = RunContext.load(store, run_id)
    key = ctx.layout.report("evaluation.json")
    evaluation = store.get_json(key) if store.exists(key) else {}
    store.put_text(ctx.layout.report("report.md"), render_markdown(ctx, round_summaries(ctx), evaluation))
    return store.describe(ctx.layout.report("report.md"))
