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
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model, load_average

from fedtwin import steps
from fedtwin.config import TrainConfig, load_config
from fedtwin.run.round import train_round
from fedtwin.store import LocalStore

RESULTS = Path(__file__).parent / "results" / "time_to_solve.md"
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds compared")
    parser.add_argument("--tune-seeds", type=int, nargs="+", default=[100, 101],
                        help="seeds the reference's learning rate is tuned on (kept apart from --seeds)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, DEFAULT_LR, 5e-3, 1e-2, 2e-2, 4e-2],
                        help="learning rates tried for the reference")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--target", type=float, default=475.0, help="validation return that stops a run")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 8 rounds, 2 learning rates (not written)")
    parser.add_argument("--no-write", action="store_true", help="do not update results/time_to_solve.md")
    args = parser.parse_args()
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
