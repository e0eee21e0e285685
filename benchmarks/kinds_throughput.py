"""Twin kinds' throughput: fedtwin's vectorized Pendulum and Acrobot twins against gymnasium's envs.

Per kind, every contender steps pre-drawn random actions after a warm-up, timed in chunks;
contenders alternate chunk by chunk (a burst of load on a shared machine hurts all alike) and
steps/s is all sub-env steps over all time, by wall clock and by the thread's CPU time.

Contenders: gymnasium's env stepped in a Python loop (`make`, reset when an episode ends), the same
env class run as a fedtwin kind through gymnasium's SyncVectorEnv (`GymnasiumKind`, 64 twins), and
fedtwin's vectorized kind with N twins of their own physics (±15 %, and the `hard` preset's noise,
damping and delay).

    python benchmarks/kinds_throughput.py            # N = 64, 1024; writes results/kinds_throughput.md
    python benchmarks/kinds_throughput.py --quick    # a smoke check in seconds
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from machine import cpu_model, load_average

from fedtwin.sim.gym_kind import GymnasiumKind
from fedtwin.sim.kind_env import make_vector_env
from fedtwin.sim.kind_registry import get_kind
from fedtwin.sim.kinds import generate_twins

RESULTS = Path(__file__).parent / "results" / "kinds_throughput.md"
GYM = {"pendulum": "Pendulum-v1", "acrobot": "Acrobot-v1"}
Timing = tuple[float, float]


def draw_actions(kind: Any, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(kind.action_space, gymnasium.spaces.Discrete):
        return rng.integers(0, kind.action_space.n, size=shape)
    return rng.uniform(-2.0, 2.0, size=(*shape, 1)).astype(np.float32)


def vector_run(env: Any, actions: np.ndarray, chunk: int, warmup: int) -> Callable[[], Timing]:
    env.reset(seed=0)
    state = {"t": 0}

    def run(steps: int) -> None:
        for t in range(state["t"], state["t"] + steps):
            env.step(actions[t % len(actions)])
        state["t"] += steps

    run(warmup)
    return lambda: timed(lambda: run(chunk))


def single_run(env: gymnasium.Env, actions: np.ndarray, chunk: int, warmup: int) -> Callable[[], Timing]:
    env.reset(seed=0)
    state = {"t": 0}

    def run(steps: int) -> None:
        for t in range(state["t"], state["t"] + steps):
            _, _, terminated, truncated, _ = env.step(actions[t % len(actions)])
            if terminated or truncated:
                env.reset()
        state["t"] += steps

    run(warmup)
    return lambda: timed(lambda: run(chunk))


def timed(fn: Callable[[], None]) -> Timing:
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


def bench_kind(name: str, args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """(contender, steps/s wall, steps/s CPU) rows for one kind; all contenders interleaved."""
    kind = get_kind(name)
    rng = np.random.default_rng(0)
    runs: dict[str, tuple[Callable[[], Timing], int]] = {}
    single_actions = draw_actions(kind, rng, (1000,))
    runs[f"gymnasium {GYM[name]} (make, Python loop)"] = (
        single_run(gymnasium.make(GYM[name]), single_actions, args.single_steps, args.warmup),
        args.single_steps,
    )
    factory = gymnasium.registry[GYM[name]].entry_point
    gkind = get_kind(str(factory))
    assert isinstance(gkind, GymnasiumKind)
    twins = [generate_twins(gkind, 64, seed=0)[k] for k in range(64)]
    chunk = max(2, args.env_steps // (64 * 20))
    runs["GymnasiumKind, 64 twins (SyncVectorEnv)"] = (
        vector_run(make_vector_env(gkind, twins), draw_actions(kind, rng, (64, 64)), chunk, args.warmup),
        64 * chunk,
    )
    for n in args.sizes:
        chunk = max(10, min(args.max_steps, args.env_steps // n))
        for preset in ("default", "hard"):
            env = make_vector_env(kind, generate_twins(kind, n, seed=0, preset=preset))
            label = f"fedtwin {name}, {n} twins ({'±15 %' if preset == 'default' else 'hard preset'})"
            runs[label] = (vector_run(env, draw_actions(kind, rng, (64, n)), chunk, args.warmup), n * chunk)
    total = dict.fromkeys(runs, (0.0, 0.0))
    names = list(runs)
    for r in range(args.chunks):
        for label in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu = runs[label][0]()
            total[label] = (total[label][0] + wall, total[label][1] + cpu)
    return [
        (label, runs[label][1] * args.chunks / w, runs[label][1] * args.chunks / c)
        for label, (w, c) in total.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[64, 1024])
    parser.add_argument("--env-steps", type=int, default=100_000, help="sub-env steps per timed chunk")
    parser.add_argument("--max-steps", type=int, default=400, help="cap on vector steps per timed chunk")
    parser.add_argument("--single-steps", type=int, default=1_000, help="single-env steps per timed chunk")
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="short measurements")
    parser.add_argument("--output", default=str(RESULTS), help="markdown file to write ('-': none)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.quick:
        args.env_steps, args.max_steps, args.single_steps, args.chunks, args.warmup = 20_000, 50, 200, 2, 5
    load_before = load_average()
    lines = []
    for name in GYM:
        rows = bench_kind(name, args)
        base_wall, base_cpu = rows[0][1], rows[0][2]
        for label, wall, cpu in rows:
            lines.append(
                f"| {label} | {wall:,.0f} | {wall / base_wall:.1f}x | {cpu:,.0f} | {cpu / base_cpu:.1f}x |"
            )
    table = "\n".join(
        [
            "| contender | steps/s (wall) | vs gymnasium loop | steps/s (CPU) | vs gymnasium loop |",
            "|---|---:|---:|---:|---:|",
            *lines,
        ]
    )
    print(table)
    if args.output != "-":
        command = " ".join(["python benchmarks/kinds_throughput.py", *argv])
        text = (
            f"# Twin kinds' throughput\n\n`{command}`: sizes {args.sizes}, chunks of about "
            f"{args.env_steps:,} sub-env steps ({args.single_steps:,} for the Python loop), {args.chunks} "
            "chunks per contender, interleaved. Steps/s counts sub-env steps; CPU is the benchmark "
            f"thread's CPU time.\n\n{table}\n\nMachine: {cpu_model()}, Python {platform.python_version()}, "
            f"numpy {np.__version__}, gymnasium {gymnasium.__version__}, "
            f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; load average before {load_before}, "
            f"after {load_average()}.\n"
        )
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
