"""Poisoned twins: held-out return of FedAvg vs robust strategies when part of the fleet attacks.

Every cell is a whole federated run through the product's step functions (`steps.init`, then per
round `steps.train` for all twins in one batched call and `steps.aggregate`, then
`steps.evaluate` on the held-out twins). The attack lives only here: after each round's training,
the chosen malicious twins overwrite their own update with a poisoned one and a matching record
(weights sha256 and all), as a compromised device holding its own credentials would. Nothing in
`fedtwin/` knows about attacks.

Attacks, with u a twin's honest trained model and g the round's global model:
  sign_flip  g - k (u - g)        (k = --flip-scale, default 4: the reverse direction, boosted)
  scaled     g + s (u - g)        (s = --scale, default 20: model replacement by boosting)
  noise      g + N(0, sigma^2)    (sigma = --noise-std, default 0.5 per coordinate)
  nan        all NaN              (a broken device)

The malicious twins are the same every round (drawn once from the seed). Robust strategies are
configured for the fraction p they face, as a defender sizing them for the threat would:
trimmed mean cuts beta = p from each end, Krum tolerates f = p*n twins (and so needs every round
to keep 2f+3 valid updates: min_twins = 2f+3). Strategies run without the aggregator's norm bound
(`federation.norm_bound_factor: null`) so that the table measures the rule itself; the column
"fedavg+bound" is FedAvg with the product default bound (10 x the round's median update norm).

    python benchmarks/robustness.py            # full table (10 twins, 8 rounds): ~1 h on 2 busy cores
    python benchmarks/robustness.py --quick    # smoke check: 2 rounds, 30 % only
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import cpu_model, load_average

from fedtwin.config import build_config
from fedtwin.core.errors import QuorumError
from fedtwin.federation.updates import UpdateRecord, write_update
from fedtwin.policy.layout import params_from_bytes, params_to_bytes
from fedtwin.run import steps
from fedtwin.run.round import train_round
from fedtwin.store import LocalStore, RunLayout

RESULTS = Path(__file__).parent / "results" / "robustness.md"
ATTACKS = ("sign_flip", "scaled", "noise", "nan")
STRATEGIES = ("fedavg", "fedavg+bound", "median", "trimmed_mean", "krum", "multikrum")
ROBUST = ("median", "trimmed_mean", "krum", "multikrum")


# ----------------------------------------------------------------------------------------- attack
def poison(attack: str, update: np.ndarray, global_params: np.ndarray, rng: np.random.Generator,
           args: argparse.Namespace) -> np.ndarray:
    """The poisoned model a malicious twin sends instead of its honest `update`."""
    delta = update.astype(np.float64) - global_params
    if attack == "sign_flip":
        out = global_params - args.flip_scale * delta
    elif attack == "scaled":
        out = global_params + args.scale * delta
    elif attack == "noise":
        out = global_params + rng.normal(0.0, args.noise_std, size=update.shape)
    elif attack == "nan":
        out = np.full(update.shape, np.nan)
    else:
        raise ValueError(f"unknown attack {attack!r}")
    return out.astype(np.float32)


def attack_round(store: LocalStore, ctx: steps.RunContext, round_index: int, malicious: list[str],
                 attack: str, rng: np.random.Generator, args: argparse.Namespace) -> None:
    """Overwrite each malicious twin's update of this round with a poisoned, correctly signed one."""
    layout = ctx.layout
    global_params, _ = ctx.global_model(round_index)
    for twin_id in malicious:
        record = UpdateRecord.from_json(store.get_json(layout.update_meta(round_index, twin_id)))
        honest, _ = params_from_bytes(store.get_bytes(layout.update_weights(round_index, twin_id)), ctx.spec)
        bad = poison(attack, honest, global_params, rng, args)
        write_update(store, layout, record, params_to_bytes(bad, ctx.spec))  # sets record.sha256


# ------------------------------------------------------------------------------------------- cells
@dataclass
class Cell:
    strategy: str
    attack: str
    fraction: float
    heldout: float | None
    seconds: float
    rejected: int = 0
    note: str = ""


def cell_config(strategy: str, sized_for: float, args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    """The run's config; robust strategies sized for a poisoned fraction `sized_for`."""
    n = args.twins
    bad = round(sized_for * n)
    federation: dict[str, Any] = {
        "rounds": args.rounds, "target_return": None, "eval_episodes": 1,
        "heldout_episodes": args.heldout_episodes, "norm_bound_factor": None, "min_twins": 0.5,
    }
    if strategy == "fedavg+bound":
        federation.update(strategy="fedavg", norm_bound_factor=10.0)
    else:
        federation["strategy"] = strategy
    if strategy == "trimmed_mean":
        federation["trim_beta"] = max(sized_for, 1.0 / n)
    if strategy in ("krum", "multikrum"):
        f = max(bad, 1)
        federation.update(krum_f=f, min_twins=2 * f + 3)
    return {
        "run_id": run_id, "seed": args.seed, "store": "unused",
        "fleet": {"count": n, "seed": args.seed, "validation_count": 2, "heldout_count": args.heldout},
        "train": {"num_steps": args.num_steps},
        "federation": federation,
        "execution": {"engine": "fleet", "workers": 1},
    }


def run_cell(root: Path, strategy: str, attack: str, fraction: float, args: argparse.Namespace) -> Cell:
    """One federated run with `fraction` of the twins poisoned by `attack` ("none": clean)."""
    run_id = f"{strategy}-{attack}-{round(fraction * 100)}".replace("_", "-").replace("+", "-")
    sized_for = fraction if attack != "none" else 0.1  # the clean run: robust rules sized for 10 %
    config = build_config(cell_config(strategy, sized_for, args, run_id), run_id)
    store = LocalStore(root)
    started = time.perf_counter()
    init = steps.init(store, config)
    ctx = steps.RunContext.load(store, run_id)
    rng = np.random.default_rng(args.seed)
    malicious = sorted(rng.choice(init.twin_ids, size=round(fraction * args.twins), replace=False).tolist())
    rejected = 0
    for round_index in range(args.rounds):
        train_round(store, run_id, round_index, init.twin_ids, "fleet", 1)
        if malicious:
            attack_round(store, ctx, round_index, malicious, attack, rng, args)
        try:
            summary = steps.aggregate(store, run_id, round_index)
        except QuorumError:
            return Cell(strategy, attack, fraction, None, time.perf_counter() - started, rejected,
                        f"quorum lost in round {round_index}")
        rejected += len(summary["rejected"])
    heldout = steps.evaluate(store, run_id)["heldout"]["mean_return"]
    shutil.rmtree(root / RunLayout(run_id).prefix, ignore_errors=True)
    return Cell(strategy, attack, fraction, float(heldout), time.perf_counter() - started, rejected)


# ----------------------------------------------------------------------------------------- report
def machine_info() -> dict[str, str]:
    return {
        "cpu": f"{cpu_model()} ({os.cpu_count()} logical cores)",
        "load average at start": load_average(" ", 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def fmt(cell: Cell | None) -> str:
    if cell is None:
        return ""
    if cell.heldout is None:
        return f"— ({cell.note})"
    text = f"{cell.heldout:.1f}"
    return f"{text} ({cell.rejected} rej.)" if cell.rejected else text


def render(cells: list[Cell], info: dict[str, str], args: argparse.Namespace, seconds: float) -> str:
    strategies = [s for s in STRATEGIES if any(c.strategy == s for c in cells)]
    by_key = {(c.strategy, c.attack, c.fraction): c for c in cells}
    header = "| attack | poisoned | " + " | ".join(strategies) + " |"
    lines = [header, "|" + "---|" * (len(strategies) + 2)]
    lines.append("| none (clean) | 0 % | " + " | ".join(fmt(by_key.get((s, "none", 0.0))) for s in strategies)
                 + " |")
    for attack in args.attacks:
        for fraction in args.fractions:
            row = [fmt(by_key.get((s, attack, fraction))) for s in strategies]
            lines.append(f"| {attack} | {fraction:.0%} | " + " | ".join(row) + " |")
    table = "\n".join(lines)

    clean = by_key.get(("fedavg", "none", 0.0))
    verdict = []
    worst = max(args.fractions)
    if clean and clean.heldout and "sign_flip" in args.attacks:
        for s in ROBUST:
            c = by_key.get((s, "sign_flip", worst))
            if c is None or c.heldout is None:
                continue
            ok = c.heldout >= 0.9 * clean.heldout
            verdict.append(f"- {s}: {c.heldout:.1f} vs clean FedAvg {clean.heldout:.1f} "
                           f"({c.heldout / clean.heldout:.0%}) — {'meets' if ok else 'misses'} the target")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    machine = "\n".join(f"- {k}: {v}" for k, v in info.items())
    return f"""# Robustness: poisoned twins

Held-out return (mean over {args.heldout} held-out twins x {args.heldout_episodes} greedy episodes,
max 500) of the final global model after {args.rounds} rounds with {args.twins} twins, when a fraction
of the fleet sends poisoned updates every round. "n rej." counts updates the aggregation step
rejected over the run (validation: non-finite, norm bound, ...). Seed {args.seed}, one run per cell.

Attacks (u: honest trained model, g: global model): sign_flip g - {args.flip_scale:g}(u - g);
scaled g + {args.scale:g}(u - g); noise g + N(0, {args.noise_std:g}^2); nan: all NaN. Robust
strategies are sized for the fraction p they face: trimmed_mean beta = p, krum/multikrum f = p*n
with min_twins = 2f+3 (clean row: p = 10 %). Columns other than fedavg+bound run without the norm
bound (`norm_bound_factor: null`); fedavg+bound is FedAvg with the default bound (10 x median norm).

{table}

Target: with {worst:.0%} sign-flipped twins a robust strategy keeps held-out return within 10 % of
the clean run (clean FedAvg):

{chr(10).join(verdict) or "- (not measured in this run)"}

Command: `{command}`

Wall time: {seconds / 60:.1f} min for {len(cells)} runs.

Machine:
{machine}
"""


# ------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds, 30 %% only, shorter rollouts")
    parser.add_argument("--twins", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=128, help="train.num_steps per local update")
    parser.add_argument("--heldout", type=int, default=8, help="held-out twins")
    parser.add_argument("--heldout-episodes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--attacks", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--flip-scale", type=float, default=4.0)
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--noise-std", type=float, default=0.5)
    parser.add_argument("--store", type=Path, default=None, help="store directory (default: a temp dir)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.fractions, args.num_steps, args.heldout_episodes = 2, [0.3], 64, 2
        if args.output == RESULTS:
            args.output = Path(tempfile.gettempdir()) / "robustness-quick.md"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    info = machine_info()
    root = args.store or Path(tempfile.mkdtemp(prefix="fedtwin-robustness-"))
    jobs = [(s, "none", 0.0) for s in args.strategies]
    jobs += [(s, a, f) for a in args.attacks for f in args.fractions for s in args.strategies]
    cells: list[Cell] = []
    started = time.perf_counter()
    try:
        for strategy, attack, fraction in jobs:
            cell = run_cell(root, strategy, attack, fraction, args)
            cells.append(cell)
            print(f"{strategy:>13} {attack:>9} {fraction:4.0%}  heldout={fmt(cell):<24} "
                  f"{cell.seconds:6.1f}s", flush=True)
    finally:
        if args.store is None:
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(cells, info, args, seconds))
    print(f"wrote {args.output} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
