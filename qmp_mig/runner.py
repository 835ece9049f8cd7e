# SPDX-License-Identifier: GPL-2.0-or-later
"""``qmp-mig run``: the suite under Avocado, with progress and a summary.

Avocado does the running and writes results.json and results.xml into its
job directory; we choose the suite, pass the host configuration, stream
Avocado's own progress lines, and print a summary table from results.json.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .checks import describe_not_run, not_run
from .config import GUEST_KINDS
from .config import load as load_config
from .conformance import DeviceReport, Verdict
from .conformance_run import targets
from .images import REPO
from .interrupts import Interrupted, interruptible_child
from .report import expected_failure


@dataclass(frozen=True)
class Part:
    """Test files run as one Avocado job, with variants YAML files (Avocado merges
    them: a matrix file multiplies the tests, a kind file picks the device kind)."""

    tests: tuple[str, ...]
    variants: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()  # variant paths not run (--mux-filter-out)
    # One variant per device conformance checks on the host (conformance_target),
    # written from the host configuration when the suite starts.
    per_device: bool = False


_VARIANTS = "avocado_tests/variants"
_MDEV, _PCI = f"{_VARIANTS}/mdev.yaml", f"{_VARIANTS}/pci.yaml"
_MATRIX = "avocado_tests/test_vfio_migration.py"
# Scenarios on the [[device]] entries; each runs once per device kind.
_SCENARIOS = ("avocado_tests/test_failures.py", "avocado_tests/test_topologies.py",
              "avocado_tests/test_refusals.py", "avocado_tests/test_reset.py")
# Scenarios on our own test devices ([test_device]): the kind file picks qmigdev
# (mdev) or qmigpci (pci).
_DEVICE_SCENARIOS = ("avocado_tests/test_device.py",)
_DETECTION = ("avocado_tests/test_detection.py",)
_CONFORMANCE = "avocado_tests/test_conformance.py"
# Conformance with each fault of our test devices armed: its column of the detection table.
_CONFORMANCE_DETECTION = tuple(
    f"{_CONFORMANCE}:ConformanceDetection.test_{fault}" for fault in (
        "fail_arc_stay", "fail_arc_error", "corrupt_stream", "truncate_stream", "drop_state",
        "lie_precopy_info_stuck", "lie_precopy_info_zero", "stale_state_on_close", "refuse_reset_fail",
        "refuse_reset_ignore", "lie_data_size", "dma_after_stop", "p2p_in_running_p2p", "delay_save"))
_MICRO = f"{_VARIANTS}/micro.yaml"  # the scenarios on the micro guest
_FULL_MATRIX = f"{_VARIANTS}/full.yaml"
# The default suite must fit in CI with the lab's guests under nested TCG. On the micro
# guest a scenario takes 10-20 s there (a Linux guest's 2-5 min: its snapshot restore
# and SSH login, emulated twice over), so the option matrix and most scenarios run on
# it; each device kind keeps one full scenario on the Linux guest over SSH, whose
# agents, login and snapshot the micro guest does not exercise.
_DEFAULT_SCENARIOS = (
    "avocado_tests/test_failures.py:Failures.test_cancel_active",
    "avocado_tests/test_failures.py:Failures.test_cancel_setup",
    "avocado_tests/test_failures.py:Failures.test_connection_cut",
    "avocado_tests/test_failures.py:Failures.test_destination_killed_device_phase",
    "avocado_tests/test_topologies.py:Topologies.test_two_devices",
    "avocado_tests/test_refusals.py:Refusals.test_blocker_enable_migration_off",
    "avocado_tests/test_refusals.py:Refusals.test_blocker_no_dirty_tracking",
    "avocado_tests/test_refusals.py:Refusals.test_postcopy_refused",
    "avocado_tests/test_refusals.py:Refusals.test_blocker_device_without_migration",
    "avocado_tests/test_refusals.py:Refusals.test_destination_refuses_stream",
    "avocado_tests/test_reset.py:Reset.test_reset_then_migrate",
    "avocado_tests/test_device.py:DeviceMigration.test_dma_and_p2p_load",
    "avocado_tests/test_device.py:DeviceMigration.test_flag_walks",
)
# The PCI path (a variant driver on functions behind an IOMMU) in the default suite.
_DEFAULT_PCI = (
    "avocado_tests/test_failures.py:Failures.test_cancel_active",
    "avocado_tests/test_topologies.py:Topologies.test_two_devices",
    "avocado_tests/test_device.py:DeviceMigration.test_dma_and_p2p_load",
)
_MIGRATE = f"{_MATRIX}:VfioMigration.test_migrate"
# Variants multiply every test of their job, so the option matrix is a job of its own.
SUITES: dict[str, tuple[Part, ...]] = {
    "default": (
        Part((_MATRIX,), (_FULL_MATRIX, _MDEV, _MICRO)),
        Part(_DEFAULT_SCENARIOS, (_MDEV, _MICRO)),
        Part((_MATRIX,), (_FULL_MATRIX, _PCI, _MICRO), left_out=("/run/options/low-downtime",)),
        Part(_DEFAULT_PCI, (_PCI, _MICRO)),
        # The Linux guest over SSH: one full scenario per device kind.
        Part((_MIGRATE,), (_MDEV,)),
        Part((_MIGRATE,), (_PCI,)),
    ),
    "nightly": (
        Part((_MATRIX,), (f"{_VARIANTS}/nightly.yaml", _MDEV)),
        Part((*_SCENARIOS, *_DEVICE_SCENARIOS), (f"{_VARIANTS}/nightly-scenarios.yaml", _MDEV)),
        Part((*_SCENARIOS, *_DEVICE_SCENARIOS), (f"{_VARIANTS}/nightly-scenarios.yaml", _PCI)),
        Part((_MATRIX,), (_PCI,)),
        Part((_MATRIX,), (f"{_VARIANTS}/nightly.yaml", _MDEV, _MICRO)),
        Part((*_SCENARIOS, *_DEVICE_SCENARIOS), (f"{_VARIANTS}/nightly-scenarios.yaml", _MDEV, _MICRO)),
        Part((*_SCENARIOS, *_DEVICE_SCENARIOS), (f"{_VARIANTS}/nightly-scenarios.yaml", _PCI, _MICRO)),
    ),
    # Every scenario once and the small matrix, on each guest kind: what `default` is
    # where guests run fast (a real KVM host, or the lab with QMP_MIG_GUEST_ACCEL=kvm).
    "full": (
        Part((_MATRIX,), (_FULL_MATRIX, _MDEV, _MICRO)),
        Part((*_SCENARIOS, *_DEVICE_SCENARIOS), (_MDEV, _MICRO)),
        # A 20 ms downtime limit cannot hold on the PCI kind here: the whole RAM moves
        # while the VM is stopped (see variants/pci.yaml).
        Part((_MATRIX,), (_FULL_MATRIX, _PCI, _MICRO), left_out=("/run/options/low-downtime",)),
        Part((*_SCENARIOS, *_DEVICE_SCENARIOS), (_PCI, _MICRO)),
        Part((_MATRIX,), (_FULL_MATRIX, _MDEV)),
        Part((*_SCENARIOS, *_DEVICE_SCENARIOS), (_MDEV,)),
        Part((_MATRIX,), (_FULL_MATRIX, _PCI), left_out=("/run/options/low-downtime",)),
        Part((*_SCENARIOS, *_DEVICE_SCENARIOS), (_PCI,)),
    ),
    # Every injected driver bug must be caught by some check; prints the detection table.
    # On both of our drivers: qmigdev (mdev) and qmigpci (a variant driver on PCI
    # functions), on the micro guest (CI runs it); `detection-all` adds the Linux guest,
    # and the table then has a column per guest kind.
    "detection": (Part(_DETECTION, (_MDEV, _MICRO)), Part(_DETECTION, (_PCI, _MICRO))),
    # With conformance alone as a column of its own (the `conformance` suite runs it too).
    "detection-all": (Part(_DETECTION, (_MDEV, _MICRO)), Part(_DETECTION, (_PCI, _MICRO)),
                      Part(_DETECTION, (_MDEV,)), Part(_DETECTION, (_PCI,)),
                      Part(_CONFORMANCE_DETECTION, (_MDEV,)), Part(_CONFORMANCE_DETECTION, (_PCI,))),
    # The migration uAPI of every device, called directly (no QEMU, no guest), then
    # every fault of our test devices armed in turn: its table is the detection
    # table's conformance column.
    "conformance": (Part((f"{_CONFORMANCE}:Conformance.test_device",), per_device=True),
                    Part(_CONFORMANCE_DETECTION, (_MDEV,)), Part(_CONFORMANCE_DETECTION, (_PCI,))),
}


class RunError(RuntimeError):
    """The suite could not be run at all (as opposed to tests failing)."""


def avocado_command(part: Part, results: Path, config: Path, generated: tuple[Path, ...] = ()) -> list[str]:
    """One part as an ``avocado run``; our Avocado plugin (qmp_mig/avocado_plugin.py)
    hands ``config`` to the tests. The summary and report are ours, across the jobs."""
    command = [
        sys.executable, "-m", "avocado", "run",
        "--job-results-dir", str(results),
        "--max-parallel-tasks", "1",
        "--qmp-mig-config", str(config),
        "--qmp-mig-no-summary",
        "--qmp-mig-no-preflight",  # qmp-mig run checks the host once, before the first job
    ]
    command += [str(REPO / test) for test in part.tests]
    if part.left_out:
        command += ["--mux-filter-out", *part.left_out]
    variants = [*(str(REPO / v) for v in part.variants), *map(str, generated)]
    if variants:  # last: -m takes every argument after it as a YAML file
        command += ["-m", *variants]
    return command


def device_variants(config: Path, results: Path) -> Path:
    """A variants file with one variant per device conformance checks on the host."""
    names = [t.name for t in targets(load_config(config))]
    path = results / "conformance-devices.yaml"
    path.write_text("devices: !mux\n" + "".join(
        f"  {name}:\n    conformance_target: {json.dumps(name)}\n" for name in names))
    return path


AVOCADO_FAIL = 1  # Avocado's exit status bit for "some test failed"
# From the signal: Avocado's own interrupt (each running test gets SIGTERM and unwinds
# for a second, then is killed) must be over by then, or its process group is killed.
JOB_STOP_BUDGET = 5.0


@dataclass
class SuiteRun:
    """What a suite run produced: Avocado's exit statuses OR-ed (they are bit flags),
    the job directories that hold results, and the signal that stopped it, if any."""

    status: int = 0
    jobs: list[Path] = field(default_factory=list)
    interrupted: Interrupted | None = None


def references(*suites: str) -> list[str]:
    """The test references (file or file:Class.method) of ``suites``, as Avocado takes them."""
    return list(dict.fromkeys(str(REPO / test) for suite in suites for part in SUITES[suite]
                              for test in part.tests))


def unresolved(suite: str) -> list[str]:
    """The entries of ``suite`` that name no test (file, class and method) or no variants file."""
    problems = []
    for part in SUITES[suite]:
        for test in part.tests:
            path, _, name = test.partition(":")
            if not (REPO / path).is_file():
                problems.append(f"{test}: no file {path}")
                continue
            if name:
                tree = ast.parse((REPO / path).read_text(), path)
                cls, _, method = name.partition(".")
                found = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls), None)
                if found is None or not any(isinstance(n, ast.FunctionDef) and n.name == method
                                            for n in found.body):
                    problems.append(f"{test}: no test {name} in {path}")
        problems += [f"{variants}: no such variants file" for variants in part.variants
                     if not (REPO / variants).is_file()]
    return problems


def run_suite(suite: str, config: Path, results: Path, console: Console, run_id: str) -> SuiteRun:
    """Run each part of the suite as an Avocado job under ``results``. A signal
    interrupts the running job the way Avocado itself is interrupted, keeps the
    results of the tests that finished, and starts no further part."""
    if suite not in SUITES:
        raise RunError(f"unknown suite {suite!r}; available: {', '.join(SUITES)}")
    if problems := unresolved(suite):  # Avocado would run the rest and say nothing
        raise RunError(f"suite {suite!r} names tests that do not exist: " + "; ".join(problems))
    results.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]running suite {suite!r}[/] against {config}")
    started = time.monotonic()
    # The host configuration goes by --qmp-mig-config (avocado_command), not -p: Avocado
    # refuses -p together with variants.
    environment = {**os.environ, "QMP_MIG_RUN_ID": run_id, "QMP_MIG_RUN_DIR": str(results)}
    run = SuiteRun()
    try:
        for part in SUITES[suite]:
            before = set(results.glob("job-*"))
            generated = (device_variants(config, results),) if part.per_device else ()
            returncode, run.interrupted = _run_job(avocado_command(part, results, config, generated),
                                                 environment, console)
            new = sorted(set(results.glob("job-*")) - before)
            if new and (new[-1] / "results.json").exists():
                run.jobs.append(new[-1])
            elif run.interrupted is None:
                raise RunError(f"avocado exited {returncode} without a job's results in {results}")
            else:
                console.print(f"[yellow]the interrupted Avocado job left no results.json[/] ({returncode})")
            if returncode < 0 and run.interrupted is None:  # killed, and not by us
                console.print(f"[red]Avocado was killed by signal {-returncode}[/]")
            run.status |= returncode if returncode >= 0 else AVOCADO_FAIL
            if run.interrupted is not None:
                break
    except Interrupted as between_jobs:
        run.interrupted = between_jobs
    console.print(f"suite {'interrupted' if run.interrupted else 'finished'} after "
                  f"{time.monotonic() - started:.0f} s")
    return run


def _run_job(argv: list[str], environment: dict[str, str],
             console: Console) -> tuple[int, Interrupted | None]:
    """One Avocado job, its progress lines echoed; on a signal, interrupted."""
    # Its own session: a Ctrl-C in the terminal reaches us alone, and we decide
    # how the job is stopped, the same way for every signal.
    avocado = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1, env=environment, start_new_session=True,
                               preexec_fn=interruptible_child)
    echo = threading.Thread(target=_echo, args=(avocado, console), daemon=True, name="avocado-output")
    echo.start()
    interrupted = None
    try:
        avocado.wait()
    except Interrupted as signal_received:
        interrupted = signal_received
        console.print(f"[yellow]{interrupted.name}: interrupting the Avocado job[/]")
        _interrupt(avocado, interrupted)
    echo.join(timeout=2)
    return avocado.returncode, interrupted


def _echo(avocado: subprocess.Popen[str], console: Console) -> None:
    assert avocado.stdout is not None
    for line in avocado.stdout:
        # Unbroken, whatever the width: a test's name must stay one line in a log.
        console.print(f"  [dim]avocado[/] {line.rstrip()}", highlight=False, soft_wrap=True)


def _interrupt(avocado: subprocess.Popen[str], interrupted: Interrupted) -> None:
    """Avocado's own interrupt is SIGINT: it sends each running test SIGTERM (the test
    unwinds), marks it INTERRUPTED and writes the job's results. Whatever of it is
    still running after :data:`JOB_STOP_BUDGET` is killed with its process group."""
    with contextlib.suppress(ProcessLookupError):
        avocado.send_signal(signal.SIGINT)
    try:
        avocado.wait(timeout=interrupted.remaining(JOB_STOP_BUDGET))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(avocado.pid, signal.SIGKILL)
        avocado.wait()


def _clip(text: str, width: int = 160) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def tests_of(jobs: list[Path]) -> list[dict[str, Any]]:
    """Every test record of the jobs (their results.json), in order."""
    return [t for job in jobs for t in json.loads((job / "results.json").read_text()).get("tests", [])]


def summary_table(jobs: list[Path]) -> Table:
    """Every test of the jobs (their results.json), one row each."""
    return results_table(tests_of(jobs))


def variant_axes(name: str) -> tuple[str, str]:
    """(device kind, guest kind) of a test from its name: Avocado names a variant after
    the leaves of our variant files ("...;run-mdev-micro-dee9"), and the kind files'
    leaves are the kinds themselves. No guest leaf is the Linux guest (the default)."""
    words = name.rpartition(";")[2].split("-")
    device = next((w for w in words if w in ("mdev", "pci")), "")
    return device, "micro" if "micro" in words else "linux"


def results_table(tests: list[dict[str, Any]]) -> Table:
    """The summary table of ``tests``, records as Avocado's results.json holds them."""
    table = Table(title=f"qmp-mig results ({len(tests)} tests)")
    for column in ("test", "guest", "status", "time", "detail"):
        table.add_column(column)
    colours = {"PASS": "green", "FAIL": "red", "ERROR": "red", "CANCEL": "yellow", "SKIP": "yellow",
               "XFAIL": "cyan"}
    for test in tests:
        status = "XFAIL" if expected_failure(test) else test.get("status", "?")
        # Avocado fills fail_reason with "<unknown>" for tests that passed.
        reason = test.get("fail_reason") if status != "PASS" else ""
        detail = (reason or test.get("whiteboard") or "").splitlines()[:1]
        unrun = describe_not_run(not_run(Path(test["logdir"]))) if test.get("logdir") else ""
        name = test.get("name", test.get("id", "?")).split(":", 1)[-1]
        table.add_row(
            name.replace(";", " "),
            variant_axes(name)[1],
            f"[{colours.get(status, 'white')}]{status}[/]",
            f"{test.get('time_elapsed', 0):.1f} s",
            # An optional check that did not run is said even when the test passed.
            escape("\n".join([_clip(line) for line in detail] + ([f"[{unrun}]"] if unrun else []))),
        )
    return table


CONFORMANCE_COLUMN = "conformance"
_CELL_FINDINGS = 3  # findings shown per cell of the detection table


def detection_table(jobs: list[Path]) -> Table | None:
    """One row per injected fault and device kind, one column per guest kind it ran
    on: the checks that caught it and their messages (a GAP when none did), from each
    detection test's detection.json; None when the run had no detection tests."""
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for test in tests_of(jobs):
        logdir = test.get("logdir")
        found = Path(logdir) / "artifacts" / "detection.json" if logdir else None
        if found is None or not found.exists():
            continue
        report = json.loads(found.read_text())
        device, guest = variant_axes(str(test.get("name", "")))
        if "ConformanceDetection." in str(test.get("name", "")):
            guest = CONFORMANCE_COLUMN
        caught = [f"{c['check']}: {_clip(c['message'], 160)}" for c in report["caught"]]
        if len(caught) > _CELL_FINDINGS:  # the rest are in the test's detection.json
            caught = [*caught[:_CELL_FINDINGS], f"(and {len(caught) - _CELL_FINDINGS} more)"]
        status = test.get("status", "?")
        if status == "CANCEL" and not caught:  # conformance cannot see this fault, and says why
            caught = [str(test.get("fail_reason", "not visible"))]
            status = "PASS"
        cells.setdefault((report["fault"], device), {})[guest] = escape(
            "\n".join(caught or ["GAP: nothing caught it"]) + ("" if status == "PASS" else f"\n[{status}]"))
    if not cells:
        return None
    guests = [g for g in (*GUEST_KINDS, CONFORMANCE_COLUMN) if any(g in row for row in cells.values())]
    table = Table(title="detection: injected fault -> the checks that caught it, per guest kind "
                  "and by conformance alone (no guest)")
    for column in ("fault", "device", *guests):
        table.add_column(column, overflow="fold")
    for (fault, device), row in cells.items():
        table.add_row(fault, device or "-", *(row.get(g, "not run") for g in guests))
    return table


def conformance_reports(jobs: list[Path]) -> list[DeviceReport]:
    """The per-device reports (conformance.json) of a run's Conformance.test_device tests."""
    found = []
    for test in tests_of(jobs):
        logdir = test.get("logdir")
        path = Path(logdir) / "artifacts" / "conformance.json" if logdir else None
        if "Conformance.test_device" in str(test.get("name", "")) and path is not None and path.exists():
            found.append(DeviceReport.from_json(json.loads(path.read_text())))
    return found


def conformance_tables(reports: list[DeviceReport]) -> list[Table]:
    """One row per device (its flags, checks passed, failed and not run, its time), then
    one row per failed check: the call with its arguments, the answer expected and the
    answer observed."""
    if not reports:
        return []
    devices = Table(title="conformance: the migration uAPI of each device, called directly")
    for column in ("device", "flags", "pass", "fail", "not run", "time (checks)", "failed checks"):
        devices.add_column(column, overflow="fold")
    failures = Table(title="conformance: failed checks")
    for column in ("device", "check", "call", "expected", "observed"):
        failures.add_column(column, overflow="fold")
    for report in reports:
        counts = report.counts()
        devices.add_row(report.device, report.flags.replace("|", " "), str(counts[Verdict.PASS]),
                        f"[red]{counts[Verdict.FAIL]}[/]" if counts[Verdict.FAIL] else "0",
                        str(counts[Verdict.SKIP]), f"{report.seconds:.1f} s ({report.checks_seconds:.1f} s)",
                        escape(", ".join(r.check for r in report.failures())) or "-")
        for r in report.failures():
            failures.add_row(report.device, escape(r.check), escape(r.call), escape(r.expected),
                             escape(_clip(r.observed, 300)))
    return [devices, failures] if failures.row_count else [devices]
