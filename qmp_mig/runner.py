# SPDX-License-Identifier: GPL-2.0-or-later
"""``qmp-mig run``: the suite under Avocado, with progress and a summary.

Avocado does the running and writes results.json and results.xml into its
job directory; we choose the suite, pass the host configuration, stream
Avocado's own progress lines, and print a summary table from results.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .images import REPO

SUITES: dict[str, list[str]] = {
    "default": ["avocado_tests/test_vfio_migration.py"],
}


class RunError(RuntimeError):
    """The suite could not be run at all (as opposed to tests failing)."""


def avocado_command(suite: str, config: Path, results: Path) -> list[str]:
    if suite not in SUITES:
        raise RunError(f"unknown suite {suite!r}; available: {', '.join(SUITES)}")
    return [
        sys.executable, "-m", "avocado", "run",
        "--job-results-dir", str(results),
        "--max-parallel-tasks", "1",
        "-p", f"host_config={config}",
        *[str(REPO / test) for test in SUITES[suite]],
    ]


def run_suite(
    suite: str, config: Path, results: Path, console: Console, run_id: str
) -> tuple[int, Path]:
    """Run the suite; returns Avocado's exit status and its job directory."""
    results.mkdir(parents=True, exist_ok=True)
    before = set(results.glob("job-*"))
    command = avocado_command(suite, config, results)
    console.print(f"[bold]running suite {suite!r}[/] against {config}")
    started = time.monotonic()
    environment = {**os.environ, "QMP_MIG_RUN_ID": run_id}
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1, env=environment) as avocado:
        assert avocado.stdout is not None
        for line in avocado.stdout:
            console.print(f"  [dim]avocado[/] {line.rstrip()}", highlight=False)
    jobs = sorted(set(results.glob("job-*")) - before)
    if not jobs:
        raise RunError(f"avocado exited {avocado.returncode} without a job directory in {results}")
    console.print(f"suite finished in {time.monotonic() - started:.0f} s")
    return avocado.returncode, jobs[-1]


def summary_table(job: Path) -> Table:
    data = json.loads((job / "results.json").read_text())
    table = Table(title=f"qmp-mig results ({data.get('total', 0)} tests)")
    for column in ("test", "status", "time", "detail"):
        table.add_column(column)
    colours = {"PASS": "green", "FAIL": "red", "ERROR": "red", "CANCEL": "yellow", "SKIP": "yellow"}
    for test in data.get("tests", []):
        status = test.get("status", "?")
        # Avocado fills fail_reason with "<unknown>" for tests that passed.
        reason = test.get("fail_reason") if status != "PASS" else ""
        detail = (reason or test.get("whiteboard") or "").splitlines()
        table.add_row(
            test.get("name", test.get("id", "?")).split(":", 1)[-1],
            f"[{colours.get(status, 'white')}]{status}[/]",
            f"{test.get('time_elapsed', 0):.1f} s",
            detail[0] if detail else "",
        )
    return table
