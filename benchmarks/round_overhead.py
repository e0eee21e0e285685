"""Round overhead: one federated round with negligible local training, Flower vs fedtwin, in one command.

What a round costs the framework itself (issue 20, item 1), measured one right after the other on the
same machine:

- Flower 1.42's simulation (Ray), legacy API (`start_simulation`, NumPyClient, FedAvg) and current
  message API (`run_simulation`, ClientApp/ServerApp, the message FedAvg), at 10, 100 and 1000 clients:
  each client returns the model it got (fedtwin's policy shapes, 9,155 floats), one round, no evaluation.
  "call" is the whole simulation call (Ray started inside it), "round" the strategy's own round, from
  configuring the fit to the end of its aggregation.
- fedtwin's round in one process, at the same sizes: `steps.train` of all twins with the fleet engine
  (1 env, 8 steps, 1 update, 1 epoch per twin) then `steps.aggregate` (validation included: 1 twin,
  1 episode), in a process that has already played a warm-up round.
- fedtwin's Argo steps as processes: `step train` of 1 twin, `step train` of a 1000-twin shard and
  `step aggregate` of 1000 updates, each a fresh `python -m fedtwin` process (imports included); then
  `python -X importtime` of `step train` (1 twin) and `step aggregate`: import time by package.

fedtwin is driven through its CLI and its step functions only (`fedtwin.run.steps` or, after the package
restructuring, `fedtwin.run.steps`), so the script survives module moves.

Flower is the optional extra `bench` (`pip install -e '.[bench]'`). It pins protobuf < 7, which would
downgrade the dev venv's, so by default the script runs Flower from a venv of its own:

    python3 -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install 'flwr[simulation]==1.42.0'
    python benchmarks/round_overhead.py                         # Flower from /tmp/flwr-venv
    python benchmarks/round_overhead.py --flower-python PATH    # another interpreter with flwr
    python benchmarks/round_overhead.py --sizes 10 100 --no-flower

Results: printed and written to results/round_overhead.md.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "round_overhead.md"
DEFAULT_FLOWER_PYTHON = "/tmp/flwr-venv/bin/python"
SHAPES: list[tuple[int, ...]] = [(64, 4), (64,), (64, 64), (64,), (2, 64), (2,),
                                 (64, 4), (64,), (64, 64), (64,), (1, 64), (1,)]
"""fedtwin's default PPO policy (actor 4-64-64-2, critic 4-64-64-1): 9,155 floats."""
NEGLIGIBLE: dict[str, Any] = {
    "seed": 0,
    "fleet": {"validation_count": 1, "heldout_count": 1},
    "train": {"num_envs": 1, "num_steps": 8, "updates": 1, "epochs": 1, "minibatches": 1},
    "federation": {"rounds": 1, "target_return": None, "eval_episodes": 1, "heldout_episodes": 1},
    "execution": {"engine": "fleet", "workers": 1},
}
"""Local training that costs next to nothing: what remains of a round is the framework's."""


# ---------------------------------------------------------------------------------------- Flower
def flower_worker(api: str, clients: int) -> None:
    """Runs under the Flower interpreter: one round, prints one JSON line with the timings."""
    import logging

    import numpy as np

    marks: dict[str, float] = {}
    initial = [np.zeros(shape, dtype=np.float32) for shape in SHAPES]
    cpus = os.cpu_count() or 1
    logging.getLogger("flwr").setLevel(logging.WARNING)
    started = time.perf_counter()
    if api == "legacy":
        from flwr.client import NumPyClient
        from flwr.common import ndarrays_to_parameters
        from flwr.server import ServerConfig
        from flwr.server.strategy import FedAvg
        from flwr.simulation import start_simulation

        class EchoClient(NumPyClient):
            def fit(self, parameters: Any, config: Any) -> Any:
                return parameters, 8, {}

        class TimedFedAvg(FedAvg):
            def configure_fit(self, *args: Any, **kwargs: Any) -> Any:
                marks["round_start"] = time.perf_counter()
                return super().configure_fit(*args, **kwargs)

            def aggregate_fit(self, *args: Any, **kwargs: Any) -> Any:
                result = super().aggregate_fit(*args, **kwargs)
                marks["round_end"] = time.perf_counter()
                return result

        strategy = TimedFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=clients,
                               min_evaluate_clients=0, min_available_clients=clients,
                               initial_parameters=ndarrays_to_parameters(initial))
        start_simulation(client_fn=lambda context: EchoClient().to_client(), num_clients=clients,
                         config=ServerConfig(num_rounds=1), strategy=strategy,
                         client_resources={"num_cpus": 1, "num_gpus": 0.0},
                         ray_init_args={"num_cpus": cpus, "include_dashboard": False,
                                        "ignore_reinit_error": True, "logging_level": logging.ERROR})
    else:
        from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
        from flwr.clientapp import ClientApp
        from flwr.serverapp import Grid, ServerApp
        from flwr.serverapp.strategy import FedAvg as MessageFedAvg
        from flwr.simulation import run_simulation

        client = ClientApp()

        @client.train()
        def train(message: Message, context: Context) -> Message:
            content = RecordDict({"arrays": message.content["arrays"],
                                  "metrics": MetricRecord({"num-examples": 8})})
            return Message(content, reply_to=message)

        class TimedMessageFedAvg(MessageFedAvg):
            def configure_train(self, *args: Any, **kwargs: Any) -> Any:
                marks["round_start"] = time.perf_counter()
                return super().configure_train(*args, **kwargs)

            def aggregate_train(self, *args: Any, **kwargs: Any) -> Any:
                result = super().aggregate_train(*args, **kwargs)
                marks["round_end"] = time.perf_counter()
                return result

        server = ServerApp()

        @server.main()
        def main(grid: Grid, context: Context) -> None:
            strategy = TimedMessageFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                                          min_evaluate_nodes=0, min_available_nodes=clients)
            strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=1)

        run_simulation(server_app=server, client_app=client, num_supernodes=clients,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": cpus, "logging_level": logging.ERROR}})
    total = time.perf_counter() - started
    import flwr

    rounds = marks.get("round_end", float("nan")) - marks.get("round_start", float("nan"))
    print(json.dumps({"call": total, "round": rounds, "version": flwr.__version__}), flush=True)


def run_flower(python: str, api: str, clients: int, timeout: float) -> dict[str, Any]:
    cmd = [python, str(Path(__file__).resolve()), "--flower-worker", api, str(clients)]
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                              env={**os.environ, "RAY_DEDUP_LOGS": "0", "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    process = time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {done.returncode}: {' | '.join(tail)}"}
    return {**json.loads(lines[-1]), "process": process}


# --------------------------------------------------------------------------------------- fedtwin
def _fedtwin_api() -> tuple[Any, Callable[[str], Any], Callable[..., Any]]:
    """(steps module, store opener, config loader), wherever the restructuring has put them."""
    steps = None
    for name in ("fedtwin.run.steps", "fedtwin.run.steps"):
        try:
            steps = importlib.import_module(name)
            break
        except ImportError:
            continue
    if steps is None:
        raise SystemExit("cannot import fedtwin's step functions (fedtwin.run.steps or fedtwin.run.steps)")
    from fedtwin.config import load_config
    from fedtwin.store import open_store

    return steps, lambda root: open_store(root), load_config


def _config(twins: int, **extra: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(NEGLIGIBLE))
    data["fleet"]["count"] = twins
    data.update(extra)
    return data


def fedtwin_in_process(sizes: list[int], root: Path, repeats: int = 3) -> dict[int, dict[str, float]]:
    """Rounds at each size in this process (after a warm-up round), fleet engine, all twins in one batch;
    per size the round of median wall time of `repeats`."""
    import torch

    torch.set_num_threads(1)
    steps, open_store, load_config = _fedtwin_api()
    store = open_store(str(root / "inproc"))
    runs = [("warm-up", min(sizes))] + [(f"inproc-{n}-{r}", n) for n in sizes for r in range(repeats)]
    timings: dict[int, list[dict[str, float]]] = defaultdict(list)
    for run_id, twins in runs:
        config = load_config(overrides={**_config(twins), "run_id": run_id, "store": str(root / "inproc")},
                             environ={})
        init = steps.init(store, config)
        cpu, started = time.process_time(), time.perf_counter()
        steps.train(store, run_id, 0, init.twin_ids, "cpu", "fleet")
        trained = time.perf_counter()
        steps.aggregate(store, run_id, 0)
        done = time.perf_counter()
        if run_id != "warm-up":  # the warm-up pays the imports and first-call costs
            timings[twins].append({"train": trained - started, "aggregate": done - trained,
                                   "round": done - started, "cpu": time.process_time() - cpu})
    return {n: sorted(rounds, key=lambda r: r["round"])[len(rounds) // 2] for n, rounds in timings.items()}


PHASES: list[tuple[str, str, str]] = [
    ("fedtwin.run.train_step", "train_twins", "train: rollouts and PPO of every twin"),
    ("fedtwin.run.train_step", "params_to_bytes_many", "train: the twins' model files"),
    ("fedtwin.run.train_step", "write_updates", "train: write the updates (2 objects per twin)"),
    ("fedtwin.run.aggregate", "load_and_validate", "aggregate: read and check the updates"),
    ("fedtwin.federation.updates", "parse_updates", "aggregate: of which parsing the model files"),
    ("fedtwin.federation.updates", "split_norm_outliers", "aggregate: of which the norm bound"),
    ("fedtwin.run.aggregate", "combine", "aggregate: the strategy (FedAvg)"),
    ("fedtwin.run.aggregate", "evaluate_policy", "aggregate: the validation episode"),
]
"""Functions timed by `round_phases`: (module, name, label); a missing one is left out."""


def round_phases(root: Path, twins: int, repeats: int = 3) -> list[dict[str, float]]:
    """Where an in-process round of `twins` goes: wall seconds per phase (`PHASES`), per repeat."""
    import functools

    import torch

    torch.set_num_threads(1)
    steps, open_store, load_config = _fedtwin_api()
    spent: dict[str, float] = defaultdict(float)
    patched: list[tuple[Any, str, Any]] = []
    for module_name, name, label in PHASES:
        module = importlib.import_module(module_name)
        original = getattr(module, name, None)
        if original is None:
            continue

        def timed(*args: Any, _original: Any = original, _label: str = label, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[_label] += time.perf_counter() - started

        setattr(module, name, functools.wraps(original)(timed))
        patched.append((module, name, original))
    store = open_store(str(root / "phases"))
    rounds = []
    try:
        for i, n in enumerate([min(10, twins)] + [twins] * repeats):
            overrides = {**_config(n), "run_id": f"phases-{i}", "store": str(root / "phases")}
            config = load_config(overrides=overrides, environ={})
            init = steps.init(store, config)
            spent.clear()
            started = time.perf_counter()
            steps.train(store, f"phases-{i}", 0, init.twin_ids, "cpu", "fleet")
            trained = time.perf_counter()
            steps.aggregate(store, f"phases-{i}", 0)
            if i:  # the first is a warm-up
                done = time.perf_counter()
                rounds.append({"train": trained - started, "aggregate": done - trained, **spent})
    finally:
        for module, name, original in patched:
            setattr(module, name, original)
    return rounds


def objects_vs_bundle(root: Path, twins: int, repeats: int = 3) -> list[dict[str, float]]:
    """The same bytes a round of `twins` stores (a model file and a record per twin) written and read as
    2 objects per twin, as fedtwin stores them, and as 2 objects in all (a bundle per shard, not built)."""
    from fedtwin.federation.updates import UpdateRecord, record_bytes
    from fedtwin.policy.layout import PolicySpec, layout_for, params_to_bytes_many
    from fedtwin.store import LocalStore

    spec = PolicySpec("actor_critic", (64, 64))
    matrix = np.random.default_rng(0).standard_normal((twins, layout_for(spec).size)).astype(np.float32)
    records = [UpdateRecord(twin_id=f"twin-{i:03d}", round=0, num_samples=8, sha256="0" * 64,
                            base_sha256="1" * 64, metrics={f"losses/m{j}": 0.5 for j in range(10)},
                            seconds=0.1, engine="fleet") for i in range(twins)]
    store = LocalStore(root / "bundle")
    out = []
    for rep in range(repeats):
        files = params_to_bytes_many(matrix, spec)
        started = time.perf_counter()
        store.put_many([(f"o{rep}/{r.twin_id}.safetensors", f) for r, f in zip(records, files, strict=True)]
                       + [(f"o{rep}/{r.twin_id}.json", record_bytes(r)) for r in records])
        written = time.perf_counter()
        for r in records:
            store.get_checked(f"o{rep}/{r.twin_id}.safetensors")
            store.get_json(f"o{rep}/{r.twin_id}.json")
        read = time.perf_counter()
        store.put_many([(f"b{rep}/shard.safetensors", b"".join(files)),
                        (f"b{rep}/shard.json", json.dumps([r.to_json() for r in records]).encode())])
        bundled = time.perf_counter()
        store.get_checked(f"b{rep}/shard.safetensors")
        store.get_json(f"b{rep}/shard.json")
        out.append({"objects_write": written - started, "objects_read": read - written,
                    "bundle_write": bundled - read, "bundle_read": time.perf_counter() - bundled})
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _process(python_args: list[str]) -> tuple[tuple[float, float], str]:
    """One fresh `python *python_args` process, without this shell's FEDTWIN_/MLFLOW_ settings: (wall, CPU)
    seconds and its stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDTWIN_", "MLFLOW_"))}
    cpu, started = _children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, *python_args], capture_output=True, text=True, env=env,
                          check=False)
    wall = time.perf_counter() - started, _children_cpu() - cpu
    if done.returncode != 0:
        tail = [line for line in done.stderr.splitlines() if not line.startswith("import time:")][-3:]
        raise SystemExit(f"python {' '.join(python_args)} failed ({done.returncode}): {' | '.join(tail)}")
    return wall, done.stderr


def _cli(args: list[str], importtime: bool = False) -> tuple[tuple[float, float], str]:
    """One `python -m fedtwin` process: (wall, CPU) seconds and its stderr."""
    return _process([*(["-X", "importtime"] if importtime else []), "-m", "fedtwin", *args])


def _init(root: Path, run_id: str, twins: int) -> None:
    import yaml

    path = root / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(_config(twins)))
    _cli(["step", "init", "--config", str(path), "--store", str(root / "steps"), "--run-id", run_id])


def _median_process(commands: list[list[str]]) -> tuple[float, float]:
    """The (wall, CPU) of the median-wall one of these `python` argument lists, each a fresh process."""
    timings = sorted(_process(args)[0] for args in commands)
    return timings[len(timings) // 2]


def fedtwin_steps(root: Path, big: int) -> dict[str, Any]:
    """Argo's step commands as fresh processes (a one-twin pod: the median of 3), their import time, and
    for reference a process that only imports torch (and, unlike `step train`, unloads it at exit)."""
    store = ["--store", str(root / "steps")]
    out: dict[str, Any] = {}
    _init(root, "one", 10)
    _init(root, "big", big)
    pods = [["-m", "fedtwin", "step", "train", "--run", "one", "--round", "0", "--twin", twin, *store]
            for twin in ("twin-000", "twin-002", "twin-003")]
    out["train_1"] = _median_process(pods)
    out["import_torch"] = _median_process([["-c", "import torch"]] * 3)
    _, out["importtime_train"] = _cli(["step", "train", "--run", "one", "--round", "0", "--twin", "twin-001",
                                       *store], importtime=True)
    _cli(["step", "train", "--run", "one", "--round", "0", "--twin", "twin-004..twin-009", *store])
    _, out["importtime_aggregate"] = _cli(["step", "aggregate", "--run", "one", "--round", "0", *store],
                                          importtime=True)
    last = f"twin-{big - 1:03d}"
    out["train_big"], _ = _cli(["step", "train", "--run", "big", "--round", "0",
                                "--twin", f"twin-000..{last}", *store])
    out["aggregate_big"], _ = _cli(["step", "aggregate", "--run", "big", "--round", "0", *store])
    return out


IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def import_profile(stderr: str, top: int = 8) -> dict[str, Any]:
    """`-X importtime` output: total, the top-level imports by cumulative time (what the command imported
    itself, at start or lazily on first use, e.g. `torch._dynamo` from Adam's constructor), self time by
    package, and the fedtwin modules' cumulative times (what importing each pulled in first)."""
    by_package: dict[str, float] = defaultdict(float)
    top_level: list[tuple[str, float]] = []
    fedtwin_cumulative: dict[str, float] = {}
    for line in stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if not match:
            continue
        self_us, cumulative_us, depth, name = (int(match.group(1)), int(match.group(2)), len(match.group(3)),
                                               match.group(4))
        by_package[name.split(".")[0]] += self_us / 1e6
        if depth <= 1:
            top_level.append((name, cumulative_us / 1e6))
        if name.startswith("fedtwin"):
            fedtwin_cumulative[name] = max(fedtwin_cumulative.get(name, 0.0), cumulative_us / 1e6)
    return {
        "total": sum(by_package.values()),
        "top_level": sorted(top_level, key=lambda kv: -kv[1])[:top],
        "packages": sorted(by_package.items(), key=lambda kv: -kv[1])[:top],
        "fedtwin": sorted(fedtwin_cumulative.items(), key=lambda kv: -kv[1])[:top],
    }


# ---------------------------------------------------------------------------------------- report
def machine() -> str:
    sys.path.insert(0, str(Path(__file__).parent))
    from machine import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


def render(args: argparse.Namespace, flower: dict[tuple[str, int], dict[str, Any]],
           inproc: dict[int, dict[str, float]], step: dict[str, Any], loads: tuple[str, str],
           phases: list[dict[str, float]] | None = None, bundle: list[dict[str, float]] | None = None) -> str:
    version = next((r.get("version") for r in flower.values() if "version" in r), "not run")
    lines = [
        "# Round overhead: Flower vs fedtwin, one round with negligible local training",
        "",
        f"Command: `python benchmarks/round_overhead.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {machine()}; Flower {version} "
        f"({args.flower_python}); fedtwin's stores in {args.tmp_dir or tempfile.gettempdir()}; load average "
        f"before {loads[0]}, after {loads[1]}",
        "",
        "Seconds. Flower: the whole simulation call (Ray started inside it) and, in brackets, the strategy's "
        "round alone (configure fit -> aggregate fit). fedtwin in one process: `steps.train` of every twin "
        "(fleet engine) + `steps.aggregate` (validation of 1 twin, 1 episode), after a warm-up round; the "
        "median of 3 rounds. "
        "fedtwin's CPU seconds in brackets after its wall time. Ratio: Flower legacy call / fedtwin round.",
        "",
        "| clients | Flower message API | Flower legacy API | fedtwin round (train + aggregate) | "
        "legacy / fedtwin |",
        "|---|---|---|---|---|",
    ]
    for n in args.sizes:
        cells = []
        for api in ("message", "legacy"):
            result = flower.get((api, n))
            if result is None:
                cells.append("not run")
            elif "error" in result:
                cells.append(f"failed: {result['error'][:80]}")
            else:
                cells.append(f"{result['call']:.2f} ({result['round']:.2f})")
        ours = inproc.get(n)
        ours_cell = (f"{ours['round']:.3f} = {ours['train']:.3f} + {ours['aggregate']:.3f} "
                     f"(CPU {ours['cpu']:.3f})" if ours else "-")
        legacy = flower.get(("legacy", n), {})
        ratio = f"{legacy['call'] / ours['round']:.1f}x" if ours and "call" in legacy else "-"
        lines.append(f"| {n} | {cells[0]} | {cells[1]} | {ours_cell} | {ratio} |")
    if step:
        big = max(args.sizes)
        legacy_big = flower.get(("legacy", big), {}).get("call")

        def vs(seconds: float) -> str:
            return f"{legacy_big / seconds:.1f}x" if legacy_big else "-"

        lines += [
            "",
            "fedtwin's Argo steps, each a fresh `python -m fedtwin` process (wall seconds, imports included; "
            f"targets from issue 20; ratio: Flower legacy call at {big} clients / the step):",
            "",
            "| step process | wall s | CPU s | target (wall) | Flower legacy / step |",
            "|---|---|---|---|---|",
            f"| `step train`, 1 twin (median of 3) | {step['train_1'][0]:.2f} | {step['train_1'][1]:.2f} "
            f"| <= 1.5 | {vs(step['train_1'][0])} |",
            f"| reference: `python -c 'import torch'`, which also unloads torch at exit (median of 3) "
            f"| {step['import_torch'][0]:.2f} | "
            f"{step['import_torch'][1]:.2f} | - | - |",
            f"| `step train`, a {big}-twin shard | {step['train_big'][0]:.2f} | "
            f"{step['train_big'][1]:.2f} | - | {vs(step['train_big'][0])} |",
            f"| `step aggregate`, {big} updates | {step['aggregate_big'][0]:.2f} | "
            f"{step['aggregate_big'][1]:.2f} | <= 1.5 | {vs(step['aggregate_big'][0])} |",
        ]
        for label, key in (("step train (1 twin)", "importtime_train"),
                           ("step aggregate", "importtime_aggregate")):
            profile = import_profile(step[key])

            def listed(pairs: list[tuple[str, float]]) -> str:
                return ", ".join(f"{name} {seconds:.2f}" for name, seconds in pairs)

            lines += ["", f"`python -X importtime -m fedtwin {label}`: {profile['total']:.2f} s of imports.",
                      f"- top-level imports, cumulative: {listed(profile['top_level'])}",
                      f"- self time by package: {listed(profile['packages'])}",
                      f"- fedtwin modules, cumulative: {listed(profile['fedtwin'])}"]
    if phases:
        big = max(args.sizes)
        lines += ["", f"Where the in-process {big}-twin round goes (`--phases`: wall seconds of each phase, "
                  f"{len(phases)} rounds after a warm-up):", "",
                  "| phase | " + " | ".join(f"round {i + 1}" for i in range(len(phases))) + " |",
                  "|---|" + "---|" * len(phases)]
        for label in ["train", *(label for _, _, label in PHASES if label.startswith("train:")), "aggregate",
                      *(label for _, _, label in PHASES if label.startswith("aggregate:"))]:
            if all(label in p for p in phases):
                lines.append(f"| {label} | " + " | ".join(f"{p[label]:.3f}" for p in phases) + " |")
    if bundle:
        big = max(args.sizes)
        lines += ["", f"The same bytes as {big} updates stored as 2 objects per twin (fedtwin's layout) and "
                  "as 2 objects in all (one bundle per shard, not built), local store: seconds", "",
                  "| | write | read |", "|---|---|---|"]
        for name, key in (("2 objects per twin", "objects"), ("2 objects (a bundle)", "bundle")):
            lines.append(f"| {name} | " + " / ".join(f"{b[key + '_write']:.3f}" for b in bundle) + " | "
                         + " / ".join(f"{b[key + '_read']:.3f}" for b in bundle) + " |")
    return "\n".join([*lines, ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000], help="clients per round")
    parser.add_argument("--flower-python", default=None,
                        help=f"interpreter with flwr[simulation] (default: this one if it has flwr, else "
                             f"{DEFAULT_FLOWER_PYTHON})")
    parser.add_argument("--no-flower", action="store_true", help="skip Flower")
    parser.add_argument("--no-steps", action="store_true", help="skip the step processes and import times")
    parser.add_argument("--flower-timeout", type=float, default=300.0, help="seconds per Flower run")
    parser.add_argument("--no-write", action="store_true", help="do not write results/round_overhead.md")
    parser.add_argument("--phases", action="store_true",
                        help="also time the in-process round's phases at the largest size, and the same "
                             "bytes stored as one object per file vs one bundle")
    parser.add_argument("--tmp-dir", default=None,
                        help="where fedtwin's stores go (default: the system's temp dir; e.g. /dev/shm to "
                             "take the disk's fsync latency out)")
    parser.add_argument("--flower-worker", nargs=2, metavar=("API", "CLIENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flower_worker:
        flower_worker(args.flower_worker[0], int(args.flower_worker[1]))
        return 0
    if args.flower_python is None:
        has_flwr = importlib.util.find_spec("flwr") is not None
        args.flower_python = sys.executable if has_flwr else DEFAULT_FLOWER_PYTHON
    if not args.no_flower and not (Path(args.flower_python).exists() or shutil.which(args.flower_python)):
        parser.error(f"no Flower interpreter at {args.flower_python}: create it (see this script's "
                     "docstring) or pass --flower-python, or --no-flower")
    before = load()
    flower: dict[tuple[str, int], dict[str, Any]] = {}
    if not args.no_flower:
        for n in args.sizes:
            for api in ("message", "legacy"):
                flower[(api, n)] = result = run_flower(args.flower_python, api, n, args.flower_timeout)
                print(f"Flower {api:<7} {n:>5} clients: {result}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fedtwin-overhead-", dir=args.tmp_dir) as tmp:
        inproc = fedtwin_in_process(args.sizes, Path(tmp))
        for n, result in inproc.items():
            timings = ", ".join(f"{k} {v:.3f} s" for k, v in result.items())
            print(f"fedtwin in-process {n:>5} twins: {timings}", flush=True)
        phases = round_phases(Path(tmp), max(args.sizes)) if args.phases else None
        bundle = objects_vs_bundle(Path(tmp), max(args.sizes)) if args.phases else None
        step = {} if args.no_steps else fedtwin_steps(Path(tmp), max(args.sizes))
        if step:
            print("fedtwin steps (wall, CPU s): " + ", ".join(f"{k} {v[0]:.2f}, {v[1]:.2f}"
                                                            for k, v in step.items()
                                                            if not k.startswith("importtime")), flush=True)
    text = render(args, flower, inproc, step, (before, load()), phases, bundle)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
