# SPDX-License-Identifier: GPL-2.0-or-later
"""Real migrations in the nested lab: the suite passes, its checks bite on
real faults, and an interrupted run leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qmp_mig import config, fsm
from qmp_mig.agents import MTTY_PATTERN, MemoryAgent, MttyAgent
from qmp_mig.checks import CheckFailed, check_bytes, check_memory, check_walk
from qmp_mig.faults import corrupt_guest_word
from qmp_mig.fsm import State
from qmp_mig.migration import Migration
from qmp_mig.testbed import Testbed, connect

pytestmark = pytest.mark.lab
QMP_MIG = [sys.executable, "-m", "qmp_mig.cli"]


def leftovers(config_path: Path) -> dict[str, list[str]]:
    """What a finished run must not leave on the host: QEMUs, mdevs, work dirs."""
    cfg = config.load(config_path)
    host = connect(cfg)
    try:
        def lines(argv: list[str]) -> list[str]:
            return host.run(argv, check=False).stdout.split("\n")
        return {
            "qemu": [p for p in lines(["pgrep", "-a", "qemu-system"]) if p],
            "mdev": [m for m in lines(["ls", "/sys/bus/mdev/devices"]) if m],
            "workdir": [d for d in lines(["ls", cfg.host.workdir]) if d],
        }
    finally:
        host.close()


def test_suite_passes(lab_config: Path, tmp_path: Path) -> None:
    """`qmp-mig run` runs the default suite in the lab and every test passes."""
    started = time.monotonic()
    run = subprocess.run([*QMP_MIG, "run", "--results", str(tmp_path)], capture_output=True, text=True,
                         timeout=3600, check=False)
    print(run.stdout[-6000:], run.stderr[-3000:])
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("results: "), last
    job = Path(last.removeprefix("results: "))
    results = json.loads((job / "results.json").read_text())
    assert (job / "results.xml").exists()
    statuses = {t["name"].rsplit(":", 1)[-1]: t["status"] for t in results["tests"]}
    print(f"suite wall time {time.monotonic() - started:.0f} s; per test:",
          {t["name"].rsplit(":", 1)[-1]: f"{t['time_elapsed']:.0f} s {t.get('whiteboard', '')}" for t in results["tests"]})
    assert statuses == {
        "VfioMigration.test_migrate": "PASS",
        "VfioMigration.test_cancel_then_migrate": "PASS",
    }, [t.get("fail_reason") for t in results["tests"]]
    assert run.returncode == 0
    assert leftovers(lab_config) == {"qemu": [], "mdev": [], "workdir": []}


def test_checks_catch_real_faults(lab_config: Path, tmp_path: Path) -> None:
    """After a real migration: a wrong expected walk, one corrupted guest page and
    one lost mtty byte each fail with a message naming exactly what differed."""
    cfg = config.load(lab_config)
    with Testbed(cfg, tmp_path) as bed:
        source = bed.boot("source")
        pages = MemoryAgent(source.guest).start(cfg.workload.memory_mb, cfg.workload.dirty_mb)
        agent = MttyAgent(source.guest)
        port = agent.ports()[0]
        agent.write(port, MTTY_PATTERN)

        destination, _ = bed.launch("destination", incoming=True)
        migration = Migration(source.qemu, destination, uri=bed.migration_uri())
        migration.start()
        assert migration.wait().status == "completed"
        guest = bed.guest(destination)

        # A wrong expected sequence: the real walk passes, a wrong one names the step.
        flags = source.flags["vfio0"]
        observed = destination.vfio_walk("vfio0")
        check_walk("destination vfio0", fsm.destination_events(flags), observed)
        wrong = [*fsm.destination_events(flags)[:-1], State.STOP]
        with pytest.raises(CheckFailed, match=r"^destination vfio0: VFIO walk differs at step 3: "
                                              r"expected stop, observed running"):
            check_walk("destination vfio0", wrong, observed)

        # One corrupted page, written behind the guest's back in QEMU's memory.
        page = pages["pages"] - 1  # outside the range the agent keeps rewriting
        offset = 8 * 37
        corrupt_guest_word(destination, MemoryAgent(guest).gpa(page) + offset)
        report = MemoryAgent(guest).verify()
        with pytest.raises(CheckFailed, match=rf"^destination: 1 of {pages['pages']} guest pages corrupted; "
                                              rf"first: page {page} \(gpa 0x[0-9a-f]+\) offset {offset}:"):
            check_memory("destination", report)

        # One lost mtty byte: take the first byte out of the FIFO before the check.
        agent = MttyAgent(guest)
        assert agent.read(port, limit=1) == MTTY_PATTERN[:1]
        with pytest.raises(CheckFailed, match=r"^mtty: 1 byte\(s\) lost at byte 0 \(51\)"):
            check_bytes("mtty", MTTY_PATTERN, agent.read(port))
    assert leftovers(lab_config) == {"qemu": [], "mdev": [], "workdir": []}


def test_ctrl_c_leaves_nothing_behind(lab_config: Path, tmp_path: Path) -> None:
    """Ctrl-C while a VM runs in the lab: no QEMU, mdev or work dir survives."""
    run = subprocess.Popen([*QMP_MIG, "run", "--results", str(tmp_path)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not leftovers(lab_config)["qemu"]:
            assert run.poll() is None, "the run ended before any VM started"
            assert time.monotonic() < deadline, "no VM started in the lab within 600 s"
            time.sleep(1)
        os.killpg(run.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        run.wait(timeout=180)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert leftovers(lab_config) == {"qemu": [], "mdev": [], "workdir": []}
