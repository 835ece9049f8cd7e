# SPDX-License-Identifier: GPL-2.0-or-later
"""Real migrations in the nested lab: the suite passes, its checks bite on
real faults, and an interrupted run leaves nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmp_mig import config, fsm, lab
from qmp_mig.agents import MTTY_PATTERN, MemoryAgent, MttyAgent
from qmp_mig.checks import CheckFailed, check_bytes, check_memory, check_walk
from qmp_mig.faults import corrupt_guest_word
from qmp_mig.fsm import State
from qmp_mig.hosts import HostError, SshHost
from qmp_mig.interrupts import GRACE
from qmp_mig.kernel_trace import check_device
from qmp_mig.migration import Migration
from qmp_mig.report import expected_failure
from qmp_mig.runner import variant_axes
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
            "trace": [t for t in lines(["ls", "/sys/kernel/tracing/instances"]) if t],
        }
    finally:
        host.close()


def pci_drivers(config_path: Path) -> dict[str, str]:
    """Every PCI function of the host and the driver it is bound to ("" for none)."""
    host = connect(config.load(config_path))
    try:
        listing = host.run(["sh", "-c", 'for d in /sys/bus/pci/devices/*; do '
                            'echo "${d##*/} $(basename "$(readlink "$d/driver")" 2>/dev/null)"; done']).stdout
    finally:
        host.close()
    return {line.split(" ")[0]: line.partition(" ")[2] for line in listing.splitlines()}


# CI has 90 minutes for everything; the default suite took 13 min of them (2026-12-04,
# cold Linux snapshots), the detection suite 11.
SUITE_TIMEOUT = 3600


def run_live(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``argv``, echoing its output as it comes (CI's log shows how far it got).
    Past ``timeout`` it gets Ctrl-C, as a person would give it, and the test fails
    naming the last lines it printed."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def echo() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            print(f"[{time.strftime('%H:%M:%S')}] {line}", end="", flush=True)

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        pytest.fail(f"`{' '.join(argv[2:])}` still running after {timeout:.0f} s; its last lines:\n"
                    + "".join(lines[-15:]))
    reader.join(timeout=30)
    return subprocess.CompletedProcess(argv, process.returncode, "".join(lines), "")


def test_suite_passes(lab_config: Path, tmp_path: Path) -> None:
    """`qmp-mig run` runs the default suite in the lab and every test passes; the PCI
    functions it lent to qmigpci are given back, and no other function is touched."""
    drivers = pci_drivers(lab_config)
    assert {bdf: drivers[bdf] for bdf in lab.edu_functions()} == dict.fromkeys(lab.edu_functions(), "")
    started = time.monotonic()
    run = run_live([*QMP_MIG, "run", "--results", str(tmp_path)], timeout=SUITE_TIMEOUT)
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("results: "), last
    run_dir = Path(last.removeprefix("results: "))
    jobs = sorted(run_dir.glob("job-*"))
    assert jobs and all((job / "results.xml").exists() for job in jobs)
    tests = [t for job in jobs for t in json.loads((job / "results.json").read_text())["tests"]]
    print(f"suite wall time {time.monotonic() - started:.0f} s; per test:")
    for t in tests:
        print(f"  {t['name'].rsplit(':', 1)[-1]}: {t['status']} {t['time_elapsed']:.0f} s "
              f"{t.get('whiteboard') or ''} {t.get('fail_reason') if t['status'] != 'PASS' else ''}")
    problems = [f"{t['name']}: {t['status']}: {t.get('fail_reason')}" for t in tests
                if t["status"] != "PASS" and not expected_failure(t)]
    assert not problems, problems
    # (test, device kind, guest kind) of every test that ran: the micro guest runs the
    # matrix and the scenarios on both kinds, the Linux guest one migration per kind.
    ran = {(t["name"].rsplit(":", 1)[-1].split(";")[0], *variant_axes(t["name"])) for t in tests}
    for device in ("mdev", "pci"):
        assert ("VfioMigration.test_migrate", device, "linux") in ran, (device, ran)
        assert {(name, device, "micro") for name in (
            "VfioMigration.test_migrate", "Failures.test_cancel_active", "Topologies.test_two_devices",
            "DeviceMigration.test_dma_and_p2p_load")} <= ran, (device, ran)
    assert {(name, "mdev", "micro") for name in (
        "Failures.test_destination_killed_device_phase", "Refusals.test_postcopy_refused",
        "DeviceMigration.test_flag_walks")} <= ran, ran
    # Every test left a timeline picture, and the run's HTML report links them.
    report = (run_dir / "report.html").read_text()
    for t in tests:
        svg = Path(t["logdir"]) / "artifacts" / "timeline.svg"
        assert svg.exists(), svg
        assert os.path.relpath(svg, run_dir) in report
    assert run.returncode == 0
    assert leftovers(lab_config) == {"qemu": [], "mdev": [], "workdir": [], "trace": []}
    after = pci_drivers(lab_config)
    assert after == drivers, {bdf: (drivers.get(bdf), after.get(bdf)) for bdf in {*drivers, *after}
                              if drivers.get(bdf) != after.get(bdf)}
    print("PCI functions and their drivers, before and after the run (identical):")
    for bdf, driver in sorted(drivers.items()):
        print(f"  {bdf} {driver or '-'}")


@pytest.mark.parametrize("guest_kind", ["linux", "micro"])
def test_checks_catch_real_faults(lab_config: Path, tmp_path: Path, guest_kind: str) -> None:
    """After a real migration: a wrong expected walk, one corrupted guest page and
    one lost mtty byte each fail with a message naming exactly what differed, on
    the Linux guest's agents and on the micro guest's."""
    cfg = config.load(lab_config).of_kind("mdev")  # the mtty
    with Testbed(cfg, tmp_path, guest=guest_kind) as bed:
        source = bed.boot("source")
        pages = MemoryAgent(source.guest).start(
            cfg.workload.memory_mb, cfg.workload.dirty_mb, cfg.workload.dirty_rate_mb)
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

        # The kernel's own arcs agree with QEMU; set against a wrong QEMU walk, they do not.
        kernel = bed.check_kernel()
        assert kernel.available and kernel.problems == [], kernel.problems
        calls = kernel.calls["destination"]
        problems = check_device("destination vfio0", flags, calls, wrong)
        assert problems and problems[0].startswith(
            "destination vfio0: QEMU and the kernel disagree at step 3: QEMU stop, kernel running"), problems
        assert "kernel requests: RUNNING->RUNNING_P2P->STOP->RESUMING" in problems[0]

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
    assert leftovers(lab_config) == {"qemu": [], "mdev": [], "workdir": [], "trace": []}


# Faults conformance cannot see (only a guest, a migration or QEMU's downtime promise
# shows them), per device kind; its tests of these are cancelled with the reason.
CONFORMANCE_BLIND = {"test_lie_data_size", "test_dma_after_stop", "test_p2p_in_running_p2p", "test_delay_save"}
CONFORMANCE_BLIND_ON = {"mdev": CONFORMANCE_BLIND, "pci": {*CONFORMANCE_BLIND, "test_stale_state_on_close"}}


def _suite_tests(run: subprocess.CompletedProcess[str]) -> tuple[Path, list[dict[str, object]]]:
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("results: "), last
    run_dir = Path(last.removeprefix("results: "))
    return run_dir, [t for job in sorted(run_dir.glob("job-*"))
                     for t in json.loads((job / "results.json").read_text())["tests"]]


def _method(test: dict[str, object]) -> str:
    return str(test["name"]).rsplit(":", 1)[-1].split(";")[0].rsplit(".", 1)[-1]


def _check_conformance_detection(tests: list[dict[str, object]]) -> None:
    """Conformance alone catches every fault it can see, on both drivers, and says why
    it cannot see the others."""
    for device, blind in CONFORMANCE_BLIND_ON.items():
        mine = [t for t in tests if "ConformanceDetection." in str(t["name"]) and variant_axes(str(t["name"]))[0] == device]
        assert len(mine) == 14, (device, [t["name"] for t in mine])
        for test in mine:
            if _method(test) in blind:
                assert test["status"] in ("CANCEL", "PASS"), test
                assert test["status"] == "PASS" or str(test["fail_reason"]).startswith("not visible to conformance"), test
            else:
                assert test["status"] == "PASS", (test["name"], test["status"], test.get("fail_reason"))


def test_detection_suite_catches_every_fault(lab_config: Path, tmp_path: Path) -> None:
    """`qmp-mig run --suite detection`: every injected driver bug of qmigdev (mdev) and
    qmigpci (pci) is caught on the micro guest, each by a check naming its symptom; the
    run ends with the detection table (conformance's column: test_conformance_suite)."""
    started = time.monotonic()
    run = run_live([*QMP_MIG, "run", "--suite", "detection", "--results", str(tmp_path)], timeout=SUITE_TIMEOUT)
    run_dir, tests = _suite_tests(run)
    print(f"detection suite wall time {time.monotonic() - started:.0f} s")
    problems = [f"{t['name']}: {t['status']}: {t.get('fail_reason')}" for t in tests if t["status"] != "PASS"]
    assert not problems, problems
    faults = {_method(t) for t in tests}
    assert len(faults) >= 14, faults
    for device in ("mdev", "pci"):
        caught = {_method(t) for t in tests if variant_axes(str(t["name"])) == (device, "micro")}
        assert caught == faults, (device, faults - caught)
    assert (run_dir / "detection.txt").exists()
    assert run.returncode == 0
    assert leftovers(lab_config) == {"qemu": [], "mdev": [], "workdir": [], "trace": []}


def test_conformance_suite(lab_config: Path, tmp_path: Path) -> None:
    """`qmp-mig run --suite conformance`: every device of the lab checked directly, with
    no QEMU. Our drivers (each qmigdev type, qmigpci with each flag set) pass every check;
    mtty fails only the checks of its known bugs (its stale state on close among them),
    an expected failure; each fault conformance can see fails a named check."""
    started = time.monotonic()
    run = run_live([*QMP_MIG, "run", "--suite", "conformance", "--results", str(tmp_path)], timeout=SUITE_TIMEOUT)
    run_dir, tests = _suite_tests(run)
    print(f"conformance suite wall time {time.monotonic() - started:.0f} s")
    devices = {str(t["name"]).split(";run-devices-")[1].rsplit("-", 1)[0]: t for t in tests
               if "Conformance.test_device" in str(t["name"])}
    assert sorted(devices) == sorted(["mtty-2", *(f"{d}-{f}" for d in ("qmigdev", "qmigpci")
                                                  for f in ("full", "p2p", "precopy", "basic"))])
    for name, test in devices.items():
        if name == "mtty-2":
            assert expected_failure(test), test
            assert "close in" in str(test["fail_reason"]), test["fail_reason"]
        else:
            assert test["status"] == "PASS", (name, test.get("fail_reason"))
    _check_conformance_detection(tests)
    text = (run_dir / "conformance.txt").read_text()
    assert "close in RESUMING" in text and "qmigpci-basic" in text
    assert "conformance" in (run_dir / "detection.txt").read_text()
    assert run.returncode == 0
    assert leftovers(lab_config) == {"qemu": [], "mdev": [], "workdir": [], "trace": []}


def test_conform_command_names_mttys_stale_state(lab_config: Path, tmp_path: Path) -> None:
    """`qmp-mig conform --device mtty-2`: seconds, no QEMU; the table names each failed
    check with its call, and the run's status is 0 because every failure is a known issue."""
    run = run_live([*QMP_MIG, "conform", "--config", str(lab_config), "--device", "mtty-2",
                    "--results", str(tmp_path)], timeout=300)
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("results: "), last
    report = json.loads((Path(last.removeprefix("results: ")) / "mtty-2" / "conformance.json").read_text())
    failed = {r["check"] for r in report["results"] if r["verdict"] == "fail"}
    assert {"close in STOP", "close in RESUMING", "precopy read with nothing pending"} <= failed, failed
    assert all(r["verdict"] == "pass" for r in report["results"] if r["check"].startswith("fsm "))
    print(f"conform mtty-2: {report['seconds']} s, {len(report['results'])} checks, {len(failed)} failed")
    assert run.returncode == 0, run.stdout[-2000:]
    assert leftovers(lab_config) == {"qemu": [], "mdev": [], "workdir": [], "trace": []}


def _as_in_a_terminal() -> None:
    # A job started in the background by a shell without job control (`cmd &` in a
    # script, as a CI wrapper may do) inherits SIGINT ignored, and Python then never
    # raises KeyboardInterrupt. A run in a terminal, or under a CI runner, has every
    # signal at its default disposition.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def test_ctrl_c_leaves_nothing_behind(lab_config: Path, tmp_path: Path) -> None:
    """Ctrl-C while a VM runs in the lab: no QEMU, mdev or work dir survives."""
    run = subprocess.Popen([*QMP_MIG, "run", "--results", str(tmp_path)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=_as_in_a_terminal)
    try:
        wait_for_vms(run, 1)
        os.killpg(run.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        run.wait(timeout=180)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert leftovers(lab_config) == {"qemu": [], "mdev": [], "workdir": [], "trace": []}


def wait_for_vms(run: subprocess.Popen[str] | subprocess.Popen[bytes], count: int,
                 timeout: float = 600) -> None:
    """Until the lab (booted by the run, if it was down) runs ``count`` QEMUs of the run's
    testbeds (not the short `qemu-system --version` calls of its preflight)."""
    deadline = time.monotonic() + timeout
    while True:
        assert run.poll() is None, f"the run ended ({run.returncode}) before {count} VM(s) ran in the lab"
        assert time.monotonic() < deadline, f"{count} VM(s) not running in the lab within {timeout:.0f} s"
        state = lab.status()
        if state is not None and Path(state.config).exists() and \
                len([q for q in leftovers(Path(state.config))["qemu"] if "/testbed." in q]) >= count:
            return
        time.sleep(1)


def processes_of(marker: str) -> list[str]:
    """Processes on this machine whose command line or environment names ``marker``
    (a run's results directory: the run itself, its Avocado jobs and their tests)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in cmdline or marker.encode() in environ:
            found.append(f"{entry.name}: {cmdline[:160]}")
    return found


def lab_processes() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if lab.LAB_NAME in cmdline:
                found.append(f"{entry.name}: {cmdline[:120]}")
    return found


@contextlib.contextmanager
def started(argv: list[str]) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``argv`` started as a CI runner or a terminal would (its own session, signals at
    their defaults), its output collected line by line; killed with its session if it
    is still running at the end."""
    run = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True, preexec_fn=_as_in_a_terminal)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(run.stdout or []), daemon=True)
    reader.start()
    try:
        yield run, output
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        reader.join(timeout=10)


def stopped_as_ci_does(argv: list[str], signum: int, vms: int) -> tuple[subprocess.CompletedProcess[str], float]:
    """Start ``argv`` as a CI runner would, wait until ``vms`` QEMUs run in the lab, send
    ``signum`` to it and, like CI, SIGKILL whatever is left after the grace period.
    Returns its output and the seconds from the signal to its exit."""
    with started(argv) as (run, output):
        wait_for_vms(run, vms)
        signalled = time.monotonic()
        os.kill(run.pid, signum)
        try:
            run.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)  # CI's SIGKILL at the end of its grace period
            run.wait()
        took = time.monotonic() - signalled
    text = "".join(output)
    name = signal.Signals(signum).name
    after = next((i for i, line in enumerate(output) if f"{name}: interrupting" in line), len(output) - 12)
    print(f"{name}: exit {run.returncode} {took:.1f} s after the signal; what it printed since:\n"
          + "".join(output[after:]))
    return subprocess.CompletedProcess(argv, run.returncode, text, ""), took


def assert_interrupted_cleanly(run: subprocess.CompletedProcess[str], signum: int, results: Path) -> None:
    name = signal.Signals(signum).name
    assert run.returncode == 128 + signum, (run.returncode, run.stdout[-3000:])
    assert f"interrupted by {name}" in run.stdout, run.stdout[-3000:]
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("results: "), last
    jobs = sorted(Path(last.removeprefix("results: ")).glob("job-*"))
    statuses = [t["status"] for job in jobs for t in json.loads((job / "results.json").read_text())["tests"]]
    assert "INTERRUPTED" in statuses, statuses
    assert processes_of(str(results)) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_while_vms_run_leaves_nothing_behind(lab_config: Path, tmp_path: Path, signum: int) -> None:
    """A CI job cancelled (SIGTERM) or a terminal closed (SIGHUP) while two QEMUs run in
    the lab: within CI's grace period the run prints its summary and results line,
    exits 128+signal, and leaves no process of its own here and nothing in the lab."""
    run, _ = stopped_as_ci_does([*QMP_MIG, "run", "--results", str(tmp_path)], signum, vms=2)
    assert_interrupted_cleanly(run, signum, tmp_path)
    assert leftovers(lab_config) == {"qemu": [], "mdev": [], "workdir": [], "trace": []}


def test_sigterm_takes_down_the_lab_the_run_booted(lab_config: Path, tmp_path: Path) -> None:
    """With the lab down, `qmp-mig run` boots it; SIGTERM then takes it down with everything."""
    lab.down()
    run, _ = stopped_as_ci_does([*QMP_MIG, "run", "--results", str(tmp_path)], signal.SIGTERM, vms=1)
    assert_interrupted_cleanly(run, signal.SIGTERM, tmp_path)
    assert "lab down" in run.stdout
    assert lab.status() is None and lab_processes() == []


def test_a_killed_run_is_swept_by_the_next(lab_config: Path, tmp_path: Path) -> None:
    """SIGKILL leaves no time to clean up: the run's Avocado job dies with it (nothing of
    it stays on this machine), and what it left in the lab (mdevs, work directory, trace
    instance) is removed by the next run's sweep of unfinished runs."""
    run = subprocess.Popen([*QMP_MIG, "run", "--results", str(tmp_path)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True, preexec_fn=_as_in_a_terminal)
    try:
        wait_for_vms(run, 2)
    finally:
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
    deadline = time.monotonic() + 30
    while processes_of(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_of(str(tmp_path)) == []
    left = leftovers(lab_config)
    assert left["mdev"] and left["workdir"], left  # what only a sweep removes
    next_run = subprocess.run([sys.executable, "-c", "from qmp_mig.leftovers import finish_earlier_runs; "
                               "finish_earlier_runs(print)"], capture_output=True, text=True, timeout=300)
    print(next_run.stdout)
    assert "ended before its clean-up; sweeping what it left" in next_run.stdout, next_run
    assert leftovers(lab_config) == {"qemu": [], "mdev": [], "workdir": [], "trace": []}


def test_killed_lab_is_one_finding(lab_config: Path, tmp_path: Path) -> None:
    """The lab VM dies while two QEMUs run in it: one test reports the host under test
    gone, in our words; every later test is cancelled with that reason."""
    with started([*QMP_MIG, "run", "--results", str(tmp_path)]) as (run, output):
        wait_for_vms(run, 2)
        state = lab.status()
        assert state is not None
        os.kill(state.pid, signal.SIGKILL)
        killed = time.monotonic()
        run.wait(timeout=600)
        print(f"run ended {time.monotonic() - killed:.0f} s after the lab was killed")
    text = "".join(output)
    print("".join(output[-20:]))
    last = text.strip().splitlines()[-1]
    assert last.startswith("results: "), text[-3000:]
    tests = [t for job in sorted(Path(last.removeprefix("results: ")).glob("job-*"))
             for t in json.loads((job / "results.json").read_text())["tests"]]
    lost = [t for t in tests if t["status"] == "ERROR"]
    assert len(lost) == 1 and lost[0]["fail_reason"].startswith("host under test "), \
        [(t["name"], t["status"], t["fail_reason"]) for t in tests]
    assert "stopped answering" in lost[0]["fail_reason"], lost[0]["fail_reason"]
    assert " while " in lost[0]["fail_reason"] and "its SSH connection closed" in lost[0]["fail_reason"]
    after = tests[tests.index(lost[0]) + 1:]
    assert after and all(t["status"] == "CANCEL" and t["fail_reason"].startswith("not run: host under test ")
                         for t in after), [(t["name"], t["status"], t["fail_reason"]) for t in after]
    # Said once by the run, under its summary; no test speaks in socket words.
    said = [line for line in text.splitlines() if line.startswith("qmp-mig host under test ")]
    assert len(said) == 1, said
    assert not any(words in (t["fail_reason"] or "") for t in tests
                   for words in ("Unable to connect", "SSH session not active", "Errno")), tests
    assert run.returncode != 0
    assert processes_of(str(tmp_path)) == [] and lab_processes() == []


def test_the_lab_host_key_is_pinned(lab_config: Path) -> None:
    """The lab presents the key its image was built with; another pinned key, or none
    known, is refused before anything is sent."""
    state = lab.status()
    assert state is not None and state.host_key.startswith("ssh-ed25519 ")
    assert config.load(lab_config).host.host_key == state.host_key
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0Jm3y8e0b0o7QwCFhX1b8p3S1s5GQhM0U5iC0fYqK"
    with pytest.raises(HostError, match=r"its SSH host key is ssh-ed25519 SHA256:\S+, not the expected"):
        SshHost("127.0.0.1", state.ssh_port, state.key, host_key=other)
    with pytest.raises(HostError, match="its SSH host key is unknown"):
        SshHost("127.0.0.1", state.ssh_port, state.key)
    SshHost("127.0.0.1", state.ssh_port, state.key, host_key=state.host_key).close()


def test_absent_test_device_is_cancel_with_its_reason(lab_config: Path, tmp_path: Path) -> None:
    """`avocado run --qmp-mig-config` (our plugin, its preflight included) with a host
    configuration that names no [test_device]: the device tests are CANCEL with the
    reason, never WARN or PASS, and nothing is left in the lab."""
    text = lab_config.read_text()
    without = tmp_path / "host.toml"
    without.write_text(text[:text.index("[[test_device]]")])
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "avocado", "run", "--job-results-dir", str(results),
                          "--qmp-mig-config", str(without),
                          "avocado_tests/test_device.py:DeviceMigration.test_flag_walks"],
                         capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stdout + run.stderr
    (job,) = results.glob("job-*")
    (test,) = json.loads((job / "results.json").read_text())["tests"]
    assert test["status"] == "CANCEL", test
    assert test["fail_reason"] == "the host configuration names no [test_device] (devices/qmigdev or devices/qmigpci)"
    assert leftovers(lab_config) == {"qemu": [], "mdev": [], "workdir": [], "trace": []}


def test_dma_from_an_assigned_function_goes_through_the_iommu(lab_config: Path) -> None:
    """An edu function handed to VFIO DMAs from an IOVA its domain does not map: the
    lab's VT-d refuses it and the lab kernel logs the fault for that function."""
    bdf = lab.edu_functions()[-1]
    host = connect(config.load(lab_config))
    try:
        assert host.run(["readlink", f"/sys/bus/pci/devices/{bdf}/driver"], check=False).stdout == ""
        host.run(["sh", "-c", 'echo vfio-pci > "/sys/bus/pci/devices/$1/driver_override" && '
                  'echo "$1" > /sys/bus/pci/drivers_probe && dmesg -c > /dev/null', "sh", bdf])
        try:
            probe = host.run(["python3", "-", bdf], stdin=(Path(__file__).parent / "iommu_fault.py").read_bytes(),
                             check=False, timeout=60)
            log = host.run(["dmesg"]).stdout
        finally:
            host.run(["sh", "-c", 'echo "$1" > "/sys/bus/pci/devices/$1/driver/unbind"; '
                      'echo > "/sys/bus/pci/devices/$1/driver_override"', "sh", bdf], check=False)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        print(probe.stdout, log, sep="\n")
        short = bdf.split(":", 1)[1]
        assert any(f"Request device [{short}] fault addr 0x10000000" in line for line in log.splitlines()), log
        assert host.run(["readlink", f"/sys/bus/pci/devices/{bdf}/driver"], check=False).stdout == ""
    finally:
        host.close()
