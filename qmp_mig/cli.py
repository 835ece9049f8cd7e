# SPDX-License-Identifier: GPL-2.0-or-later
"""The ``qmp-mig`` command: images, the lab, and running the suite."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from rich.console import Console

from . import benchmark, images, lab
from .config import ConfigError
from .config import load as load_config
from .report import write_run_report
from .runner import SUITES, RunError, detection_table, run_suite, summary_table
from .testbed import sweep

console = Console(highlight=False)


def say(message: str) -> None:
    console.print(f"[cyan]qmp-mig[/] {message}")


def cmd_images(args: argparse.Namespace) -> int:
    names = list(images.RECIPES) if args.name == "all" else [args.name]
    for name in names:
        if args.action == "build":
            images.ensure(name, say)
        state = "built" if images.is_built(name) else "missing"
        say(f"{name}: {images.image_dir(name)} ({state})")
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
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
    elif args.action == "ssh":
        state = lab.status()
        if state is None:
            say("lab is down: run `qmp-mig lab up` first")
            return 1
        argv = lab.ssh_command(state, args.command)
        os.execvp(argv[0], argv)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The suite end to end: images, lab, tests, summary, lab back down."""
    started = time.monotonic()
    booted_here = False
    config: Path | None = None
    run_id = f"{os.getpid()}-{int(time.time())}"
    try:
        if args.config:
            config = Path(args.config).resolve()
            load_config(config)  # a bad file fails here, before anything starts
        else:
            booted_here = lab.status() is None
            config = Path(lab.up(say).config)
        run_dir = Path(args.results).resolve() / f"run-{time.strftime('%Y-%m-%dT%H.%M.%S')}-{args.suite}"
        status, jobs = run_suite(args.suite, config, run_dir, console, run_id)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if config is not None:
            _sweep(config, run_id)
        if booted_here:
            lab.down(say)
    console.print(summary_table(jobs))
    detection = detection_table(jobs)
    if detection is not None:
        console.print(detection)
        # The same table as plain text next to the run's results, for a report or a note.
        with (run_dir / "detection.txt").open("w") as out:
            Console(file=out, width=200, color_system=None).print(detection)
        say(f"detection table: {run_dir / 'detection.txt'}")
    report = write_run_report(run_dir, jobs, title=f"suite {args.suite}")
    say(f"total wall time {time.monotonic() - started:.0f} s")
    say(f"HTML report: {report}")
    print(f"results: {run_dir}")
    return status


def cmd_bench(args: argparse.Namespace) -> int:
    """Figures for the configured host (the lab unless --config names one)."""
    booted_here = False
    try:
        if args.config:
            path = Path(args.config).resolve()
        else:
            booted_here = lab.status() is None
            path = Path(lab.up(say).config)
        benchmark.run(load_config(path), Path(args.results).resolve(), console)
    finally:
        if booted_here:
            lab.down(say)
    return 0


def _sweep(config: Path, run_id: str) -> None:
    """Whatever a test killed too hard to clean up after itself left behind."""
    try:
        for item in sweep(load_config(config), run_id):
            say(f"[yellow]cleaned up after an interrupted test:[/] {item}")
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - an unreachable host must not hide the results
        say(f"[red]could not sweep the host after the run:[/] {exc}")


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

    p = sub.add_parser("bench", help="print cold boot, ready-guest, migration and suite figures")
    p.add_argument("--config", help="host configuration file (default: boot and use the lab)")
    p.add_argument("--results", default="results", help="where `run` left its results")
    p.set_defaults(func=cmd_bench)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (images.ImageError, lab.LabError, RunError, ConfigError) as exc:
        say(f"[red]error:[/] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
