# SPDX-License-Identifier: GPL-2.0-or-later
"""The ``qmp-mig`` command: images, the lab, and running the suite."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import benchmark, conformance_run, images, lab, leftovers, preflight, runner
from .checks import CheckFailed
from .config import ConfigError
from .config import load as load_config
from .conformance import Verdict
from .devices import DeviceError
from .host_loss import host_lost
from .interrupts import GRACE, Interrupted, Stop, become_subreaper, end_descendants, handle_signals
from .pools import describe
from .report import write_run_report
from .runner import (
    SUITES,
    RunError,
    SuiteRun,
    conformance_reports,
    conformance_tables,
    detection_table,
    run_suite,
    summary_table,
    tests_of,
)
from .testbed import connect

console = Console(highlight=False)


def say(message: str) -> None:
    console.print(f"[cyan]qmp-mig[/] {message}")


def cmd_images(args: argparse.Namespace, stop: Stop) -> int:
    names = list(images.RECIPES) if args.name == "all" else [args.name]
    for name in names:
        if args.action == "build":
            images.ensure(name, say)
        state = "built" if images.is_built(name) else "missing"
        say(f"{name}: {images.image_dir(name)} ({state})")
        if images.is_built(name):
            images.link_current(name, images.image_dir(name))
            say(f"{name}: also as {images.current_link(name)} (the newest build; a host "
                "configuration names it)")
    return 0


def cmd_lab(args: argparse.Namespace, stop: Stop) -> int:
    if args.action == "up":
        lab.up(say)
    elif args.action == "down":
        lab.down(say)
    elif args.action == "status":
        state = lab.status()
        if state is None:
            say("lab is down")
            return 1
        say(f"lab up: pid {state.pid}, ssh 127.0.0.1:{state.ssh_port}, up "
            f"{time.time() - state.started:.0f} s (booted in {state.boot_seconds} s), "
            f"guests under {state.guest_accel}")
        say(f"host configuration: {state.config}")
        if state.owner_pid:
            say(f"booted by qmp-mig (pid {state.owner_pid}); it goes down with that command")
    elif args.action == "ssh":
        state = lab.status()
        if state is None:
            say("lab is down: run `qmp-mig lab up` first")
            return 1
        argv = lab.ssh_command(state, args.command)
        os.execvp(argv[0], argv)
    return 0


def cmd_run(args: argparse.Namespace, stop: Stop) -> int:
    """The suite end to end: images, lab, tests, summary, lab back down.

    Ctrl-C, SIGTERM and SIGHUP all end it the same way: the running Avocado job
    is interrupted and waited for, the testbeds are swept, a lab this run booted
    goes down, and the summary of the tests that finished is printed, all within
    CI's grace period (:data:`GRACE`) between SIGTERM and SIGKILL."""
    started = time.monotonic()
    become_subreaper()  # a test process that loses its Avocado runner stays ours to end
    booted_here = False
    config: Path | None = None
    run_id = f"{os.getpid()}-{int(time.time())}"
    outcome: SuiteRun | None = None
    run_dir: Path | None = None
    try:
        if args.config:
            path = Path(args.config).resolve()
            load_config(path)  # a bad file fails here, before anything starts
        else:
            booted_here = lab.status() is None
            path = Path(lab.up(say, owned=True).config)
        leftovers.finish_earlier_runs(_plain)
        if args.suite not in SUITES:
            raise RunError(f"unknown suite {args.suite!r}; available: {', '.join(SUITES)}")
        if not _preflight(path, suites=(args.suite,)):
            return 2
        config = path  # from here on there is something to clean up on the host
        leftovers.record(run_id, [config])
        run_dir = Path(args.results).resolve() / f"run-{time.strftime('%Y-%m-%dT%H.%M.%S')}-{args.suite}"
        outcome = run_suite(args.suite, config, run_dir, console, run_id)
    except Interrupted:
        pass  # stop.received says which signal; the clean-up below is the same
    finally:
        with stop.shielded():
            _clean_up(stop, config, run_id, booted_here)
    interrupted = stop.received
    if interrupted is not None:
        say(f"[yellow]interrupted by {interrupted.name}[/] {time.monotonic() - interrupted.at:.1f} s ago; "
            f"clean-up done")
    if outcome is None or run_dir is None or not outcome.jobs:
        return interrupted.exit_status if interrupted else 2
    console.print(summary_table(outcome.jobs))
    lost = host_lost(run_dir)
    if lost is not None:
        say(f"[red]{escape(lost.sentence())}[/]")
    conformance = conformance_tables(conformance_reports(outcome.jobs))
    if conformance:
        show_tables(conformance, run_dir / "conformance.txt")
        say(f"conformance tables: {run_dir / 'conformance.txt'}")
    detection = detection_table(outcome.jobs)
    if detection is not None:
        show_tables([detection], run_dir / "detection.txt")
        say(f"detection table: {run_dir / 'detection.txt'}")
    report = write_run_report(run_dir, outcome.jobs, title=f"suite {args.suite}")
    wall = time.monotonic() - started
    # The whole run's wall time (lab boot and set-up included), for `qmp-mig bench`.
    (run_dir / "run.json").write_text(json.dumps({"suite": args.suite, "wall_seconds": round(wall, 1),
                                                  "tests": len(tests_of(outcome.jobs))}) + "\n")
    say(f"total wall time {wall:.0f} s ({len(tests_of(outcome.jobs))} tests)")
    say(f"HTML report: {report}")
    print(f"results: {run_dir}", flush=True)
    return interrupted.exit_status if interrupted else outcome.status


def _clean_up(stop: Stop, config: Path | None, run_id: str, booted_here: bool) -> None:
    """After the run, normal or interrupted: take down a lab this run booted (all the
    tests made lives in it), end any process of ours still running, sweep what the
    tests left on any other host. After a signal each step gets its share of the
    grace period, and what does not fit is said."""
    interrupted = stop.received

    def until(seconds_after_signal: float, otherwise: float) -> float:
        return interrupted.remaining(seconds_after_signal) if interrupted else otherwise

    if booted_here:
        lab.down(say, timeout=until(GRACE - 3.0, 20.0))
    # Test processes whose Avocado runner was killed may still be unwinding (they are ours).
    killed = end_descendants(wait=until(5.0, 30.0))
    if killed:
        say(f"[yellow]killed {len(killed)} test process(es) still running after their job ended[/]")
    swept = config is None or booted_here or leftovers.sweep_run(
        config, run_id, until(GRACE - 1.0, 120.0), _plain)
    if swept:
        leftovers.finished(run_id)
    else:
        say("[yellow]what is left is removed by the next `qmp-mig run` with this host "
            f"configuration (run {run_id})[/]")


def show_tables(tables: list[Table], path: Path) -> None:
    """Print the tables, and write them as plain text next to the run's results (for a
    report or a note)."""
    with path.open("w") as out:
        for table in tables:
            console.print(table)
            Console(file=out, width=200, color_system=None).print(table)


def _plain(text: str) -> None:
    """``say`` for text that is not rich markup (sweep messages name tables and paths)."""
    say(f"[yellow]{escape(text)}[/]")


def _preflight(config: Path, always: bool = False, suites: tuple[str, ...] = ()) -> bool:
    """The host checked before anything starts, for the tests of ``suites`` (default:
    every suite): its table when something fails (or ``always``), else one line."""
    from .avocado_plugin import instance_needs  # Avocado's resolver: only when checking

    needs = instance_needs(runner.references(*(suites or tuple(runner.SUITES))))
    result = preflight.check(config, connect, needs)
    if always or not result.ok:
        console.print(result.table(f"qmp-mig check: {config}"))
    failed = [row for row in result.rows if row.verdict == preflight.FAIL]
    if failed:
        say(f"[red]the host is not ready: {len(failed)} item(s) failed[/] (qmp-mig check --config {config})")
        return False
    if not always:
        offered = ", ".join(sorted(result.offered)) or "none"
        say(f"host checked: {len(result.rows)} items ok; optional checks offered: {offered}")
    return True


@contextlib.contextmanager
def _configured_host(args: argparse.Namespace, stop: Stop) -> Iterator[Path]:
    """The ``--config`` file, else the lab's (booted for this command and taken down
    after it, if it was not up)."""
    if args.config:
        yield Path(args.config).resolve()
        return
    booted_here = lab.status() is None
    try:
        yield Path(lab.up(say, owned=True).config)
    finally:
        if booted_here:
            with stop.shielded():
                lab.down(say)


def cmd_check(args: argparse.Namespace, stop: Stop) -> int:
    """``qmp-mig check``: the preflight alone, on the configured host (the lab by default)."""
    with _configured_host(args, stop) as config:
        return 0 if _preflight(config, always=True) else 1


def cmd_conform(args: argparse.Namespace, stop: Stop) -> int:
    """``qmp-mig conform``: every device's migration uAPI checked directly (no QEMU, no
    guest), a table, and the calls made in the results directory."""
    with _configured_host(args, stop) as path:
        config = load_config(path)
        try:
            chosen = conformance_run.select(config, args.device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        run_dir = Path(args.results).resolve() / f"conform-{time.strftime('%Y-%m-%dT%H.%M.%S')}"
        reports, unexpected = [], 0
        for target in chosen:
            say(f"checking {target.name} ({escape(describe(target.spec))})")
            try:
                report = conformance_run.check_device(config, target, run_dir / target.name)
            except (DeviceError, CheckFailed) as exc:  # this device could not be had; the others can
                say(f"[red]{target.name}: not checked:[/] {escape(str(exc))}")
                unexpected += 1
                continue
            reports.append(report)
            unknown, reasons = conformance_run.known_failures(target, report)
            unexpected += len(unknown)
            counts = report.counts()
            say(f"{target.name}: {counts[Verdict.PASS]} passed, {counts[Verdict.FAIL]} failed"
                + (f" (known: {escape('; '.join(reasons))})" if reasons and not unknown else "")
                + f", {counts[Verdict.SKIP]} could not run, in {report.seconds:.1f} s "
                f"(the checks {report.checks_seconds:.1f} s)")
    tables = conformance_tables(reports)
    run_dir.mkdir(parents=True, exist_ok=True)
    show_tables(tables, run_dir / "conformance.txt")
    print(f"results: {run_dir}", flush=True)
    return 1 if unexpected else 0


def cmd_bench(args: argparse.Namespace, stop: Stop) -> int:
    """Figures for the configured host (the lab unless --config names one)."""
    with _configured_host(args, stop) as config:
        loaded = load_config(config)
        kinds = [d.kind for d in loaded.devices]
        kind = args.device_kind or ("mdev" if "mdev" in kinds else kinds[0])
        if kind not in kinds:
            raise ConfigError(f"{config}: no [[device]] of kind {kind!r} to benchmark (it has: {', '.join(kinds)})")
        say(escape(f"benchmarking the [[device]] entries of kind {kind}"))
        complete = benchmark.run(loaded.of_kind(kind), Path(args.results).resolve(), console)
    return 0 if complete else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="qmp-mig", description="Live migration tests for VMs with VFIO devices."
    )
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("images", help="build or show the cached lab and guest images")
    p.add_argument("action", choices=["build", "status"])
    p.add_argument("name", nargs="?", default="all", choices=["all", *images.RECIPES])
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("lab", help="the nested lab host VM")
    p.add_argument("action", choices=["up", "down", "status", "ssh"])
    p.add_argument("command", nargs=argparse.REMAINDER, help="for ssh: a command to run")
    p.set_defaults(func=cmd_lab)

    p = sub.add_parser("run", help="run a suite (in the lab unless --config names a host)")
    p.add_argument("--suite", default="default", choices=sorted(SUITES))
    p.add_argument("--config", help="host configuration file (default: boot and use the lab)")
    p.add_argument("--results", default="results",
                   help="directory for run results (each run gets its own directory of Avocado jobs)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="check that the host is ready (configuration, QEMU, VFIO, devices)")
    p.add_argument("--config", help="host configuration file (default: boot and use the lab)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("conform", help="check each device's migration uAPI directly: no QEMU, no guest")
    p.add_argument("--config", help="host configuration file (default: boot and use the lab)")
    p.add_argument("--device", help="one device by its name in the table (e.g. mtty-2, qmigdev-full) "
                   "or a kind (mdev, pci); default: every device of the configuration")
    p.add_argument("--results", default="results", help="directory for the results")
    p.set_defaults(func=cmd_conform)

    p = sub.add_parser("bench", help="print ready-guest, scenario, migration and suite figures, per guest kind")
    p.add_argument("--config", help="host configuration file (default: boot and use the lab)")
    p.add_argument("--results", default="results", help="where `run` left its results")
    p.add_argument("--device-kind", choices=("mdev", "pci"),
                   help="which [[device]] entries the VMs get (default: mdev if the host has one)")
    p.set_defaults(func=cmd_bench)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with handle_signals(say) as stop:
        try:
            return int(args.func(args, stop))
        except (images.ImageError, lab.LabError, RunError, ConfigError) as exc:
            say(f"[red]error:[/] {escape(str(exc))}")
            return 2
        except Interrupted as exc:
            say(f"[yellow]interrupted by {exc.name}[/]")
            return exc.exit_status


if __name__ == "__main__":
    sys.exit(main())
