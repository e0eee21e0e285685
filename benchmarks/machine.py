"""What machine a benchmark ran on: the facts every results file records beside its figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average(separator: str = ", ", digits: int = 2) -> str:
    """The 1, 5 and 15 minute load averages: how shared the machine was while it measured."""
    if not hasattr(os, "getloadavg"):
        return "n/a"
    return separator.join(f"{value:.{digits}f}" for value in os.getloadavg())
