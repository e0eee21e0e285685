"""Store writes of a fleet shard: one update at a time vs `run_concurrently`, on S3 and on disk.

A fleet-engine shard ends by writing one update per twin (weights, then the record). This times
`fedtwin.federation.updates.write_updates` for 128 twins with the store's `max_concurrency` at 1 and at 8,
against a real S3 server (SeaweedFS from the dev extras, on 127.0.0.1) and a local directory,
contenders alternating repeat by repeat in one process. It is the evidence for the defaults:
S3 stores write 8 at a time, local stores one at a time.

    python benchmarks/store_writes.py            # writes results/store_writes.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from machine import cpu_model, load_average

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedtwin.federation.updates import UpdateRecord, write_updates  # noqa: E402
from fedtwin.store import ArtifactStore, LocalStore, RunLayout  # noqa: E402
from fedtwin.store.s3 import S3Store  # noqa: E402
from tests.servers import SeaweedS3  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "store_writes.md"
WEIGHTS = np.random.default_rng(0).random(9218).astype(np.float32).tobytes()  # one policy's size


def shard_writes(store: ArtifactStore, round_index: int, twins: int) -> tuple[float, float]:
    """Wall and CPU seconds to write `twins` updates of one round, as `steps.train` does at a
    shard's end (CPU: this process, the S3 server's not included)."""
    updates = [(UpdateRecord(twin_id=f"twin-{i:04d}", round=round_index, num_samples=4096, sha256="",
                             base_sha256="0" * 64), WEIGHTS) for i in range(twins)]
    started, cpu = time.perf_counter(), time.process_time()
    write_updates(store, RunLayout("bench"), updates)
    return time.perf_counter() - started, time.process_time() - cpu


def compare(make: Callable[[], ArtifactStore], twins: int, repeats: int
            ) -> dict[int, list[tuple[float, float]]]:
    """(wall, CPU) seconds per concurrency (1 and 8), alternating, a fresh round each time."""
    times: dict[int, list[tuple[float, float]]] = {1: [], 8: []}
    round_index = 0
    for repeat in range(repeats):
        for concurrency in (1, 8) if repeat % 2 == 0 else (8, 1):
            store = make()
            store.max_concurrency = concurrency
            times[concurrency].append(shard_writes(store, round_index, twins))
            round_index += 1
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--twins", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="store-writes-") as tmp:
        server = SeaweedS3(Path(tmp) / "seaweedfs")
        info = server.start()
        try:
            os.environ.update(info.env())
            s3 = compare(lambda: S3Store.from_url(f"s3://{info.bucket}/bench", environ=os.environ),
                         args.twins, args.repeats)
        finally:
            server.stop()
        local = compare(lambda: LocalStore(Path(tmp) / "local"), args.twins, args.repeats)
    for name, times in (("S3 (SeaweedFS on 127.0.0.1)", s3), ("local directory", local)):
        (one, one_cpu), (eight, eight_cpu) = (
            tuple(statistics.median(column) for column in zip(*times[c], strict=True)) for c in (1, 8))
        rows.append(f"| {name} | {one:.3f} | {eight:.3f} | {one / eight:.2f}x | {one_cpu:.3f} | "
                    f"{eight_cpu:.3f} |")

    lines = [
        "# Store writes of a fleet shard",
        "",
        f"`python benchmarks/store_writes.py`: {args.twins} twins' updates (weights + record each), median "
        f"of {args.repeats} alternating repeats; wall seconds, and CPU seconds of the writing process.",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {load_average()}",
        "- S3 server and client share the machine's cores; over a network each request waits longer on its "
        "round trip, which is what concurrency hides.",
        "",
        "| store | one at a time (s) | 8 at a time (s) | wall speed-up | CPU, one at a time (s) | "
        "CPU, 8 at a time (s) |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    print("\n".join(lines))
    if not args.no_write:
        RESULTS.write_text("\n".join(lines))
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
