# SPDX-License-Identifier: GPL-2.0-or-later
"""Runs that ended before their clean-up did, found and finished by the next run.

``qmp-mig run``, and a plain ``avocado run`` of our tests (through our plugin),
record themselves here (run id, pid, host configuration) when they start and
remove the record once their clean-up is done. A run killed before that
(SIGKILL at the end of CI's grace period, a power cut) leaves its record behind,
and the next run sweeps that run's testbeds from the host its configuration
names (see :func:`qmp_mig.testbed.sweep`): QEMUs, mdevs, work directories, and
PCI functions given back to the driver they had.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
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


def record(run_id: str, configs: list[Path]) -> None:
    """Run ``run_id`` (this process) uses the hosts of ``configs``."""
    _records().mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    (_records() / f"{run_id}.json").write_text(json.dumps(
        {"run": run_id, "pid": pid, "started": _started(pid), "configs": [str(c) for c in configs]}))


def finished(run_id: str) -> None:
    (_records() / f"{run_id}.json").unlink(missing_ok=True)


def unfinished() -> list[tuple[str, Path]]:
    """(run id, host configuration) of every recorded run that is no longer running,
    once per host configuration it used."""
    found = []
    for path in sorted(_records().glob("*.json")) if _records().is_dir() else []:
        try:
            entry = json.loads(path.read_text())
            run, pid = str(entry["run"]), int(entry["pid"])
            # "config": one file, as records before several hosts per run had it.
            configs = [Path(c) for c in entry["configs"]] if "configs" in entry else [Path(entry["config"])]
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)  # not ours to understand; nothing to sweep by it
            continue
        if _started(pid) != entry.get("started"):
            found += [(run, config) for config in configs]
    return found


def sweep_run(config: Path, run_id: str, timeout: float, say: Callable[[str], None]) -> bool:
    """Remove what run ``run_id``'s tests left on the host of ``config`` (tests killed
    too hard to clean up after themselves). False if the sweep could not finish
    within ``timeout``, or failed; ``say`` is told what was removed."""
    from .config import load
    from .testbed import sweep

    outcome: list[BaseException | list[str]] = []

    def sweeping() -> None:
        try:
            outcome.append(sweep(load(config), run_id))
        except Exception as exc:  # noqa: BLE001 - reported below; it must not hide the results
            outcome.append(exc)

    worker = threading.Thread(target=sweeping, daemon=True, name="sweep")
    worker.start()
    worker.join(timeout)
    if not outcome:
        say(f"the sweep of the host did not finish within {timeout:.0f} s")
        return False
    if isinstance(outcome[0], BaseException):
        say(f"could not sweep the host after the run: {outcome[0]}")
        return False
    for item in outcome[0]:
        say(f"cleaned up after an interrupted test: {item}")
    return True


def finish_earlier_runs(say: Callable[[str], None]) -> None:
    """Sweep what runs that were killed before their clean-up left on their hosts."""
    left: dict[str, bool] = {}  # run -> every host of it swept
    for run_id, config in unfinished():
        done = True
        if config.exists():  # else the lab it ran in is gone, and everything in it
            say(f"run {run_id} ended before its clean-up; sweeping what it left")
            done = sweep_run(config, run_id, 120.0, say)
        left[run_id] = left.get(run_id, True) and done
    for run_id, done in left.items():
        if done:
            finished(run_id)
