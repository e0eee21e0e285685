"""Environment throughput: fedtwin's TwinCartPoleVectorEnv against gymnasium's CartPole.

Every contender steps the same pre-drawn random 0/1 action arrays for the same number of steps,
after a warm-up; each measurement is repeated (contenders interleaved, so a noisy neighbour
hurts all of them alike) and the best repeat counts. Steps/s counts sub-environment steps.

    python benchmarks/env_throughput.py            # N = 1, 64, 4096, 16384; writes the markdown
    python benchmarks/env_throughput.py --quick    # smaller, for a smoke check
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

import gymnasium
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

from fedtwin.envs import TwinCartPoleVectorEnv
from fedtwin.twins import TwinSpec, generate_twins

RESULTS = Path(__file__).parent / "results" / "env_throughput.md"
ACTION_CYCLE = 64  # distinct action arrays, reused in turn


@dataclass
class Row:
    n: int
    contender: str
    steps_per_s: float
    baseline: float | None = None

    @property
    def ratio(self) -> str:
        return f"{self.steps_per_s / self.baseline:.2f}x" if self.baseline else ""


def time_vector(env: gymnasium.vector.VectorEnv, actions: np.ndarray, steps: int, warmup: int) -> float:
    """Seconds for `steps` vector steps (after `warmup` untimed ones)."""
    env.reset(seed=0)
    cycle = len(actions)
    for t in range(warmup):
        env.step(actions[t % cycle])
    start = time.perf_counter()
    for t in range(steps):
        env.step(actions[t % cycle])
    return time.perf_counter() - start


def time_single(env: gymnasium.Env, actions: np.ndarray, steps: int, warmup: int) -> float:
    """Seconds for `steps` steps of one env in a Python loop, resetting when an episode ends."""
    flat = [int(a) for a in actions.ravel()[: max(steps, warmup)]]
    env.reset(seed=0)
    for a in flat[:warmup]:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    start = time.perf_counter()
    for a in flat[:steps]:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return time.perf_counter() - start


def best_of(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Best time per contender; contenders alternate within each repeat."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], run())
    return best


def steps_for(n: int, env_steps: int, max_steps: int, min_steps: int = 100) -> int:
    """Vector steps per measurement: about `env_steps` env steps, within [min_steps, max_steps]."""
    return max(min_steps, min(max_steps, env_steps // n))


def bench_size(n: int, args: argparse.Namespace) -> list[Row]:
    rng = np.random.default_rng(n)
    actions = rng.integers(0, 2, size=(ACTION_CYCLE, n))
    steps = steps_for(n, args.env_steps, args.max_steps)
    repeats, warmup = args.repeats, args.warmup
    envs: dict[str, gymnasium.vector.VectorEnv] = {
        "gymnasium CartPoleVectorEnv": CartPoleVectorEnv(num_envs=n),
        "fedtwin, 1 twin (default physics)": TwinCartPoleVectorEnv([TwinSpec(id="default")], envs_per_twin=n),
    }
    if args.fleet and n >= 4:
        envs[f"fedtwin, {n // 4} twins x 4 envs (±15 %)"] = TwinCartPoleVectorEnv(
            generate_twins(n // 4, seed=0), envs_per_twin=4
        )
        envs[f"fedtwin, {n // 4} twins x 4 envs (hard preset)"] = TwinCartPoleVectorEnv(
            generate_twins(n // 4, seed=0, preset="hard"), envs_per_twin=4
        )
    runs = {name: (lambda e=env: time_vector(e, actions, steps, warmup)) for name, env in envs.items()}
    best = best_of(runs, repeats)
    baseline = n * steps / best["gymnasium CartPoleVectorEnv"]
    return [
        Row(n, name, n * steps / seconds, None if name.startswith("gymnasium") else baseline)
        for name, seconds in best.items()
    ]


def bench_single(env_steps: int, repeats: int, warmup: int) -> list[Row]:
    import fedtwin.envs  # noqa: F401  (registers fedtwin/TwinCartPole-v0)

    actions = np.random.default_rng(1).integers(0, 2, size=max(env_steps, warmup))
    envs = {
        "gymnasium CartPole-v1 (gymnasium.make, Python loop)": gymnasium.make("CartPole-v1"),
        "fedtwin/TwinCartPole-v0 (gymnasium.make, Python loop)": gymnasium.make("fedtwin/TwinCartPole-v0"),
    }
    runs = {name: (lambda e=env: time_single(e, actions, env_steps, warmup)) for name, env in envs.items()}
    best = best_of(runs, repeats)
    first = next(iter(best))
    baseline = env_steps / best[first]
    return [Row(1, name, env_steps / s, None if name == first else baseline) for name, s in best.items()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, str]:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return {
        "date (UTC)": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "platform": platform.platform(),
        "CPU": cpu_model(),
        "cores": str(os.cpu_count()),
        "load average (1, 5, 15 min) at start": load,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gymnasium": gymnasium.__version__,
    }


def format_table(rows: list[Row]) -> str:
    lines = [
        "| N (sub-envs) | contender | steps/s | vs gymnasium |",
        "|---:|---|---:|---:|",
    ]
    lines += [f"| {r.n} | {r.contender} | {r.steps_per_s:,.0f} | {r.ratio} |" for r in rows]
    return "\n".join(lines)


def render_markdown(rows: list[Row], info: dict[str, str], args: argparse.Namespace) -> str:
    meta = "\n".join(f"- {k}: {v}" for k, v in info.items())
    return f"""# Environment throughput

Generated by `python benchmarks/env_throughput.py{" --quick" if args.quick else ""}`
(sizes {",".join(map(str, args.sizes))}, about {args.env_steps:,} env steps per measurement,
best of {args.repeats} interleaved repeats after {args.warmup} warm-up steps; the same random
actions for every contender). Steps/s counts sub-environment steps. The "vs gymnasium" column
compares with `CartPoleVectorEnv` at the same N (vector rows) or with `CartPole-v1` (single rows).

{format_table(rows)}

Machine:

{meta}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1, 64, 4096, 16384]
    )
    parser.add_argument("--env-steps", type=int, default=4_000_000, help="env steps per measurement")
    parser.add_argument("--max-steps", type=int, default=5_000, help="cap on vector steps per measurement")
    parser.add_argument("--single-steps", type=int, default=20_000, help="steps of the single-env loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--no-fleet", dest="fleet", action="store_false", help="skip the many-twin rows")
    parser.add_argument("--quick", action="store_true", help="N = 1, 64, 4096 and fewer steps")
    parser.add_argument("--output", type=Path, default=RESULTS, help="markdown file ('-' to skip)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [n for n in args.sizes if n <= 4096] or [1, 64, 4096]
        args.env_steps, args.max_steps, args.single_steps = 400_000, 500, 2_000
        args.repeats, args.warmup = 2, 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info()
    print(format_table([]), flush=True)
    rows = bench_single(args.single_steps, args.repeats, args.warmup)
    print(format_table(rows).split("\n", 2)[2], flush=True)
    for n in args.sizes:
        new = bench_size(n, args)
        print(format_table(new).split("\n", 2)[2], flush=True)
        rows += new
    if str(args.output) != "-":
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(render_markdown(rows, info, args))
        print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
