"""The fault matrix (issue 17): real faults against `fedtwin run`, what the user sees, and whether the
run, once the fault is gone and the same command is run again, ends with the clean run's final model.

Every fault is the real thing, as a user or an operator would meet it:

* kill -9 of the runner at four points: from outside while its pool workers train, and from inside
  (the runner SIGKILLs itself at the named write, so the point is exact) between the new global
  model and the round summary, between the summary and state.json, and between the evaluation and
  the final model; after the outside kill its pool workers must be gone within 10 s;
* a pool worker killed -9 mid-round (what the OOM killer does);
* a full disk (a small tmpfs, filled at the named write) during init, training and aggregation, then
  space freed;
* a read-only store (a read-only bind mount of a half-played run), then the writable path;
* two runners started at once on one run id;
* one hostile field per update record field, written by twin-001 into its round-0 record: the round
  must reject it as `bad_record` and go on; the run then ends with the model of the same run in
  which twin-001's round-0 update never arrived (it cannot end with the clean model: that round
  lost a twin, which is the point).

Needs root (mount, tmpfs) like tests/faultfs.py. Writes results/faults.md.

    python benchmarks/faults.py
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from machine import cpu_model, load_average

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from fedtwin.store import LocalStore  # noqa: E402
from tests.faultfs import grow, read_only_view, small_tmpfs  # noqa: E402
from tests.helpers import clean_env, write_tiny_config  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "faults.md"
RUN = "r"
ROUNDS = 3

# Runs the CLI with one LocalStore write replaced by a fault: the first write whose key satisfies
# PREDICATE (a Python expression of `self` and `key`) first does ACTION.
WRAPPER = """
import os, signal, sys
from pathlib import Path
import fedtwin.store as store_module
from fedtwin.cli import main
from tests.faultfs import fill
_write, fired = store_module.LocalStore._write, []
def _faulty(self, key, data, sha):
    if not fired and ({predicate}):
        fired.append(key)
        {action}
    return _write(self, key, data, sha)
store_module.LocalStore._write = _faulty
sys.argv = ["fedtwin", *sys.argv[1:]]
main()
"""
KILL = "os.kill(os.getpid(), signal.SIGKILL)"
FILL = "fill(Path(self.root))"


@dataclass
class Row:
    fault: str
    sees: str
    exit: str
    equal: str
    note: str = ""


class Matrix:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.config = write_tiny_config(work, **{"federation.rounds": ROUNDS, "execution.workers": 2})
        self.rows: list[Row] = []

    # ------------------------------------------------------------------------------ helpers
    def cli(self, store: Path, *args: str, fault: tuple[str, str] | None = None,
            run: bool = True) -> subprocess.CompletedProcess[str]:
        argv = list(args) if not run else ["run", "--config", str(self.config), "--run-id", RUN,
                                             "--no-progress", *args]
        argv += ["--store", str(store)]
        head = [sys.executable, "-c", WRAPPER.format(predicate=fault[0], action=fault[1])] if fault \
            else [sys.executable, "-m", "fedtwin"]
        return subprocess.run([*head, *argv], capture_output=True, text=True, env=clean_env(), cwd=ROOT,
                              timeout=900)

    def final(self, store: Path) -> str:
        data = (store / "runs" / RUN / "report" / "final.safetensors").read_bytes()
        return hashlib.sha256(data).hexdigest()

    @staticmethod
    def seen(result: subprocess.CompletedProcess[str]) -> str:
        if result.returncode < 0:
            return f"killed by signal {-result.returncode}"
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        if not lines:
            return "(nothing on stderr)"
        shown = lines[-1] if len(lines) == 1 else f"{lines[-1]} ({len(lines)} lines on stderr)"
        return shown.replace("|", "\\|").replace(str(Path(tempfile.gettempdir())), "/tmp")

    def rerun_row(self, fault: str, first: subprocess.CompletedProcess[str], store: Path,
                  reference: str, note: str = "") -> None:
        """The same command again once the fault is gone; the final model compared to `reference`."""
        again = self.cli(store)
        equal = "yes" if again.returncode == 0 and self.final(store) == reference else "**no**"
        code = "killed" if first.returncode < 0 else str(first.returncode)
        self.rows.append(Row(fault, self.seen(first), f"{code}, rerun {again.returncode}", equal, note))
        print(f"{fault}: {code} -> {again.returncode}, equal {equal}", flush=True)

    # ------------------------------------------------------------------------------ scenarios
    def clean(self) -> str:
        store = self.work / "clean"
        result = self.cli(store)
        assert result.returncode == 0, result.stderr
        return self.final(store)

    def kills(self, clean: str) -> None:
        points = {
            "kill -9 of the runner, aggregate: new global model written, summary not":
                'key.endswith("rounds/0001/summary.json")',
            "kill -9 of the runner, aggregate: summary written, state.json not":
                'key.endswith("/state.json") and self.exists("runs/r/rounds/0001/summary.json")',
            "kill -9 of the runner, evaluate: final model written, evaluation.json not":
                'key.endswith("report/evaluation.json")',
        }
        self.kill_while_training(clean)
        for name, predicate in points.items():
            store = self.work / f"kill-{len(self.rows)}"
            first = self.cli(store, fault=(predicate, KILL))
            self.rerun_row(name, first, store, clean)

    def kill_while_training(self, clean: str) -> None:
        store = self.work / "kill-training"
        argv = [sys.executable, "-m", "fedtwin", "run", "--config", str(self.config), "--run-id", RUN,
                "--no-progress", "--store", str(store)]
        proc = subprocess.Popen(argv, env=clean_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        marker = store / "runs" / RUN / "rounds" / "0001" / "updates"
        deadline = time.monotonic() + 300
        while not any(marker.glob("*.json.sha256")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        workers = [p for p in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(workers, timeout=10)
        for worker in alive:
            worker.kill()
        first = subprocess.CompletedProcess(argv, proc.returncode, "", proc.stderr.read())
        note = (f"its {len(workers)} pool workers exited within 10 s" if not alive
                else f"**{len(alive)} of {len(workers)} pool workers were orphaned**")
        self.rerun_row("kill -9 of the runner from outside while its pool workers train round 1", first,
                       store, clean, note)

    def worker_kill(self, clean: str) -> None:
        store = self.work / "worker-kill"
        argv = [sys.executable, "-m", "fedtwin", "run", "--config", str(self.config), "--run-id", RUN,
                "--no-progress", "--store", str(store)]
        proc = subprocess.Popen(argv, env=clean_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        marker = store / "runs" / RUN / "rounds" / "0001"
        while not marker.exists() and proc.poll() is None:
            time.sleep(0.01)
        workers = [p for p in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        if workers:
            workers[0].send_signal(signal.SIGKILL)
        proc.wait()
        first = subprocess.CompletedProcess(argv, proc.returncode, "", proc.stderr.read())
        self.rerun_row("kill -9 of one pool worker while round 1 trains (the OOM killer)", first, store,
                       clean)

    def full_disk(self, clean: str) -> None:
        cases = {
            "full disk during init (tmpfs of 16 KiB)": ("16k", None),
            "full disk during training (tmpfs of 128 KiB: init fits, round 0's updates do not)":
                ("128k", None),
            "full disk during aggregation (tmpfs filled as round 1's new global model is written)":
                ("16m", 'key.endswith("rounds/0002/global.safetensors")'),
        }
        for name, (size, predicate) in cases.items():
            with small_tmpfs(self.work / f"disk-{len(self.rows)}", size) as disk:
                first = self.cli(disk, fault=(predicate, FILL) if predicate else None)
                for filler in disk.glob(".filler-*"):
                    filler.unlink()
                grow(disk, "64m")
                self.rerun_row(name, first, disk, clean, "space freed, then the same command")

    def read_only(self, clean: str) -> None:
        store = self.work / "ro-source"
        half = self.cli(store, fault=('key.endswith("rounds/0001/summary.json")', KILL))
        assert half.returncode == -signal.SIGKILL, half.stderr
        with read_only_view(store, self.work / "ro") as view:
            first = self.cli(view)
            listed = self.cli(view, "runs", "list", run=False)
        note = ("`fedtwin runs list` on the read-only store works" if listed.returncode == 0
                else f"`runs list` failed: {self.seen(listed)}")
        self.rerun_row("read-only store (a half-played run behind a read-only bind mount), then the "
                       "writable path", first, store, clean, note)

    def two_runners(self, clean: str) -> None:
        store = self.work / "two"
        argv = [sys.executable, "-m", "fedtwin", "run", "--config", str(self.config), "--run-id", RUN,
                "--no-progress", "--store", str(store)]
        procs = [subprocess.Popen(argv, env=clean_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        codes = [p.wait(timeout=900) for p in procs]
        errors = [p.stderr.read() for p in procs]
        loser = codes.index(1) if 1 in codes else 0
        first = subprocess.CompletedProcess(argv, codes[loser], "", errors[loser])
        equal = "yes" if sorted(codes) == [0, 1] and self.final(store) == clean else "**no**"
        self.rows.append(Row("two `fedtwin run` of one run id started at once", self.seen(first),
                             f"{sorted(codes)[0]} and {sorted(codes)[1]}", equal,
                             "one refuses at once, the other finishes"))
        print(f"two runners: {codes}, equal {equal}", flush=True)

    def hostile_records(self, clean: str) -> None:
        base = self.work / "hostile-base"
        self.cli(base, "step", "init", "--config", str(self.config), "--run-id", RUN, run=False)
        for twin in ("twin-000", "twin-001", "twin-002"):
            self.cli(base, "step", "train", "--run", RUN, "--round", "0", "--twin", twin, run=False)
        reference = self.work / "hostile-reference"  # the same run without twin-001's round-0 update
        shutil.copytree(base, reference)
        for suffix in (".json", ".json.sha256", ".safetensors", ".safetensors.sha256"):
            (reference / "runs" / RUN / "rounds" / "0000" / "updates" / f"twin-001{suffix}").unlink()
        self.cli(reference, "step", "aggregate", "--run", RUN, "--round", "0", run=False)
        assert self.cli(reference).returncode == 0
        without = self.final(reference)
        hostile = {"twin_id": 7, "round": "0", "num_samples": "abc", "sha256": 5, "base_sha256": None,
                   "metrics": {"charts/episodic_return": "high"}, "epsilon": "x", "seconds": "abc",
                   "engine": "gpu", "extra": {"skipped": ["x"]}, "(unknown key) evil": 1}
        for field, value in hostile.items():
            store = self.work / f"hostile-{field.split()[-1]}"
            shutil.copytree(base, store)
            key = f"runs/{RUN}/rounds/0000/updates/twin-001.json"
            data = LocalStore(store).get_json(key)
            data[field.split()[-1]] = value
            LocalStore(store).put_json(key, data)  # with its sha256: a twin writes (and signs) its own record
            agg = self.cli(store, "step", "aggregate", "--run", RUN, "--round", "0", run=False)
            summary = json.loads((store / "runs" / RUN / "rounds" / "0000" / "summary.json").read_text())
            [rejected] = summary["rejected"] or [{"kind": "none", "reason": "not rejected"}]
            finished = self.cli(store)
            equal = "yes" if finished.returncode == 0 and self.final(store) == without else "**no**"
            report = (store / "runs" / RUN / "report" / "report.html").exists()
            self.rows.append(Row(
                f"hostile record field `{field}`: {json.dumps(value)}",
                f"rejected `{rejected['kind']}`: {rejected['reason']}".replace("|", "\\|"),
                f"{agg.returncode}, run {finished.returncode}",
                f"no, by design ({equal} = the run without twin-001's round-0 update)",
                "report written" if report else "**no report**"))
            print(f"hostile {field}: {rejected['kind']}, {equal}", flush=True)


def render(matrix: Matrix, seconds: float) -> str:
    lines = [
        "# Fault matrix",
        "",
        "Command: `python benchmarks/faults.py` (as root: it mounts tmpfs and read-only bind mounts)  ",
        f"Date: {datetime.now(UTC):%Y-%m-%d}; machine: {cpu_model()}, Python {platform.python_version()}; "
        f"load average {load_average()}; {seconds:.0f} s",
        "",
        f"Run: 3 twins, {ROUNDS} rounds, pool engine with 2 workers (tests/helpers.py's tiny budget), "
        "`fedtwin run` on a local store. *Final model = clean*: after the fault is gone, the same command "
        "ends with the final weights (sha256 of report/final.safetensors) of the run that met no fault.",
        "",
        "| fault | what the user sees (last stderr line, or the round summary) | exit (first, then rerun) "
        "| final model = clean | note |",
        "|---|---|---|---|---|",
    ]
    for row in matrix.rows:
        lines.append(f"| {row.fault} | {row.sees} | {row.exit} | {row.equal} | {row.note} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    started = time.perf_counter()
    scenarios: list[Callable[[Matrix, str], None]] = [
        Matrix.kills, Matrix.worker_kill, Matrix.full_disk, Matrix.read_only, Matrix.two_runners,
        Matrix.hostile_records,
    ]
    with tempfile.TemporaryDirectory(prefix="fedtwin-faults-") as tmp:
        matrix = Matrix(Path(tmp))
        clean = matrix.clean()
        for scenario in scenarios:
            scenario(matrix, clean)
    text = render(matrix, time.perf_counter() - started)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    return 0 if all("**" not in row.equal and "**" not in row.note for row in matrix.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
