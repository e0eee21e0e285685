"""Device env throughput: the NumPy fleet env against the torch CartPole backend; rollouts with the policy.

Counts twin env-steps (sub-env steps summed over twins, as `fleet_scale.py` does) per second of wall
time, for fleets of 256..4096 twins x 4 sub-envs with ±15 % physics, on every device given:

- env: `TwinCartPoleVectorEnv` (the fleet engine's env, compiled step when numba is installed)
  against `TorchTwinCartPole` (eager; on CUDA also replayed from a CUDA graph of 32 steps; with
  `--compile` also through `torch.compile`, at the largest size);
- rollout: the fleet engine's `collect_rollout` (NumPy env, policy on the device, a host round-trip
  per step) against `DeviceCollector` (env, policy and buffers on the device; on CUDA also as a
  CUDA graph), both with the default PPO network (64, 64), K twins' parameters stacked.

Ratios, in the same command: env rows against the NumPy fleet env, rollout rows against the fleet
engine's rollout with its policy on the same device. Optionally (`--round-twins`)
one local training round on the device as the fleet engine trains with `execution.env_backend: torch`
(`train_twins`, default TrainConfig).

    python benchmarks/device_env.py            # CPU (and CUDA when present); writes results/device_env.md
    python benchmarks/device_env.py --quick    # seconds; nothing written
    python benchmarks/device_env.py --devices cuda --twins 4096 --compile cuda --min-env-rate 20e6
    python benchmarks/device_env.py --devices cuda --round-twins 16384
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import cpu_model, load_average

from fedtwin.config import TrainConfig
from fedtwin.learn.batched import StackedPolicy
from fedtwin.learn.device_rollout import DeviceCollector
from fedtwin.learn.rollout import collect_rollout
from fedtwin.learn.train import policy_spec, train_twins
from fedtwin.policy.layout import layout_for
from fedtwin.policy.network import PolicyNet, init_params
from fedtwin.sim.cartpole_kernel import kernel_for
from fedtwin.sim.cartpole_torch import TorchTwinCartPole
from fedtwin.sim.envs import TwinCartPoleVectorEnv
from fedtwin.sim.twins import TwinSpec, generate_twins

RESULTS = Path(__file__).parent / "results" / "device_env.md"
GRAPH_STEPS = 32
"""Env steps recorded in one CUDA graph for the env-only rows."""
ACTION_CYCLE = 64


@dataclass
class Row:
    twins: int
    envs: int
    kind: str
    """env | rollout"""
    contender: str
    device: str
    rate: float
    """Twin env-steps per second (wall)."""
    ratio: float | None = None
    """Against the NumPy row of the same kind and size."""
    note: str = ""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, min_seconds: float, max_calls: int) -> float:
    """Seconds per call of `fn`: one warm-up call, then calls until `min_seconds` have passed."""
    fn()
    sync(device)
    start, calls = time.perf_counter(), 0
    while calls < max_calls and (calls == 0 or time.perf_counter() - start < min_seconds):
        fn()
        calls += 1
    sync(device)
    return (time.perf_counter() - start) / calls


def policy(k: int, device: torch.device) -> tuple[StackedPolicy, dict[str, torch.Tensor]]:
    """The fleet engine's default PPO network, K copies of one initial model stacked (as a round starts)."""
    spec = policy_spec(TrainConfig())
    flat = torch.as_tensor(init_params(spec, 0), device=device)
    named = layout_for(spec).to_dict(flat)
    params = {n: v.unsqueeze(0).repeat(k, *([1] * v.dim())) for n, v in named.items()}
    return StackedPolicy(PolicyNet(spec)), params


class Stepper:
    """`chunk` steps of an env (or a compiled step) per call, cycling through pre-drawn actions."""

    def __init__(self, step: Callable[[Any], Any], actions: Any, chunk: int) -> None:
        self.step, self.actions, self.chunk, self.t = step, actions, chunk, 0

    def __call__(self) -> None:
        for _ in range(self.chunk):
            self.step(self.actions[self.t % ACTION_CYCLE])
            self.t += 1


class HostRollout:
    """The fleet engine's rollout: `collect_rollout` over the NumPy env, chained from call to call."""

    def __init__(self, env: TwinCartPoleVectorEnv, k: int, device: torch.device, steps: int) -> None:
        self.env, self.device, self.steps = env, device, steps
        self.net, self.params = policy(k, device)
        self.rngs = [np.random.default_rng(s) for s in range(k)]
        self.obs, _ = env.reset(seed=0)

    def __call__(self) -> None:
        actor = self.net.actor_fn(self.params)
        _, self.obs = collect_rollout(self.env, self.obs, actor, self.rngs, self.steps, self.device)


def bench_numpy(twins: list[TwinSpec], e: int, args: argparse.Namespace) -> list[Row]:
    k, n = len(twins), len(twins) * e
    env = TwinCartPoleVectorEnv(twins, envs_per_twin=e)
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 2, size=(ACTION_CYCLE, n))
    kernel = "compiled step" if kernel_for(n) is not None else "NumPy path"
    seconds = timed(Stepper(env.step, actions, GRAPH_STEPS), torch.device("cpu"), args.seconds, 10_000)
    rows = [Row(k, n, "env", f"NumPy fleet env ({kernel})", "cpu", GRAPH_STEPS * n / seconds)]
    for name in args.devices:
        device = torch.device(name)
        seconds = timed(HostRollout(env, k, device, args.rollout_steps), device, args.seconds, 1000)
        rows.append(Row(k, n, "rollout", "fleet engine rollout (NumPy env, host loop)", name,
                        args.rollout_steps * n / seconds))
    return rows


def bench_torch(twins: list[TwinSpec], e: int, name: str, args: argparse.Namespace) -> list[Row]:
    device = torch.device(name)
    k = len(twins)
    env = TorchTwinCartPole(twins, envs_per_twin=e, device=device)
    n = env.num_envs
    env.reset(seed=0)
    actions = torch.randint(0, 2, (ACTION_CYCLE, n), device=device, generator=None)
    dtype = str(env.dtype).removeprefix("torch.")
    seconds = timed(Stepper(env.step, actions, GRAPH_STEPS), device, args.seconds, 10_000)
    rows = [Row(k, n, "env", "torch env, eager", name, GRAPH_STEPS * n / seconds, note=dtype)]
    if device.type == "cuda":
        rows += graph_rows(env, actions, k, n, dtype, args)
    if name in args.compile and k == args.largest:  # each size compiles anew: the largest only
        rows += compiled_rows(twins, e, device, actions, dtype, args)
    net, params = policy(k, device)
    collector = DeviceCollector(TorchTwinCartPole(twins, envs_per_twin=e, device=device), net,
                                args.rollout_steps)
    collector.reset(seed=0)
    seconds = timed(lambda: collector.collect(params), device, args.seconds, 1000)
    rate = args.rollout_steps * n / seconds
    rows.append(Row(k, n, "rollout", "device rollout, eager", name, rate, note=dtype))
    if device.type == "cuda":
        try:
            collector.capture(params)
            seconds = timed(lambda: collector.collect(params), device, args.seconds, 10_000)
            rows.append(Row(k, n, "rollout", "device rollout, CUDA graph", name,
                            args.rollout_steps * n / seconds, note=dtype))
        except Exception as exc:  # a capture failure is a result to report, not a reason to lose the others
            rows.append(Row(k, n, "rollout", "device rollout, CUDA graph", name, float("nan"),
                            note=f"capture failed: {type(exc).__name__}: {exc}"[:200]))
    return rows


def graph_rows(env: TorchTwinCartPole, actions: torch.Tensor, k: int, n: int, dtype: str,
               args: argparse.Namespace) -> list[Row]:
    """The env's steps replayed from one CUDA graph of GRAPH_STEPS steps (no Python per step)."""
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for i in range(3):
                env.step(actions[i])
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(GRAPH_STEPS):
                env.step(actions[i % ACTION_CYCLE])
        seconds = timed(graph.replay, env.device, args.seconds, 100_000)
        rate = GRAPH_STEPS * n / seconds
        return [Row(k, n, "env", "torch env, CUDA graph", str(env.device), rate, note=dtype)]
    except Exception as exc:
        return [Row(k, n, "env", "torch env, CUDA graph", str(env.device), float("nan"),
                    note=f"capture failed: {type(exc).__name__}: {exc}"[:200])]


def compiled_rows(twins: list[TwinSpec], e: int, device: torch.device, actions: torch.Tensor, dtype: str,
                  args: argparse.Namespace) -> list[Row]:
    """The env's step through torch.compile (fused kernels), and on CUDA with its CUDA graphs too."""
    rows = []
    modes = ["default", "reduce-overhead"] if device.type == "cuda" else ["default"]
    for mode in modes:
        env = TorchTwinCartPole(twins, envs_per_twin=e, device=device)
        env.reset(seed=0)
        contender = f"torch env, torch.compile ({mode})"
        try:
            start = time.perf_counter()
            step = torch.compile(env.step, mode=mode, dynamic=False)
            for i in range(3):
                step(actions[i])
            sync(device)
            compile_s = time.perf_counter() - start
            seconds = timed(Stepper(step, actions, GRAPH_STEPS), device, args.seconds, 10_000)
            rate = GRAPH_STEPS * env.num_envs / seconds
            rows.append(Row(len(twins), env.num_envs, "env", contender, str(device), rate,
                            note=f"{dtype}, compiled in {compile_s:.0f} s"))
        except Exception as exc:
            rows.append(Row(len(twins), env.num_envs, "env", contender, str(device), float("nan"),
                            note=f"compile failed: {type(exc).__name__}: {exc}"[:200]))
    return rows


def with_ratios(rows: list[Row]) -> list[Row]:
    """env rows against the NumPy env; rollout rows against the fleet engine's rollout on the same device."""
    for row in rows:
        base = next((r for r in rows if r.twins == row.twins and r.kind == row.kind
                     and r.contender.startswith(("NumPy", "fleet engine"))
                     and (row.kind == "env" or r.device == row.device)), None)
        row.ratio = row.rate / base.rate if base is not None else None
    return rows


def device_round(k: int, name: str) -> dict[str, float]:
    """One local round of K twins as the fleet engine trains it with `execution.env_backend: torch`:
    `train_twins` (default TrainConfig) on the device, from a fresh initial model."""
    device = torch.device(name)
    cfg = TrainConfig()
    twins = generate_twins(k, seed=0)
    start_params = init_params(policy_spec(cfg), 0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    results = train_twins(start_params, twins, list(range(k)), cfg, device=name, env_backend="torch")
    sync(device)
    seconds = time.perf_counter() - start
    steps = sum(r.num_samples for r in results)
    lengths = [r.metrics["charts/episodic_length"] for r in results if "charts/episodic_length" in r.metrics]
    return {"twins": k, "seconds": seconds, "twin_env_steps_per_s": steps / seconds,
            "mean_episode_length": float(np.mean(lengths)) if lengths else float("nan"),
            "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0}


def machine() -> dict[str, str]:
    info = {"date (UTC)": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"), "CPU": cpu_model(),
            "cores": str(os.cpu_count()), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "torch threads": str(torch.get_num_threads()),
            "numba step": "yes" if kernel_for(1 << 20) is not None else "no", "load average": load_average()}
    if torch.cuda.is_available():
        info["GPU"] = torch.cuda.get_device_name(0)
    return info


def render(rows: list[Row], rounds: list[dict[str, float]], info: dict[str, str], command: str) -> str:
    lines = ["# Device env throughput", "", f"`{command}`", "", "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += ["", "Twin env-steps/s (wall), same command: env rows against the NumPy fleet env, rollout rows "
              "against the fleet engine's rollout (NumPy env, host loop) with the policy on the same device.",
              "",
              "| twins | sub-envs | kind | contender | device | twin env-steps/s | ratio | note |",
              "|---:|---:|---|---|---|---:|---:|---|"]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None and r.ratio == r.ratio else ""
        lines.append(f"| {r.twins} | {r.envs} | {r.kind} | {r.contender} | {r.device} | {r.rate:,.0f} "
                     f"| {ratio} | {r.note} |")
    if rounds:
        cfg = TrainConfig()
        lines += ["", f"One local round on the device, `train_twins(..., env_backend='torch')` (default "
                  f"TrainConfig: {cfg.updates} updates x {cfg.num_steps} steps x {cfg.num_envs} env "
                  "per twin):",
                  "",
                  "| twins | seconds | twin env-steps/s | mean episode length | peak GPU GiB |",
                  "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['twins']} | {r['seconds']:.1f} | {r['twin_env_steps_per_s']:,.0f} "
                  f"| {r['mean_episode_length']:.1f} | {r['peak_gpu_gib']:.2f} |"
                  for r in rounds]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--twins", default="256,1024,4096", help="Fleet sizes (comma-separated).")
    parser.add_argument("--envs-per-twin", type=int, default=4)
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=2.0, help="Minimum timed seconds per measurement.")
    parser.add_argument("--rollout-steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1, as the runner).")
    parser.add_argument("--round-twins", default="", help="Also time one device round at these sizes.")
    parser.add_argument("--min-env-rate", type=float, default=0.0,
                        help="Exit 1 when the best torch env row on CUDA at the largest size is below this.")
    parser.add_argument("--compile", default="", metavar="DEVICES",
                        help="Also time the env step through torch.compile on these devices (largest size).")
    parser.add_argument("--quick", action="store_true", help="256 twins, short timings, nothing written.")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Markdown to write ('-' for none).")
    parser.add_argument("--json", type=Path, help="Also write every row and the machine as JSON here.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.twins, args.seconds, args.out = "256", 0.3, Path("-")
    args.devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    args.compile = [d.strip() for d in args.compile.split(",") if d.strip()]
    if any(d.startswith("cuda") for d in args.devices) and not torch.cuda.is_available():
        parser.error("--devices names cuda but torch.cuda.is_available() is False; use --devices cpu")
    rows: list[Row] = []
    sizes = [int(x) for x in args.twins.split(",") if x.strip()]
    args.largest = max(sizes, default=0)
    for k in sizes:
        twins = generate_twins(k, seed=0)
        rows += bench_numpy(twins, args.envs_per_twin, args)
        for name in args.devices:
            rows += bench_torch(twins, args.envs_per_twin, name, args)
    rows = with_ratios(rows)
    rounds = [device_round(int(k), args.devices[-1]) for k in args.round_twins.split(",") if k.strip()]
    command = "python benchmarks/device_env.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = render(rows, rounds, machine(), command.strip())
    print(text)
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "rounds": rounds,
                                         "machine": machine()}, indent=1))
    if args.min_env_rate and rows:
        largest = max(r.twins for r in rows)
        best = max((r.rate for r in rows if r.kind == "env" and r.device.startswith("cuda")
                    and r.twins == largest and r.rate == r.rate), default=0.0)
        if best < args.min_env_rate:
            print(f"FAIL: best CUDA env rate at {largest} twins is {best:,.0f} twin env-steps/s, "
                  f"below --min-env-rate {args.min_env_rate:,.0f}")
            return 1
        print(f"OK: {best:,.0f} twin env-steps/s at {largest} twins (>= {args.min_env_rate:,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
