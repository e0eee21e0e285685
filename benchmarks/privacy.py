"""Local differential privacy: what it costs in wall time and in held-out return (utility-privacy curve).

Every row is a whole federated run through the product (`fedtwin.run.runner.run`: fleet engine, one
process, `steps.init/train/aggregate/evaluate`), on the same fleet and seeds; within a setup only
`privacy` changes: off, or local DP-SGD with the noise calibrated (Opacus `get_noise_multiplier`
over all planned rounds) to a target epsilon per twin at delta. Runs play every round
(`target_return: null`), so a DP run and its no-DP twin do the same work and their times compare.
Runs are interleaved (setup A: none, 8, 3, 1; setup B: ...; next seed) so that load from other
processes on a shared machine hits every row alike.

DP needs a privacy-friendly training config: the noise a step needs grows with the square root of
the number of steps, while the signal grows with the batch. Both setups take full-batch steps (every
transition of a rollout, sample rate 1), 4 per round, 64 per twin in all, with a small network and a
small value-loss weight (else the critic's gradient fills most of each transition's clip bound):
  A  16 envs x 256 steps = 4096 transitions per step, max_grad_norm 6
  B  32 envs x 256 steps = 8192 transitions per step, max_grad_norm 3 (twice the env steps)
Which clip bound is best depends on the noise (see benchmarks/results/privacy.md).

    python benchmarks/privacy.py            # full: 2 setups x 4 budgets x 3 seeds (~25 min on 2 busy cores)
    python benchmarks/privacy.py --quick    # smoke: setup A, 1 seed, 2 rounds, 4 twins
    python benchmarks/privacy.py --setups A --budgets 8 --seeds 1 --set train.learning_rate=0.001  # tuning
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
from machine import cpu_model, load_average

from fedtwin.config import build_config, deep_merge, set_path
from fedtwin.learn import accounting
from fedtwin.run import runner
from fedtwin.store import LocalStore, RunLayout

RESULTS = Path(__file__).parent / "results"
DELTA = 1e-6
BASE: dict[str, Any] = {
    "fleet": {"count": 8},
    "federation": {"rounds": 16, "target_return": None},
    "execution": {"engine": "fleet", "workers": 1},
    "train": {"hidden": [32, 32], "num_steps": 256, "updates": 4, "epochs": 1, "minibatches": 1,
              "learning_rate": 2.5e-3, "vf_coef": 0.1},
    "privacy": {"delta": DELTA, "accountant": "rdp"},
}
SETUPS: dict[str, dict[str, Any]] = {
    "A": {"train": {"num_envs": 16}, "privacy": {"max_grad_norm": 6.0}},
    "B": {"train": {"num_envs": 32}, "privacy": {"max_grad_norm": 3.0}},
}
COLORS = {"A": "tab:blue", "B": "tab:orange"}
NOTES = """\
## How to read this

- Epsilon is per twin and per *transition* (one sample = one transition), composed over every
  DP-SGD step of the run; it is not a per-episode or per-device guarantee (see `docs/privacy.md`).
  Held-out twins never train; their return is the utility.
- The clip bound interacts with the noise. Setup A's bound (6) is above most transitions' gradient
  norms: little clipping bias, and at epsilon 8 the noise is small enough. At epsilon 3 and 1 the
  noise (sigma x 6 per step) drowns the signal. Setup B halves the relative noise twice over (a
  bound of 3 and twice the transitions per step) and keeps epsilon 3 above 400, but clips more and
  does worse at epsilon 8. Clipping without noise is not free either: setup A's training with a
  bound of 3 and sigma 0.01 (no privacy) reached only about 130 in tuning runs, sigma 1 about 400.
- The hyperparameters were tuned on these simulated twins (about 120 tuning runs, 1-3 seeds each); that
  tuning is not counted in epsilon, as is usual but not free when tuning uses private data.
- Per-seed spread is large (RL on 8 twins, 16 rounds, final model only): compare means with their sd.
- Wall time: DP computes one gradient per transition (vmap of grad over the rollout, for every twin
  at once) instead of one per batch; the environment and the evaluation are the same. Runs with a
  better policy also evaluate longer episodes, which inflates the no-DP time slightly.
"""


@dataclass
class Row:
    setup: str
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


def config_for(setup: str, budget: float | None, seed: int, store: Path, args: argparse.Namespace
               ) -> dict[str, Any]:
    run_id = f"{setup.lower()}-eps-{label(budget).replace('.', 'p')}-s{seed}"
    data = deep_merge(deep_merge(BASE, SETUPS[setup]), {"seed": seed, "store": str(store), "run_id": run_id})
    if args.quick:
        data = deep_merge(data, {"fleet": {"count": 4, "validation_count": 2, "heldout_count": 4},
                                 "federation": {"rounds": 2}})
    for item in args.set:
        key, _, raw = item.partition("=")
        set_path(data, key, yaml.safe_load(raw))
    mode = "off" if budget is None else "local"
    return deep_merge(data, {"privacy": {"mode": mode, "target_epsilon": budget}})


def run_one(setup: str, budget: float | None, seed: int, root: Path, args: argparse.Namespace) -> Row:
    config = build_config(config_for(setup, budget, seed, root / f"{setup}-{budget}-{seed}", args))
    started = time.perf_counter()
    result = runner.run(config, progress=False, report=False)
    seconds = time.perf_counter() - started
    store = LocalStore(config.store)
    layout = RunLayout(result.run_id)
    eps_rounds = []
    for r in range(result.rounds_played):
        values = [e for e in store.get_json(layout.summary(r))["twin_epsilon"].values() if e is not None]
        eps_rounds.append(max(values) if values else float("nan"))
    plan = accounting.make_plan(config)
    row = Row(setup, budget, seed, result.heldout_return, eps_rounds[-1] if plan else None,
              plan.noise_multiplier if plan else None, seconds, result.rounds_played,
              eps_rounds if plan else [])
    shutil.rmtree(config.store, ignore_errors=True)
    print(f"  {setup} epsilon {label(budget):>4} seed {seed}: held-out {row.heldout:6.1f}  final epsilon "
          f"{row.epsilon if row.epsilon is not None else float('nan'):.3f}  sigma "
          f"{row.noise_multiplier or 0:.2f}  {seconds:6.1f} s", flush=True)
    return row


# -------------------------------------------------------------------------------------- output
def machine_info() -> dict[str, str]:
    import opacus

    return {"cpu": f"{cpu_model()} ({os.cpu_count()} cores, shared)", "python": platform.python_version(),
            "torch": torch.__version__, "opacus": opacus.__version__, "load": load_average(" ", 1)}


def cell(rows: list[Row], setup: str, budget: float | None) -> list[Row]:
    return [r for r in rows if r.setup == setup and r.budget == budget]


def plot(rows: list[Row], setups: list[str], budgets: list[float | None], path: Path, twins: int) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    dp = [b for b in budgets if b is not None]
    for setup in setups:
        color = COLORS.get(setup, "tab:green")
        points = [(r.epsilon, r.heldout) for b in dp for r in cell(rows, setup, b)]
        if points:
            ax.scatter(*zip(*points, strict=True), color=color, alpha=0.35, s=16)
        cells = [c for c in (cell(rows, setup, b) for b in dp) if c]
        means = sorted((float(np.mean([r.epsilon or 0 for r in c])), float(np.mean([r.heldout for r in c])))
                       for c in cells)
        if means:
            ax.plot(*zip(*means, strict=True), marker="o", color=color, label=f"setup {setup}: local DP")
        none = [r.heldout for r in cell(rows, setup, None)]
        if none:
            ax.axhline(float(np.mean(none)), color=color, ls="--", lw=1,
                       label=f"setup {setup}: no DP ({np.mean(none):.0f})")
    ax.axhline(400, color="red", ls=":", label="target 400")
    ax.set_xscale("log")
    ax.set_xlabel(f"final epsilon per twin (delta {DELTA:g}; one sample = one transition)")
    ax.set_ylabel("held-out return (mean over seeds)")
    ax.set_title(f"Utility-privacy curve ({twins} twins, FedAvg)")
    ax.set_ylim(0, 520)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    for b in dp:
        first = cell(rows, setups[0], b)
        if first and first[0].epsilon_per_round:
            bx.plot(range(len(first[0].epsilon_per_round)), first[0].epsilon_per_round, marker=".",
                    label=f"target {b:g}")
            bx.axhline(b, color="grey", ls=":", lw=0.8)
    bx.set_xlabel("round")
    bx.set_ylabel("epsilon spent (max over twins)")
    bx.set_title(f"Epsilon per round (setup {setups[0]}, seed 0)")
    bx.grid(alpha=0.3)
    bx.legend(fontsize="small")
    fig.savefig(path, dpi=100, metadata={"Software": None})


def render(rows: list[Row], setups: list[str], budgets: list[float | None], args: argparse.Namespace,
           info: dict[str, str], seconds: float, png: str, import_seconds: float) -> str:
    lines = [
        "# Local differential privacy: cost and utility-privacy curve",
        "",
        f"Generated by `{shlex.join(['python', 'benchmarks/privacy.py', *sys.argv[1:]])}` on "
        f"{dt.date.today().isoformat()} in {seconds / 60:.0f} min.",
        f"Machine: {info['cpu']}, Python {info['python']}, torch {info['torch']}, Opacus {info['opacus']}; "
        f"load average at the end {info['load']}.",
        "",
    ]
    for setup in setups:
        config = build_config(config_for(setup, 8.0, 0, Path("store"), args))
        plan = accounting.make_plan(config)
        assert plan is not None
        t, f = config.train, config.federation
        transitions = f.rounds * t.updates * t.num_envs * t.num_steps
        lines.append(
            f"- Setup {setup}: PPO, hidden {list(t.hidden_sizes)}, vf_coef {t.vf_coef:g}, lr "
            f"{t.learning_rate:g}; {t.num_envs} envs x {t.num_steps} steps = {t.num_envs * t.num_steps} "
            f"transitions per rollout, {t.updates} rollouts per round, {t.epochs} epoch x {t.minibatches} "
            f"minibatch: sample rate {plan.sample_rate:g}, {plan.steps_per_round} DP-SGD steps per twin per "
            f"round, {plan.planned_steps} in all; max_grad_norm {config.privacy.max_grad_norm:g}; delta "
            f"{DELTA:g} (< 1/{transitions} transitions per twin)."
        )
    config = build_config(config_for(setups[0], None, 0, Path("store"), args))
    lines += [
        f"- Both: {config.fleet.count} generated twins (default spread), {config.federation.rounds} rounds "
        f"(all played), FedAvg, fleet engine in one process; {config.privacy.accountant} accountant, noise "
        f"calibrated to the target over all rounds. Held-out return: greedy, "
        f"{config.federation.heldout_episodes} episodes on each of {config.fleet.heldout_count} held-out "
        "twins (max 500), final global model.",
        "",
        "| setup | target epsilon | noise multiplier | final epsilon (max twin) | held-out return, mean ± sd "
        "(per seed) | wall time per run | vs no DP |",
        "|---|---|---|---|---|---|---|",
    ]
    for setup in setups:
        base = [r.seconds for r in cell(rows, setup, None)]
        for b in budgets:
            runs = cell(rows, setup, b)
            if not runs:
                continue
            held = [r.heldout for r in runs]
            eps = "-" if b is None else f"{max(r.epsilon or 0 for r in runs):.3f}"
            sigma = "-" if b is None else f"{runs[0].noise_multiplier:.2f}"
            time_s = float(np.mean([r.seconds for r in runs]))
            ratio = f"{time_s / np.mean(base):.2f}x" if base else "-"
            lines.append(f"| {setup} | {label(b)} | {sigma} | {eps} | {np.mean(held):.1f} ± "
                         f"{np.std(held):.1f} ({', '.join(f'{h:.0f}' for h in held)}) | {time_s:.0f} s | "
                         f"{ratio} |")
    lines += ["", f"Wall times exclude importing Opacus ({import_seconds:.1f} s, once per process: a "
              "twin pod pays it once per round).", "", f"![utility-privacy curve]({png})", "", NOTES]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="setup A, 1 seed, 2 rounds, 4 twins (smoke)")
    parser.add_argument("--setups", nargs="*", choices=sorted(SETUPS), default=None,
                        help="training setups (default A B; quick A)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per budget (default 3; quick 1)")
    parser.add_argument("--budgets", type=float, nargs="*", default=[8.0, 3.0, 1.0],
                        help="target epsilons (a run without DP is added unless --no-baseline)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. train.learning_rate=0.001")
    parser.add_argument("--no-baseline", action="store_true", help="skip the runs without DP (tuning)")
    parser.add_argument("--out", default=None, help="results markdown (default results/privacy.md; "
                        "quick/tuning runs do not write unless given)")
    args = parser.parse_args()
    setups = args.setups or (["A"] if args.quick else ["A", "B"])
    seeds = args.seeds or (1 if args.quick else 3)
    torch.set_num_threads(1)
    os.environ.setdefault(accounting.NOISE_KEY_ENV, "benchmark")  # reproducible noise for the table
    budgets: list[float | None] = [*([] if args.no_baseline else [None]), *sorted(args.budgets, reverse=True)]
    started = time.perf_counter()
    accounting.new_accountant("rdp")  # import Opacus (seconds, once per process) before any run is timed
    import_seconds = time.perf_counter() - started
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedtwin-privacy-") as tmp:
        for seed in range(seeds):
            for setup in setups:
                for budget in budgets:
                    rows.append(run_one(setup, budget, seed, Path(tmp), args))
    seconds = time.perf_counter() - started
    custom = args.quick or args.set or args.setups or args.no_baseline
    out = Path(args.out) if args.out else (None if custom else RESULTS / "privacy.md")
    if out is None:
        return
    png = out.with_suffix(".png")
    twins = build_config(config_for(setups[0], None, 0, Path("s"), args)).fleet.count
    plot(rows, setups, budgets, png, twins)
    out.write_text(render(rows, setups, budgets, args, machine_info(), seconds, png.name, import_seconds))
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
