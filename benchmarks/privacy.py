"""Local differential privacy: what it costs in wall time and in held-out return (utility-privacy curve).

Every row is a whole federated run through the product (`fedtwin.runner.run`: fleet engine, one
process, `steps.init/train/aggregate/evaluate`), on the same fleet, seed and training config; only
`privacy` changes: off, or local DP-SGD with the noise calibrated (Opacus `get_noise_multiplier`
over all planned rounds) to a target epsilon per twin at delta. Runs play every round
(`target_return: null`), so the DP and non-DP runs do the same work and their times compare.
The runs are interleaved (none, 8, 3, 1, none, 8, ...) over seeds so that load from other processes
on a shared machine hits every budget alike.

The DP runs use a privacy-friendly training config (DP_TRAIN below): big full-batch steps (every
transition of a rollout in each step, sample rate 1), few steps in all, a small network; the noise
a step needs grows with the square root of the number of steps while the signal grows with the
batch. The same config without DP is the "none" row; the product default (tuned for speed without
DP) is shown once for reference.

    python benchmarks/privacy.py            # full: 3 seeds x 4 budgets, 8 twins (~1.5 h on 2 busy cores)
    python benchmarks/privacy.py --quick    # smoke: 1 seed, 2 rounds, 4 twins
    python benchmarks/privacy.py --set train.learning_rate=0.001 --budgets 8 --seeds 1   # tuning
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fedtwin import privacy, runner
from fedtwin.config import build_config, deep_merge, set_path
from fedtwin.store import LocalStore, RunLayout

RESULTS = Path(__file__).parent / "results"
DELTA = 1e-6
DP_TRAIN: dict[str, Any] = {
    "hidden": [32, 32], "num_envs": 16, "num_steps": 256, "updates": 4, "epochs": 1, "minibatches": 1,
    "learning_rate": 2.5e-3, "vf_coef": 0.1,
}
"""Privacy-friendly local training: 4096 transitions per step (sample rate 1), 4 steps per round; a
small value-loss weight, else the critic's gradient fills most of each transition's clip bound."""
BASE: dict[str, Any] = {
    "fleet": {"count": 8},
    "federation": {"rounds": 16, "target_return": None},
    "execution": {"engine": "fleet", "workers": 1},
    "train": DP_TRAIN,
    "privacy": {"delta": DELTA, "max_grad_norm": 3.0, "accountant": "rdp"},
}


@dataclass
class Row:
    budget: float | None
    seed: int
    heldout: float
    epsilon: float | None
    noise_multiplier: float | None
    seconds: float
    rounds: int
    epsilon_per_round: list[float] = field(default_factory=list)


def label(budget: float | None) -> str:
    return "none" if budget is None else f"{budget:g}"


def config_for(budget: float | None, seed: int, store: Path, args: argparse.Namespace) -> dict[str, Any]:
    run_id = f"eps-{label(budget).replace('.', 'p')}-s{seed}"
    data = deep_merge(BASE, {"seed": seed, "store": str(store), "run_id": run_id})
    if args.quick:
        data = deep_merge(data, {"fleet": {"count": 4, "validation_count": 2, "heldout_count": 4},
                                 "federation": {"rounds": 2}})
    for item in args.set:
        key, _, raw = item.partition("=")
        set_path(data, key, yaml.safe_load(raw))
    mode = "off" if budget is None else "local"
    return deep_merge(data, {"privacy": {"mode": mode, "target_epsilon": budget}})


def run_one(budget: float | None, seed: int, root: Path, args: argparse.Namespace) -> Row:
    config = build_config(config_for(budget, seed, root / f"{budget}-{seed}", args))
    started = time.perf_counter()
    result = runner.run(config, progress=False, report=False)
    seconds = time.perf_counter() - started
    store = LocalStore(config.store)
    layout = RunLayout(result.run_id)
    eps_rounds = []
    for r in range(result.rounds_played):
        values = [e for e in store.get_json(layout.summary(r))["twin_epsilon"].values() if e is not None]
        eps_rounds.append(max(values) if values else float("nan"))
    plan = privacy.make_plan(config)
    row = Row(budget, seed, result.heldout_return, eps_rounds[-1] if plan else None,
              plan.noise_multiplier if plan else None, seconds, result.rounds_played,
              eps_rounds if plan else [])
    shutil.rmtree(config.store, ignore_errors=True)
    print(f"  epsilon {budget or 'none':>4} seed {seed}: held-out {row.heldout:6.1f}  final epsilon "
          f"{row.epsilon if row.epsilon is not None else float('nan'):.3f}  sigma "
          f"{row.noise_multiplier or 0:.2f}  {seconds:6.1f} s", flush=True)
    return row


# -------------------------------------------------------------------------------------- output
def machine_info() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import opacus

    return {"cpu": f"{cpu} ({os.cpu_count()} cores, shared)", "python": platform.python_version(),
            "torch": torch.__version__, "opacus": opacus.__version__,
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg())}


def plot(rows: list[Row], budgets: list[float | None], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    dp = [b for b in budgets if b is not None]
    for b in dp:
        cell = [r for r in rows if r.budget == b]
        ax.scatter([r.epsilon for r in cell], [r.heldout for r in cell], color="tab:blue", alpha=0.4, s=18)
    means = [(np.mean([r.epsilon for r in rows if r.budget == b]),
              np.mean([r.heldout for r in rows if r.budget == b])) for b in dp]
    if means:
        ax.plot(*zip(*sorted(means), strict=True), marker="o", color="tab:blue",
                label="local DP (mean of seeds)")
    none = [r.heldout for r in rows if r.budget is None]
    if none:
        ax.axhline(float(np.mean(none)), color="black", ls="--", label=f"no DP ({np.mean(none):.0f})")
    ax.axhline(400, color="red", ls=":", label="target 400")
    ax.set_xscale("log")
    ax.set_xlabel(f"final epsilon per twin (delta {DELTA:g}, per transition)")
    ax.set_ylabel("held-out return (8 unseen twins)")
    ax.set_title("Utility-privacy curve")
    ax.set_ylim(0, 520)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    for b in dp:
        cell = [r for r in rows if r.budget == b and r.epsilon_per_round]
        if cell:
            bx.plot(range(len(cell[0].epsilon_per_round)), cell[0].epsilon_per_round, marker=".",
                    label=f"target {b:g}")
            bx.axhline(b, color="grey", ls=":", lw=0.8)
    bx.set_xlabel("round")
    bx.set_ylabel("epsilon spent (max over twins)")
    bx.set_title("Epsilon per round (seed 0)")
    bx.grid(alpha=0.3)
    bx.legend(fontsize="small")
    fig.savefig(path, dpi=100, metadata={"Software": None})


def render(rows: list[Row], budgets: list[float | None], args: argparse.Namespace, info: dict[str, str],
           seconds: float, png: str, import_seconds: float) -> str:
    config = build_config(config_for(8.0, 0, Path("store"), args))
    plan = privacy.make_plan(config)
    assert plan is not None
    t = config.train
    transitions = config.federation.rounds * t.updates * t.num_envs * t.num_steps
    lines = [
        "# Local differential privacy: cost and utility-privacy curve",
        "",
        f"Generated by `{shlex.join(['python', 'benchmarks/privacy.py', *sys.argv[1:]])}` on "
        f"{dt.date.today().isoformat()} in {seconds / 60:.0f} min.",
        f"Machine: {info['cpu']}, Python {info['python']}, torch {info['torch']}, Opacus {info['opacus']}; "
        f"load average at the end {info['load']}.",
        "",
        f"Fleet: {config.fleet.count} generated twins (default spread), {config.federation.rounds} rounds "
        f"(all played), FedAvg, fleet engine in one process. Held-out return: greedy, "
        f"{config.federation.heldout_episodes} episodes on each of {config.fleet.heldout_count} held-out "
        "twins (max 500).",
        f"Training (same for every row): PPO, hidden {list(t.hidden_sizes)}, {t.num_envs} envs x "
        f"{t.num_steps} steps = {t.num_envs * t.num_steps} transitions per rollout, {t.updates} rollouts per "
        f"round, {t.epochs} epoch(s) x {t.minibatches} minibatch(es), lr {t.learning_rate:g}.",
        f"DP: one sample = one transition; sample rate {plan.sample_rate:g}, {plan.steps_per_round} DP-SGD "
        f"steps per twin per round ({plan.planned_steps} in all), max_grad_norm "
        f"{config.privacy.max_grad_norm:g}, delta {DELTA:g} (< 1/{transitions} transitions per twin), "
        f"{config.privacy.accountant} accountant, noise calibrated to the target over all rounds.",
        "",
        "| target epsilon | noise multiplier | final epsilon (max twin) | held-out return, mean ± sd "
        "(per seed) | wall time per run | vs no DP |",
        "|---|---|---|---|---|---|",
    ]
    base = [r.seconds for r in rows if r.budget is None]
    for b in budgets:
        cell = [r for r in rows if r.budget == b]
        if not cell:
            continue
        held = [r.heldout for r in cell]
        eps = "-" if b is None else f"{max(r.epsilon or 0 for r in cell):.3f}"
        sigma = "-" if b is None else f"{cell[0].noise_multiplier:.2f}"
        time_s = float(np.mean([r.seconds for r in cell]))
        ratio = f"{time_s / np.mean(base):.2f}x" if base else "-"
        lines.append(f"| {label(b)} | {sigma} | {eps} | {np.mean(held):.1f} ± {np.std(held):.1f} "
                     f"({', '.join(f'{h:.0f}' for h in held)}) | {time_s:.0f} s | {ratio} |")
    lines += ["", f"Wall times exclude importing Opacus ({import_seconds:.1f} s, once per process: a "
              "twin pod pays it once per round).", "", f"![utility-privacy curve]({png})", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 rounds, 4 twins (a smoke check)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per budget (default 3; quick 1)")
    parser.add_argument("--budgets", type=float, nargs="*", default=[8.0, 3.0, 1.0],
                        help="target epsilons (a run without DP is always added)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. train.learning_rate=0.001")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without DP (tuning)")
    parser.add_argument("--out", default=None, help="results markdown (default results/privacy.md; "
                        "quick/tuning runs do not write unless given)")
    args = parser.parse_args()
    seeds = args.seeds or (1 if args.quick else 3)
    torch.set_num_threads(1)
    os.environ.setdefault(privacy.NOISE_KEY_ENV, "benchmark")  # reproducible noise for the table
    budgets: list[float | None] = [*([] if args.no_baseline else [None]), *sorted(args.budgets, reverse=True)]
    started = time.perf_counter()
    privacy.new_accountant("rdp")  # import Opacus (seconds, once per process) before any run is timed
    import_seconds = time.perf_counter() - started
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedtwin-privacy-") as tmp:
        for seed in range(seeds):
            for budget in budgets:
                rows.append(run_one(budget, seed, Path(tmp), args))
    seconds = time.perf_counter() - started
    out = Path(args.out) if args.out else (None if args.quick or args.set else RESULTS / "privacy.md")
    if out is None:
        return
    png = out.with_suffix(".png")
    plot(rows, budgets, png)
    out.write_text(render(rows, budgets, args, machine_info(), seconds, png.name, import_seconds))
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
