"""Time and env steps to solve the fleet: fedtwin (PPO + FedAvg) vs the reference systems (REINFORCE with
a 4-32-16-2 network + FedAvg), same fleet, same held-out twins, same round structure (twins per round,
env steps per twin per round), in one command.

Both stop the way the product does: after the round whose global model reaches the target return on
the *validation* twins (`federation.target_return`), or at the round budget. The held-out twins are
used once, on the model each run stopped with: choosing when to stop by the held-out return, or
reporting the best held-out return over rounds, would be tuning on the test set.

The reference's learning rate is tuned first, fairly: a small sweep on seeds kept apart from the
comparison's, judged on validation alone (median env steps to the target; a run that misses it
counts its whole budget), and the best rate is the one compared. fedtwin's PPO keeps the product's
default training config.

Each round goes through the real step functions (init, train with the fleet engine, aggregate) on a
local store; wall time counts training and aggregation (the aggregation's validation included).

    python benchmarks/time_to_solve.py                # sweep on seeds 100-101, compare on 0-2, 20 rounds
    python benchmarks/time_to_solve.py --quick        # 1 seed, 8 rounds, two learning rates (not written)
    python benchmarks/time_to_solve.py --defaults     # old default config vs the proposed one, seeds 0-4

`--defaults` (issue 20, item 2) runs `fedtwin run` and `fedtwin baseline` as processes, through the public
CLI, with the old and the proposed training/execution settings one after the other per seed, and prints
median and worst seed of env steps, seconds and held-out return (results/time_to_solve_defaults.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from machine import cpu_model, load_average

from fedtwin.config import TrainConfig, load_config
from fedtwin.run import steps
from fedtwin.run.round import train_round
from fedtwin.store import LocalStore

RESULTS = Path(__file__).parent / "results" / "time_to_solve.md"
DEFAULTS_RESULTS = Path(__file__).parent / "results" / "time_to_solve_defaults.md"
PPO = "fedtwin PPO + FedAvg"
REFERENCE = "reference REINFORCE 4-32-16-2 + FedAvg"
DEFAULT_LR = TrainConfig().learning_rate


@dataclass
class Outcome:
    label: str
    learning_rate: float
    seed: int
    stopped_round: int | None
    """The round whose global model reached the validation target; None: the budget ran out."""
    rounds: int
    env_steps: int
    seconds: float
    validation_return: float
    heldout_return: float | None
    """Held-out return of the model the run stopped with (None while tuning: not looked at)."""


def run_one(label: str, algo: str, lr: float, seed: int, rounds: int, target: float, root: Path,
            heldout: bool) -> Outcome:
    run_id = f"{algo}-{seed}-{lr:g}".replace(".", "p").replace("e-", "em")
    config = load_config(overrides={
        "run_id": run_id, "store": str(root), "seed": seed,
        "train": {"algo": algo, "learning_rate": lr},
        "federation": {"rounds": rounds, "target_return": target},
        "execution": {"workers": 1},
    }, environ={})
    store = LocalStore(root)
    init = steps.init(store, config)
    env_steps, seconds, played = 0, 0.0, 0
    summary: dict = {}
    for round_index in range(rounds):
        started = time.perf_counter()
        train_round(store, init.run_id, round_index, init.twin_ids, "fleet", 1)
        summary = steps.aggregate(store, init.run_id, round_index)
        seconds += time.perf_counter() - started
        env_steps += summary["num_samples"]
        played = round_index + 1
        if not summary["continue"]:
            break
    stopped = played if summary.get("target_reached") else None
    held = steps.evaluate(store, init.run_id)["heldout"]["mean_return"] if heldout else None
    return Outcome(label, lr, seed, stopped, played, env_steps, seconds, summary["validation_return"], held)


def tune(lrs: list[float], seeds: list[int], rounds: int, target: float,
         root: Path) -> tuple[float, list[Outcome]]:
    """The reference's learning rate with the fewest median env steps to the validation target."""
    tried: list[Outcome] = []
    for lr in lrs:
        for seed in seeds:
            outcome = run_one(REFERENCE, "reinforce", lr, seed, rounds, target, root, heldout=False)
            tried.append(outcome)
            print(f"tune lr {lr:g} seed {seed}: stopped at {outcome.stopped_round}, "
                  f"{outcome.env_steps:,} env steps, validation {outcome.validation_return:.1f}", flush=True)

    def score(lr: float) -> tuple[float, float]:
        runs = [o for o in tried if o.learning_rate == lr]
        return (statistics.median(o.env_steps for o in runs),
                -statistics.median(o.validation_return for o in runs))

    return min(lrs, key=score), tried


def machine() -> str:
    return (f"{cpu_model()}, {torch.get_num_threads()} torch thread(s), Python {platform.python_version()}, "
            f"torch {torch.__version__}, numpy {np.__version__}")


def median_of(group: list[Outcome], attr: str) -> float:
    return statistics.median(getattr(o, attr) for o in group)


def render(args: argparse.Namespace, best_lr: float, tried: list[Outcome], outcomes: list[Outcome],
           load: str) -> str:
    lines = [
        "# Time to solve: PPO + FedAvg vs the reference REINFORCE + FedAvg",
        "",
        f"Command: `python benchmarks/time_to_solve.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d}; machine: {machine()}; load average {load}",
        "",
        "8 training twins (±15 % physics), 4 validation twins, 8 held-out twins, FedAvg, up to "
        f"{args.rounds} rounds. Each run stops like the product: after the round whose global model reaches "
        f"{args.target:g} on the validation twins (`federation.target_return`). The held-out return is "
        "that stopped model's, measured once. Wall time: training and aggregation.",
        "",
        f"## Tuning the reference's learning rate (seeds {', '.join(map(str, args.tune_seeds))}, "
        "validation only)",
        "",
        "| learning rate | seed | stopped at round | env steps | validation return |",
        "|---|---|---|---|---|",
    ]
    for o in tried:
        lines.append(f"| {o.learning_rate:g} | {o.seed} | {o.stopped_round or 'not reached'} | "
                     f"{o.env_steps:,} | {o.validation_return:.1f} |")
    lines += ["", f"Chosen: **{best_lr:g}** (fewest median env steps to the target; the product's default is "
              f"{DEFAULT_LR:g}).", "",
              f"## Comparison (seeds {', '.join(map(str, args.seeds))})", "",
              "| configuration | learning rate | seed | stopped at round | env steps | wall s "
              "| validation return | held-out return of the stopped model |",
              "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        lines.append(f"| {o.label} | {o.learning_rate:g} | {o.seed} | {o.stopped_round or 'not reached'} | "
                     f"{o.env_steps:,} | {o.seconds:.1f} | {o.validation_return:.1f} | "
                     f"{o.heldout_return:.1f} |")
    groups = {name: [o for o in outcomes if o.label == name] for name in (PPO, REFERENCE)}
    lines += ["", "| | reached the target | median env steps | median wall s | median held-out return |",
              "|---|---|---|---|---|"]
    for name, group in groups.items():
        reached = sum(o.stopped_round is not None for o in group)
        lines.append(f"| {name} | {reached}/{len(group)} | {median_of(group, 'env_steps'):,.0f} | "
                     f"{median_of(group, 'seconds'):.1f} | {median_of(group, 'heldout_return'):.1f} |")
    ppo, ref = groups[PPO], groups[REFERENCE]
    steps_ratio = median_of(ref, "env_steps") / median_of(ppo, "env_steps")
    time_ratio = median_of(ref, "seconds") / median_of(ppo, "seconds")
    lines += ["", "Ratio reference / fedtwin (medians; a run that misses the target counts its whole "
              f"budget): env steps {steps_ratio:.2f}x, wall time {time_ratio:.2f}x.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------- old defaults vs proposed (issue 20, item 2)
# Both spelled out in full, so the comparison means the same after the product's defaults change.
OLD_DEFAULTS: dict[str, Any] = {
    "train": {"num_envs": 4, "num_steps": 128, "updates": 8, "epochs": 6, "minibatches": 4},
    "execution": {"engine": "pool", "workers": None},
}
PROPOSED: dict[str, Any] = {
    "train": {"num_envs": 1, "num_steps": 128, "updates": 8, "epochs": 6, "minibatches": 2},
    "execution": {"engine": "fleet", "workers": 1},
}
SOLVED = 475.0
"""A run counts as solved when its stopped model's held-out return is at least this."""


@dataclass
class CliOutcome:
    label: str
    seed: int
    rounds: int
    env_steps: int
    seconds: float
    """`fedtwin run`'s own figure: init, rounds, held-out evaluation and report."""
    wall: float
    """The whole `fedtwin run` process, imports included."""
    cpu: float
    """CPU seconds (user + system) of that process: what it costs when the machine is shared."""
    heldout_return: float
    pooled_env_steps: int | None
    """Env steps of the run's pooled single-agent baseline (`fedtwin baseline`) to the same target."""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _fedtwin(args: list[str]) -> tuple[dict[str, Any], float, float]:
    """One `python -m fedtwin ... --json` process (the public CLI: module paths may move): its JSON, wall
    and CPU seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDTWIN_", "MLFLOW_"))}
    cpu = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fedtwin", *args, "--no-progress", "--json"],
                          capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = done.stderr.strip()[-2000:]
        raise SystemExit(f"fedtwin {' '.join(args)} failed ({done.returncode}): {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1]), wall, _children_cpu() - cpu


def cli_one(label: str, overrides: dict[str, Any], seed: int, root: Path, pooled: bool) -> CliOutcome:
    name = "old" if overrides is OLD_DEFAULTS else "new"
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump({**overrides, "seed": seed}))
    common = ["--config", str(config), "--store", str(root / "store"), "--run-id", f"{name}-{seed}"]
    run, wall, cpu = _fedtwin(["run", *common])
    pooled_steps = int(_fedtwin(["baseline", *common])[0]["env_steps"]) if pooled else None
    return CliOutcome(label, seed, int(run["rounds"]), int(run["env_steps"]), float(run["seconds"]), wall,
                      cpu, float(run["heldout_return"]), pooled_steps)


def _spread(values: list[float], worst: Callable[[list[float]], float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} / {format(worst(values), fmt)}"


def render_defaults(args: argparse.Namespace, outcomes: list[CliOutcome], loads: tuple[str, str]) -> str:
    def keys(overrides: dict[str, Any]) -> str:
        return ", ".join(f"`{section}.{k}: {v if v is not None else 'null'}`"
                         for section, values in overrides.items() for k, v in values.items())

    lines = [
        "# Time to solve: the old default config vs the proposed one (issue 20, item 2)",
        "",
        f"Command: `python benchmarks/time_to_solve.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {cpu_model()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; load average before {loads[0]}, after {loads[1]}",
        "",
        "Each seed runs `fedtwin run` as a user does (a fresh process, product defaults otherwise: 8 twins "
        "±15 %, PPO, FedAvg, up to 20 rounds, stop at validation return 490), first with the old defaults, "
        "then with the proposed ones, one right after the other; then, unless `--no-pooled`, `fedtwin "
        "baseline` of the same run: the single agent trained on the pooled fleet with the same local "
        "training, validated after every round-equivalent (8 chunks of one twin's local training).",
        "",
        f"- old defaults: {keys(OLD_DEFAULTS)}",
        f"- proposed: {keys(PROPOSED)}",
        "",
        "| configuration | seed | rounds | env steps | run s | process wall s | process CPU s | "
        "held-out return | pooled agent's env steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        pooled_steps = f"{o.pooled_env_steps:,}" if o.pooled_env_steps else "-"
        lines.append(f"| {o.label} | {o.seed} | {o.rounds} | {o.env_steps:,} | {o.seconds:.1f} | "
                     f"{o.wall:.1f} | {o.cpu:.1f} | {o.heldout_return:.1f} | {pooled_steps} |")
    lines += ["", f"Median / worst seed over seeds {', '.join(map(str, args.seeds))} (solved: held-out "
              f"return >= {SOLVED:g}):", "",
              "| configuration | solved | env steps | run s | process wall s | process CPU s "
              "| held-out return | pooled agent's env steps |", "|---|---|---|---|---|---|---|---|"]
    groups = {label: [o for o in outcomes if o.label == label] for label in ("old defaults", "proposed")}
    for label, group in groups.items():
        pooled = [float(o.pooled_env_steps) for o in group if o.pooled_env_steps]
        lines.append(
            f"| {label} | {sum(o.heldout_return >= SOLVED for o in group)}/{len(group)} | "
            f"{_spread([float(o.env_steps) for o in group], max, ',.0f')} | "
            f"{_spread([o.seconds for o in group], max, '.1f')} | "
            f"{_spread([o.wall for o in group], max, '.1f')} | "
            f"{_spread([o.cpu for o in group], max, '.1f')} | "
            f"{_spread([o.heldout_return for o in group], min, '.1f')} | "
            f"{_spread(pooled, max, ',.0f') if pooled else '-'} |")
    old, new = groups["old defaults"], groups["proposed"]

    def ratio(attr: str) -> str:
        medians = [statistics.median(getattr(o, attr) for o in group) for group in (new, old)]
        return f"{medians[0] / medians[1]:.2f}x"

    lines += ["", f"Proposed / old (medians): env steps {ratio('env_steps')}, run seconds "
              f"{ratio('seconds')}, process wall {ratio('wall')}, process CPU {ratio('cpu')}."]
    old_pooled = [o.pooled_env_steps for o in old if o.pooled_env_steps]
    if old_pooled:
        reference = statistics.median(old_pooled)
        lines.append(f"Proposed FedAvg env steps / the old defaults' pooled agent ({reference:,.0f}, "
                     "median): "
                     f"median {statistics.median(o.env_steps for o in new) / reference:.2f}x, worst seed "
                     f"{max(o.env_steps for o in new) / reference:.2f}x.")
    return "\n".join([*lines, ""])


def compare_defaults(args: argparse.Namespace) -> int:
    before = load_average()
    outcomes: list[CliOutcome] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for label, overrides in (("old defaults", OLD_DEFAULTS), ("proposed", PROPOSED)):
                outcome = cli_one(label, overrides, seed, Path(tmp), pooled=not args.no_pooled)
                outcomes.append(outcome)
                print(f"{label:<13} seed {seed}: {outcome.rounds} rounds, {outcome.env_steps:,} env steps, "
                      f"run {outcome.seconds:.1f} s, process {outcome.wall:.1f} s ({outcome.cpu:.1f} s CPU), "
                      f"held-out {outcome.heldout_return:.1f}, pooled agent {outcome.pooled_env_steps}",
                      flush=True)
    text = render_defaults(args, outcomes, (before, load_average()))
    print(text)
    if not args.no_write:
        DEFAULTS_RESULTS.parent.mkdir(parents=True, exist_ok=True)
        DEFAULTS_RESULTS.write_text(text)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds compared (default 0 1 2; with --defaults 0 1 2 3 4)")
    parser.add_argument("--tune-seeds", type=int, nargs="+", default=[100, 101],
                        help="seeds the reference's learning rate is tuned on (kept apart from --seeds)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, DEFAULT_LR, 5e-3, 1e-2, 2e-2, 4e-2],
                        help="learning rates tried for the reference")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--target", type=float, default=475.0, help="validation return that stops a run")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 8 rounds, 2 learning rates (not written)")
    parser.add_argument("--no-write", action="store_true", help="do not update the results file")
    parser.add_argument("--defaults", action="store_true",
                        help="compare the old default config with the proposed one (fedtwin run processes)")
    parser.add_argument("--no-pooled", action="store_true",
                        help="with --defaults: skip the pooled single-agent baseline of each run")
    args = parser.parse_args()
    if args.defaults:
        args.seeds = args.seeds or [0, 1, 2, 3, 4]
        return compare_defaults(args)
    args.seeds = args.seeds or [0, 1, 2]
    if args.quick:
        args.seeds, args.tune_seeds, args.lrs, args.rounds, args.no_write = args.seeds[:1], [100], \
            [DEFAULT_LR, 1e-2], 8, True
    if set(args.seeds) & set(args.tune_seeds):
        parser.error("--tune-seeds must not overlap --seeds: tuning on the compared seeds is not fair")
    torch.set_num_threads(1)
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory() as tmp:
        best_lr, tried = tune(args.lrs, args.tune_seeds, args.rounds, args.target, Path(tmp))
        for seed in args.seeds:
            for label, algo, lr in ((PPO, "ppo", DEFAULT_LR), (REFERENCE, "reinforce", best_lr)):
                outcome = run_one(label, algo, lr, seed, args.rounds, args.target, Path(tmp), heldout=True)
                outcomes.append(outcome)
                print(f"{label:<40} seed {seed}: stopped at {outcome.stopped_round}, "
                      f"{outcome.env_steps:,} env steps, {outcome.seconds:.1f} s, "
                      f"held-out {outcome.heldout_return:.1f}", flush=True)
    text = render(args, best_lr, tried, outcomes, load_average())
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
