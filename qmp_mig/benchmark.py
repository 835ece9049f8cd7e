# SPDX-License-Identifier: GPL-2.0-or-later
"""``qmp-mig bench``: the figures that decide how fast the suite can be.

Prints, for the configured host (the lab by default): a cold guest boot, the
time to a ready guest as scenarios get it (snapshot restore + SSH login), each
migration of a loaded guest (harness time against QEMU's own ``total-time``,
then the SSH login and command latency on the destination, which dominate a
scenario under nested TCG), and the wall time of the last suite run found under
the results directory. Figures only: no
thresholds, nothing here passes or fails.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .agents import MemoryAgent
from .config import Config
from .migration import Migration
from .testbed import Testbed


def _timed(what: str, rows: list[tuple[str, str]], action: Callable[[], None]) -> float:
    started = time.monotonic()
    action()
    seconds = time.monotonic() - started
    rows.append((what, f"{seconds:.1f} s"))
    return seconds


def last_suite_time(results: Path) -> tuple[str, float] | None:
    """(run directory, summed Avocado job time) of the newest run under ``results``."""
    runs = sorted(results.glob("run-*"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return None
    jobs = sorted(runs[-1].glob("job-*/results.json"))
    if not jobs:
        return None
    return runs[-1].name, sum(float(json.loads(j.read_text()).get("time") or 0) for j in jobs)


def run(config: Config, results: Path, console: Console, restores: int = 3, migrations: int = 3) -> None:
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="qmp-mig-bench.") as scratch, \
            Testbed(config, Path(scratch)) as bed:
        def cold() -> None:
            vm = bed.boot_cold("cold-boot")
            vm.guest.close()
            vm.qemu.shutdown()
        _timed("cold guest boot to SSH login", rows, cold)
        bed.snapshot()  # made once if missing (not timed: the cold boot above is its cost)
        ready = []
        for i in range(restores):
            started = time.monotonic()
            vm = bed.boot(f"restored{i}")
            ready.append(time.monotonic() - started)
            if i < restores - 1:
                vm.guest.close()
                vm.qemu.shutdown()
        rows.append((f"ready guest per scenario (restore + SSH), {restores} runs",
                     f"median {statistics.median(ready):.1f} s (min {min(ready):.1f}, max {max(ready):.1f})"))
        # Migrate a loaded guest (the memory agent at the configured workload) hop by
        # hop: after each, the harness logs in again, as every scenario does.
        workload = config.workload
        guest = vm.guest
        MemoryAgent(guest, timeout=workload.agent_timeout).start(
            workload.memory_mb, workload.dirty_mb, workload.dirty_rate_mb)
        source = vm.qemu
        for i in range(migrations):
            destination, _ = bed.launch(f"hop{i}", incoming=True)
            migration = Migration(source, destination, uri=bed.migration_uri())
            started = time.monotonic()
            migration.start()
            result = migration.wait()
            harness = time.monotonic() - started
            rows.append((f"migration {i + 1}: harness vs QEMU total-time",
                         f"{harness * 1000:.0f} ms vs {result.total_ms} ms "
                         f"(overhead {harness * 1000 - (result.total_ms or 0):.0f} ms; "
                         f"downtime {result.downtime_ms} ms)"))
            started = time.monotonic()
            guest = bed.guest(destination)
            login = time.monotonic() - started
            commands = []
            for _ in range(3):
                started = time.monotonic()
                guest.run(["true"])
                commands.append(time.monotonic() - started)
            rows.append((f"migration {i + 1}: SSH login, then 3 commands",
                         f"{login:.1f} s, then {', '.join(f'{c:.1f}' for c in commands)} s"))
            source.shutdown()
            source = destination
        report = MemoryAgent(guest, timeout=workload.agent_timeout).verify()
        rows.append(("memory agent after the last hop",
                     f"{report['pages']} pages, {report['rewrites']} rewrites, {report['bad_pages']} bad"))
    suite = last_suite_time(results)
    rows.append(("last suite run in the lab",
                 f"{suite[1]:.0f} s ({suite[0]})" if suite else "no run under " + str(results)))
    table = Table(title=f"qmp-mig benchmark on {config.path}")
    table.add_column("what")
    table.add_column("figure")
    for row in rows:
        table.add_row(*row)
    console.print(table)
