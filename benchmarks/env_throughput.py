"""Environment throughput: fedtwin's TwinCartPoleVectorEnv against gymnasium's CartPole.

Every contender steps the same pre-drawn random 0/1 action arrays, after a warm-up, timed in
short chunks of equal length; contenders alternate chunk by chunk (a burst of load on a shared
machine then hurts all of them alike) and steps/s is all steps over all time. Steps/s counts
sub-environment steps. Both clocks are recorded: wall time, and the benchmark thread's CPU time,
which leaves out the time the thread waited for a core.

    python benchmarks/env_throughput.py            # N = 1, 64, 4096, 16384; writes the markdown
    python benchmarks/env_throughput.py --quick    # a smoke check in seconds
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv
from machine import cpu_model, load_average

from fedtwin.sim.cartpole_kernel import KERNEL_ENV, compiled_step
from fedtwin.sim.envs import ENV_ID, TwinCartPoleVectorEnv
from fedtwin.sim.twins import TwinSpec, generate_twins

RESULTS = Path(__file__).parent / "results" / "env_throughput.md"
ACTION_CYCLE = 64  # distinct action arrays, used in turn
GYM_VECTOR = "gymnasium CartPoleVectorEnv"
GYM_SINGLE = "gymnasium CartPole-v1 (make, Python loop)"
os.environ.setdefault(KERNEL_ENV, "numba")  # the compiled step at every size, to compare it with NumPy's
step_kernel = compiled_step() if os.environ[KERNEL_ENV] != "numpy" else None
KERNEL = ", compiled kernel" if step_kernel is not None else ", NumPy path (no numba)"
"""How fedtwin's rows step (fedtwin/sim/cartpole_kernel.py); the fleet rows use it too."""

Timing = tuple[float, float]  # (wall seconds, thread CPU seconds)


@dataclass
class Row:
    n: int
    contender: str
    wall: float
    """Steps/s by wall clock."""
    cpu: float
    """Steps/s by thread CPU time."""
    baseline: Row | None = None

    def ratio(self, clock: str) -> str:
        if self.baseline is None:
            return ""
        return f"{getattr(self, clock) / getattr(self.baseline, clock):.2f}x"


def clocks() -> Timing:
    return time.perf_counter(), time.thread_time()


def elapsed(start: Timing) -> Timing:
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


class ChunkedRun:
    """One env stepping the shared actions after a warm-up, timed in chunks of `chunk` steps."""

    def __init__(self, env: Any, actions: Any, chunk: int, warmup: int) -> None:
        self.env, self.actions, self.chunk = env, actions, chunk
        self.t = 0
        env.reset(seed=0)
        self.run(warmup)

    def step(self, action: Any) -> None:
        raise NotImplementedError

    def run(self, steps: int) -> None:
        actions, cycle = self.actions, len(self.actions)
        for t in range(self.t, self.t + steps):
            self.step(actions[t % cycle])
        self.t += steps

    def __call__(self) -> Timing:
        start = clocks()
        self.run(self.chunk)
        return elapsed(start)


class VectorRun(ChunkedRun):
    """A vector env: it resets finished sub-envs itself."""

    def step(self, action: np.ndarray) -> None:
        self.env.step(action)


class SingleRun(ChunkedRun):
    """One env stepped in a Python loop, reset when an episode ends."""

    def step(self, action: int) -> None:
        _, _, terminated, truncated, _ = self.env.step(action)
        if terminated or truncated:
            self.env.reset()


def interleaved(runs: dict[str, Callable[[], Timing]], chunks: int) -> dict[str, Timing]:
    """Total wall and CPU time of `chunks` chunks per contender, contenders alternating chunk by chunk
    (a burst of load on a shared machine then lands on all of them). Totals, not the best chunk:
    costs paid every few hundred steps (refilling pre-drawn random numbers) must count."""
    total = dict.fromkeys(runs, (0.0, 0.0))
    names = list(runs)
    for r in range(chunks):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate who follows whom
            wall, cpu = runs[name]()
            total[name] = (total[name][0] + wall, total[name][1] + cpu)
    return total


def to_rows(n: int, env_steps: int, times: dict[str, Timing], baseline_name: str) -> list[Row]:
    rows = {name: Row(n, name, env_steps / wall, env_steps / cpu) for name, (wall, cpu) in times.items()}
    for name, row in rows.items():
        if name != baseline_name:
            row.baseline = rows[baseline_name]
    return list(rows.values())


def numpy_path(twins: list[TwinSpec], envs_per_twin: int) -> TwinCartPoleVectorEnv:
    """The env without the compiled kernel (as without numba): the NumPy ufunc path."""
    mode, os.environ[KERNEL_ENV] = os.environ[KERNEL_ENV], "numpy"
    try:
        return TwinCartPoleVectorEnv(twins, envs_per_twin=envs_per_twin)
    finally:
        os.environ[KERNEL_ENV] = mode


def bench_size(n: int, args: argparse.Namespace) -> list[Row]:
    actions = np.random.default_rng(n).integers(0, 2, size=(ACTION_CYCLE, n))
    chunk = max(10, min(args.max_steps, args.env_steps // n))
    default = [TwinSpec(id="default")]
    envs: dict[str, gymnasium.vector.VectorEnv] = {
        GYM_VECTOR: CartPoleVectorEnv(num_envs=n),
        f"fedtwin, 1 twin (default physics){KERNEL}": TwinCartPoleVectorEnv(default, envs_per_twin=n),
    }
    if step_kernel is not None:
        envs["fedtwin, 1 twin (default physics), NumPy path"] = numpy_path(default, n)
    if args.fleet and n >= 4:
        envs[f"fedtwin, {n // 4} twins x 4 envs (±15 %)"] = TwinCartPoleVectorEnv(
            generate_twins(n // 4, seed=0), envs_per_twin=4
        )
        envs[f"fedtwin, {n // 4} twins x 4 envs (hard preset)"] = TwinCartPoleVectorEnv(
            generate_twins(n // 4, seed=0, preset="hard"), envs_per_twin=4
        )
    runs = {name: VectorRun(env, actions, chunk, args.warmup) for name, env in envs.items()}
    return to_rows(n, n * chunk * args.chunks, interleaved(runs, args.chunks), GYM_VECTOR)


def bench_single(args: argparse.Namespace) -> list[Row]:
    actions = np.random.default_rng(1).integers(0, 2, size=10_000).tolist()
    envs = {
        GYM_SINGLE: gymnasium.make("CartPole-v1"),
        f"{ENV_ID} (make, Python loop)": gymnasium.make(ENV_ID),
    }
    runs = {name: SingleRun(env, actions, args.single_steps, args.warmup) for name, env in envs.items()}
    return to_rows(1, args.single_steps * args.chunks, interleaved(runs, args.chunks), GYM_SINGLE)


def machine_info() -> dict[str, str]:
    return {
        "date (UTC)": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "platform": platform.platform(),
        "CPU": cpu_model(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gymnasium": gymnasium.__version__,
        "load average (1, 5, 15 min) before": load_average(),
    }


HEADER = (
    "| N | contender | steps/s (wall) | vs gymnasium (wall) | steps/s (CPU) | vs gymnasium (CPU) |\n"
    "|---:|---|---:|---:|---:|---:|"
)


def format_rows(rows: list[Row]) -> str:
    return "\n".join(
        f"| {r.n} | {r.contender} | {r.wall:,.0f} | {r.ratio('wall')} | {r.cpu:,.0f} | {r.ratio('cpu')} |"
        for r in rows
    )


def render_markdown(rows: list[Row], info: dict[str, str], args: argparse.Namespace, argv: list[str]) -> str:
    meta = "\n".join(f"- {k}: {v}" for k, v in info.items())
    command = " ".join(["python benchmarks/env_throughput.py", *argv])
    return f"""# Environment throughput

`{command}`: sizes {",".join(map(str, args.sizes))}; each contender is timed in chunks of about
{args.env_steps:,} env steps (at most {args.max_steps:,} vector steps; {args.single_steps:,} steps for
the single envs), {args.chunks} chunks each, contenders alternating chunk by chunk after
{args.warmup} warm-up steps, all stepping the same random actions; steps/s = all steps / all time.
Steps/s counts sub-environment steps; "vs gymnasium" compares with `CartPoleVectorEnv` at the
same N (vector rows) or with `CartPole-v1` (single-env rows). CPU is the benchmark thread's CPU
time, which leaves out time spent waiting for a core on a shared machine.

{HEADER}
{format_rows(rows)}

Where the speed comes from (independent of this run): with default physics both fedtwin paths must
give exactly gymnasium's floats (tests compare trajectories step by step), so they do the same
arithmetic in the same order and call the same glibc `sin`/`cos` (NumPy's float64 `sin` is
bit-equal to `math.sin`; vectorized trigonometry is not: torch's float64 `sin` differs in 0.3 % of
a million angles in [-0.3, 0.3]). The NumPy path gains from in-place buffers, fewer passes and a
leaner autoreset; at N=4096 it spends ~34 us of a ~140 us step in `sin`/`cos` and ~47 us in ~20
other ufunc passes (numexpr keeps the bits but was slower). The compiled kernel (numba,
`fedtwin/sim/cartpole_kernel.py`, extra `fast`) does the physics, the termination test and the float32
observation in one loop over the sub-envs, with the same expressions (numba does not fuse or
reorder floating-point operations without `fastmath`): tests check that both paths give
bit-identical trajectories. Fleet rows pay for per-env parameter arrays and one random stream per
twin; hard-preset rows also draw 5 Gaussian numbers per env step (sensor and actuator noise),
which gymnasium's CartPole does not simulate.

Machine:

{meta}
- load average (1, 5, 15 min) after: {load_average()}
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1, 64, 4096, 16384]
    )
    parser.add_argument("--env-steps", type=int, default=400_000, help="env steps per timed chunk")
    parser.add_argument("--max-steps", type=int, default=500, help="cap on vector steps per timed chunk")
    parser.add_argument("--single-steps", type=int, default=1_000, help="single-env steps per timed chunk")
    parser.add_argument("--chunks", type=int, default=40, help="timed chunks per contender")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--no-fleet", dest="fleet", action="store_false", help="skip the many-twin rows")
    parser.add_argument("--quick", action="store_true", help="N <= 4096 and short measurements")
    parser.add_argument("--output", default=str(RESULTS), help="markdown file to write ('-': none)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [n for n in args.sizes if n <= 4096]
        args.env_steps, args.max_steps, args.single_steps = 100_000, 200, 500
        args.chunks, args.warmup = 5, 10
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    info = machine_info()
    print(HEADER, flush=True)
    rows = bench_single(args)
    print(format_rows(rows), flush=True)
    for n in args.sizes:
        new = bench_size(n, args)
        print(format_rows(new), flush=True)
        rows += new
    if args.output != "-":
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_markdown(rows, info, args, argv))
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
