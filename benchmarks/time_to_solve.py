"""Time and env steps to solve the held-out twins: fedtwin (PPO + FedAvg) vs the reference systems
(REINFORCE with a 4-32-16-2 network + FedAvg), same fleet, same held-out twins, same round structure
(twins per round, env steps per twin per round), in one command.

Each round goes through the real step functions (init, train, aggregate) on a local store; after each
round the new global model is evaluated on the held-out twins (that evaluation is not timed). A
configuration "solves" when the held-out mean return reaches --solve (475 of 500).

    python benchmarks/time_to_solve.py                # 3 seeds, up to 20 rounds
    python benchmarks/time_to_solve.py --quick        # 1 seed, up to 8 rounds
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
from machine import cpu_model

from fedtwin import steps
from fedtwin.config import load_config
from fedtwin.evaluate import evaluate_policy
from fedtwin.seeding import derive_seed
from fedtwin.store import LocalStore

RESULTS = Path(__file__).parent / "results" / "time_to_solve.md"


@dataclass
class Outcome:
    label: str
    seed: int
    solved_round: int | None
    env_steps: int
    seconds: float
    best_return: float
    curve: list[float]


def run_one(label: str, algo: str, seed: int, rounds: int, solve: float, root: Path) -> Outcome:
    config = load_config(overrides={
        "run_id": f"{algo}-{seed}", "store": str(root), "seed": seed,
        "train": {"algo": algo},
        "federation": {"rounds": rounds, "target_return": None},
        "execution": {"workers": 1},
    }, environ={})
    store = LocalStore(root)
    init = steps.init(store, config)
    ctx = steps.RunContext.load(store, init.run_id)
    env_steps, seconds, curve = 0, 0.0, []
    solved = None
    for round_index in range(rounds):
        started = time.perf_counter()
        steps.train(store, init.run_id, round_index, init.twin_ids, engine="fleet")
        summary = steps.aggregate(store, init.run_id, round_index)
        seconds += time.perf_counter() - started
        env_steps += summary["num_samples"]
        params, _ = ctx.global_model(round_index + 1)
        heldout = evaluate_policy(params, ctx.spec, ctx.fleet.heldout, config.federation.heldout_episodes,
                                  derive_seed(seed, "heldout"))
        curve.append(heldout.mean_return)
        if heldout.mean_return >= solve:
            solved = round_index + 1
            break
    return Outcome(label, seed, solved, env_steps, seconds, max(curve), curve)


def machine() -> str:
    return (f"{cpu_model()}, {torch.get_num_threads()} torch thread(s), Python {platform.python_version()}, "
            f"torch {torch.__version__}, numpy {np.__version__}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--solve", type=float, default=475.0)
    parser.add_argument("--quick", action="store_true", help="1 seed, 8 rounds")
    parser.add_argument("--no-write", action="store_true", help="do not update results/time_to_solve.md")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rounds = args.seeds[:1], 8
    torch.set_num_threads(1)
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for label, algo in (("fedtwin PPO + FedAvg", "ppo"), ("reference REINFORCE 4-32-16-2 + FedAvg",
                                                                   "reinforce")):
                outcome = run_one(label, algo, seed, args.rounds, args.solve, Path(tmp))
                outcomes.append(outcome)
                print(f"{label:<40} seed {seed}: solved at round {outcome.solved_round}, "
                      f"{outcome.env_steps:,} env steps, {outcome.seconds:.1f} s, "
                      f"best {outcome.best_return:.1f}", flush=True)

    lines = [
        "# Time to solve the held-out twins",
        "",
        f"Command: `python benchmarks/time_to_solve.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d}; machine: {machine()}",
        "",
        f"8 training twins (±15 % physics), 8 held-out twins, FedAvg, up to {args.rounds} rounds; solved = "
        f"held-out mean greedy return ≥ {args.solve:g}. Training time only (held-out evaluation untimed).",
        "",
        "| configuration | seed | solved at round | env steps | wall s | best held-out return |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(f"| {o.label} | {o.seed} | {o.solved_round or 'not solved'} | {o.env_steps:,} | "
                     f"{o.seconds:.1f} | {o.best_return:.1f} |")
    ppo = [o for o in outcomes if o.label.startswith("fedtwin")]
    ref = [o for o in outcomes if o.label.startswith("reference")]
    summary = []
    for name, group in (("fedtwin", ppo), ("reference", ref)):
        solved = [o for o in group if o.solved_round]
        summary.append((name, len(solved), len(group), statistics.median(o.env_steps for o in group),
                        statistics.median(o.seconds for o in group)))
    lines += ["", "| | solved | median env steps | median wall s |", "|---|---|---|---|"]
    for name, n_solved, n, steps_med, sec_med in summary:
        lines.append(f"| {name} | {n_solved}/{n} | {steps_med:,.0f} | {sec_med:.1f} |")
    ratio_steps = summary[1][3] / summary[0][3]
    ratio_time = summary[1][4] / summary[0][4]
    lines += ["", f"Ratio reference / fedtwin (median, unsolved runs count their whole budget): "
              f"env steps {ratio_steps:.2f}x, wall time {ratio_time:.2f}x.", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
