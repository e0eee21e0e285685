"""The store and record hot paths, timed with the fedtwin of any checkout, to compare two versions.

Per policy-sized object (PPO 64-64, 37 KB) on a local directory: one `put_bytes` (pending file,
sidecar, commit) and one verified `get_bytes`; per round of 512 twins: `write_updates` and
`load_and_validate` (every record parsed and checked, every update read); and one
`UpdateRecord.from_json`. Run it alternately against two checkouts in one command, e.g. the commit
before a change and after it:

    git archive BASE fedtwin | tar -x -C /tmp/base
    for i in 1 2 3 4 5 6; do for root in /tmp/base .; do python benchmarks/hot_paths.py $root; done; done
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent).resolve()
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedtwin.federation.updates import UpdateRecord, load_and_validate, write_updates  # noqa: E402
from fedtwin.policy.layout import PolicySpec, params_to_bytes  # noqa: E402
from fedtwin.policy.network import init_params  # noqa: E402
from fedtwin.store import LocalStore, RunLayout, sha256_hex  # noqa: E402

TWINS = 512
METRICS = {"charts/episodic_return": 123.0, "charts/episodes": 10.0, "losses/policy_loss": 0.1,
           "losses/value_loss": 0.2}


def objects(store: LocalStore, data: bytes, count: int = 300) -> tuple[float, float]:
    """Milliseconds per put_bytes and per get_bytes."""
    keys = [f"runs/b/rounds/0000/updates/twin-{i:04d}.safetensors" for i in range(count)]
    started = time.perf_counter()
    for key in keys:
        store.put_bytes(key, data)
    wrote = time.perf_counter()
    for _ in range(3):
        for key in keys:
            store.get_bytes(key)
    return 1e3 * (wrote - started) / count, 1e3 * (time.perf_counter() - wrote) / (3 * count)


def round_of_updates(spec: PolicySpec, glob: np.ndarray, weights: list[bytes]) -> tuple[float, float]:
    """Seconds for one round's write_updates and load_and_validate."""
    base = sha256_hex(params_to_bytes(glob, spec))
    ids = [f"twin-{i:04d}" for i in range(len(weights))]
    with tempfile.TemporaryDirectory() as tmp:
        store, layout = LocalStore(tmp), RunLayout("bench")
        updates = [(UpdateRecord(twin_id=t, round=0, num_samples=4096, sha256="", base_sha256=base,
                                 metrics=dict(METRICS), seconds=1.5, engine="fleet"), w)
                   for t, w in zip(ids, weights, strict=True)]
        started = time.perf_counter()
        write_updates(store, layout, updates)
        wrote = time.perf_counter()
        accepted, rejected = load_and_validate(store, layout, 0, set(ids), spec, base, glob, 10.0, 4096)
        assert len(accepted) == len(ids) and not rejected
        return wrote - started, time.perf_counter() - wrote


def main() -> int:
    torch.set_num_threads(1)
    spec = PolicySpec("actor_critic", (64, 64))
    glob = init_params(spec, 0)
    rng = np.random.default_rng(0)
    weights = [params_to_bytes(glob + rng.normal(0, 0.01, glob.shape).astype(np.float32), spec)
               for _ in range(TWINS)]
    with tempfile.TemporaryDirectory() as tmp:
        put_ms, get_ms = objects(LocalStore(tmp), weights[0])
    rounds = [round_of_updates(spec, glob, weights) for _ in range(3)]
    record = UpdateRecord(twin_id="twin-0000", round=0, num_samples=4096, sha256="0" * 64,
                          base_sha256="0" * 64, metrics=dict(METRICS), seconds=1.5, engine="fleet").to_json()
    started = time.perf_counter()
    for _ in range(20_000):
        UpdateRecord.from_json(record)
    parse_us = (time.perf_counter() - started) / 20_000 * 1e6
    print(f"{ROOT}: put_bytes {put_ms:.3f} ms, get_bytes {get_ms:.3f} ms; {TWINS} twins: write_updates "
          f"{statistics.median(r[0] for r in rounds):.3f} s, load_and_validate "
          f"{statistics.median(r[1] for r in rounds):.3f} s; UpdateRecord.from_json {parse_us:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
