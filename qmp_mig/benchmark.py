# SPDX-License-Identifier: GPL-2.0-or-later
"""``qmp-mig bench``: the figures that decide how fast the suite can be.

Prints, for the configured host (the lab by default), side by side for each guest
kind (the micro guest and the Linux guest over SSH): the time to a ready guest as
scenarios get it (the micro guest boots; the Linux guest is restored from its
snapshot and logged into), the wall time of the smallest scenario (ready, load,
migrate, reach the guest on the destination, verify) over five runs, each
migration's harness time against QEMU's own ``total-time``, and the wall time of
the last suite run found under the results directory. Figures only: no
thresholds, nothing here passes or fails.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .agents import MemoryAgent
from .config import Config
from .migration import Migration
from .testbed import Testbed


def last_suite_time(results: Path) -> tuple[str, float, str] | None:
    """(run directory, seconds, what they are) of the newest suite run under ``results``:
    the whole run's wall time when it recorded one (run.json), else its Avocado jobs'."""
    runs = sorted(results.glob("run-*"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return None
    recorded = runs[-1] / "run.json"
    if recorded.exists():
        run = json.loads(recorded.read_text())
        return runs[-1].name, float(run["wall_seconds"]), f"wall time, {run.get('tests', '?')} tests"
    jobs = sorted(runs[-1].glob("job-*/results.json"))
    if not jobs:
        return None
    return (runs[-1].name, sum(float(json.loads(j.read_text()).get("time") or 0) for j in jobs),
            "the Avocado jobs' time")


@dataclass
class GuestFigures:
    """What one guest kind costs: seconds to a ready guest, per scenario, per migration."""

    kind: str
    cold_boot: float | None = None  # the Linux guest's boot (its snapshot is made from it)
    ready: list[float] = field(default_factory=list)
    scenarios: list[float] = field(default_factory=list)
    harness_ms: list[float] = field(default_factory=list)
    qemu_total_ms: list[float] = field(default_factory=list)
    downtime_ms: list[float] = field(default_factory=list)
    reconnect: list[float] = field(default_factory=list)
    bad_pages: int = 0
    pages: int = 0
    error: str | None = None


def _spread(values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    if not values:
        return "-"
    shown = [v * scale for v in values]
    number = "{:.0f}" if unit == "ms" else "{:.1f}"
    return (f"median {number.format(statistics.median(shown))} {unit}, max {number.format(max(shown))} "
            f"({len(shown)})")


def scenario_once(bed: Testbed, figures: GuestFigures, index: int) -> None:
    """The smallest scenario, timed: a ready guest, the memory agent started, one
    migration, the guest reached on the destination and its memory verified."""
    workload = bed.config.workload
    started = time.monotonic()
    vm = bed.boot(f"source{index}")
    figures.ready.append(time.monotonic() - started)
    MemoryAgent(vm.guest, timeout=workload.agent_timeout).start(
        workload.memory_mb, workload.dirty_mb, workload.dirty_rate_mb)
    destination, _ = bed.launch(f"destination{index}", incoming=True)
    migration = Migration(vm.qemu, destination, uri=bed.migration_uri())
    migrating = time.monotonic()
    migration.start()
    result = migration.wait()
    figures.harness_ms.append((time.monotonic() - migrating) * 1000)
    if result.status != "completed":
        raise RuntimeError(f"migration {index + 1} ended {result.status}: {result.error}")
    figures.qemu_total_ms.append(float(result.total_ms or 0))
    figures.downtime_ms.append(float(result.downtime_ms or 0))
    vm.guest.close()
    vm.qemu.shutdown()
    reaching = time.monotonic()
    guest = bed.guest(destination)
    figures.reconnect.append(time.monotonic() - reaching)
    report = MemoryAgent(guest, timeout=workload.agent_timeout).verify()
    figures.pages += int(report["pages"])
    figures.bad_pages += int(report["bad_pages"])
    guest.close()
    destination.shutdown()
    figures.scenarios.append(time.monotonic() - started)


def measure(config: Config, kind: str, scenarios: int) -> GuestFigures:
    figures = GuestFigures(kind)
    try:
        with tempfile.TemporaryDirectory(prefix="qmp-mig-bench.") as scratch, \
                Testbed(config, Path(scratch), guest=kind) as bed:
            if kind == "linux":
                started = time.monotonic()
                vm = bed.boot_cold("cold-boot")
                figures.cold_boot = time.monotonic() - started
                vm.guest.close()
                vm.qemu.shutdown()
                bed.snapshot()  # made once if missing (not timed: the cold boot above is its cost)
            for i in range(scenarios):
                scenario_once(bed, figures, i)
    except Exception as exc:  # noqa: BLE001 - the figures so far are still worth printing
        figures.error = f"{type(exc).__name__}: {exc}"
    return figures


def run(config: Config, results: Path, console: Console, scenarios: int = 5,
        guests: tuple[str, ...] = ("micro", "linux")) -> bool:
    """Print the figures; False if a guest kind could not be measured to the end."""
    kinds = [g for g in guests if g != "micro" or config.guest.micro]
    measured = [measure(config, kind, scenarios) for kind in kinds]
    table = Table(title=f"qmp-mig benchmark on {config.path}")
    table.add_column("what")
    for figures in measured:
        table.add_column(f"{figures.kind} guest")
    rows: list[tuple[str, list[str]]] = [
        ("cold boot to a ready guest", [f"{f.cold_boot:.1f} s" if f.cold_boot is not None else
                                        "- (boots for each scenario)" for f in measured]),
        ("ready guest (boot or snapshot restore, then reached)", [_spread(f.ready) for f in measured]),
        ("scenario: ready, load, migrate, reach, verify", [_spread(f.scenarios) for f in measured]),
        ("migration: harness", [_spread(f.harness_ms, "ms") for f in measured]),
        ("migration: QEMU total-time", [_spread(f.qemu_total_ms, "ms") for f in measured]),
        ("migration: QEMU downtime", [_spread(f.downtime_ms, "ms") for f in measured]),
        ("guest reached on the destination", [_spread(f.reconnect) for f in measured]),
        ("memory verified", [f"{f.pages} pages, {f.bad_pages} bad" for f in measured]),
        ("error", [f.error or "-" for f in measured]),
    ]
    for what, cells in rows:
        table.add_row(what, *cells)
    console.print(table)
    suite = last_suite_time(results)
    console.print(f"last suite run: {f'{suite[1]:.0f} s, {suite[2]} ({suite[0]})' if suite else 'none under ' + str(results)}")
    return all(f.error is None for f in measured)
