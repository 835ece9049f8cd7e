# SPDX-License-Identifier: GPL-2.0-or-later
"""Runs that ended before their clean-up did, found and finished by the next run.

``qmp-mig run`` records itself here (run id, pid, host configuration) when it
starts and removes the record once its clean-up is done. A run killed before
that (SIGKILL at the end of CI's grace period, a power cut) leaves its record
behind, and the next run sweeps that run's testbeds from the host its
configuration names (see :func:`qmp_mig.testbed.sweep`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .images import cache_dir


def _records() -> Path:
    return cache_dir() / "runs"


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot): with the pid, it names
    one process for good, however pids are reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()[19]


def record(run_id: str, config: Path) -> None:
    _records().mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    (_records() / f"{run_id}.json").write_text(
        json.dumps({"run": run_id, "pid": pid, "started": _started(pid), "config": str(config)}))


def finished(run_id: str) -> None:
    (_records() / f"{run_id}.json").unlink(missing_ok=True)


def unfinished() -> list[tuple[str, Path]]:
    """(run id, host configuration) of every recorded run that is no longer running."""
    found = []
    for path in sorted(_records().glob("*.json")) if _records().is_dir() else []:
        try:
            entry = json.loads(path.read_text())
            run, pid, config = str(entry["run"]), int(entry["pid"]), Path(entry["config"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # not ours to understand; nothing to sweep by it
            continue
        if _started(pid) != entry.get("started"):
            found.append((run, config))
    return found
