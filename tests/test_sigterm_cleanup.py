"""A pytest run stopped by SIGTERM (a CI timeout, `kill`) still runs its session finalizers, which stop
the real servers and the control plane (tests/conftest.py turns SIGTERM into Ctrl-C's KeyboardInterrupt)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent

SESSION_TEST = '''
import os, time
from pathlib import Path
import pytest

@pytest.fixture(scope="session")
def server():
    yield
    Path(os.environ["MARKS"], "stopped").write_text("yes")

def test_long(server):
    Path(os.environ["MARKS"], "started").write_text("yes")
    time.sleep(120)
'''


def test_sigterm_ends_the_session_through_its_finalizers(tmp_path: Path) -> None:
    (tmp_path / "test_long.py").write_text(SESSION_TEST)
    env = {**os.environ, "MARKS": str(tmp_path)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
               str(tmp_path / "test_long.py")]
    proc = subprocess.Popen(command, cwd=REPOSITORY, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]

    assert (tmp_path / "stopped").read_text() == "yes", output
    assert "KeyboardInterrupt: signal 15" in output
