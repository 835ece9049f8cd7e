# SPDX-License-Identifier: GPL-2.0-or-later
"""The testbed against a fake host and fake QEMUs: which device each QEMU gets, the
order of the clean-up, the lease, a QEMU that dies before its monitor answers, and
the sweep of what a killed run left."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import MDEV_DEVICES, WORKDIR, FakeHost, fake_config, mdev_entry

from qmp_mig import testbed
from qmp_mig.config import DeviceConfig
from qmp_mig.devices import DeviceError, MdevDevice
from qmp_mig.kernel_trace import TRACEFS
from qmp_mig.pools import PoolExhausted
from qmp_mig.qemu import QemuError
from qmp_mig.testbed import Testbed, sweep

RUN = "4242-1700000000"


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHost]:
    """The host every testbed (and sweep) of the test connects to."""
    fake = FakeHost()
    fake.add_mdev_parent("mtty", "mtty-2")
    monkeypatch.setattr(testbed, "connect", lambda config: fake)
    monkeypatch.setenv("QMP_MIG_RUN_ID", RUN)
    sigterm = signal.getsignal(signal.SIGTERM)
    yield fake
    # A testbed made in the main thread takes SIGTERM while it lives, and gives it back.
    assert signal.getsignal(signal.SIGTERM) is sigterm
    assert fake.unknown == [], f"commands the fake host has no model for: {fake.unknown}"


def _workdir(host: FakeHost) -> str:
    return next(e.split(" ", 1)[1] for e in host.journal if e.startswith(f"mkdir {WORKDIR}/testbed."))


# --- 1. the device each QEMU gets ------------------------------------------------------------


def test_every_qemu_gets_its_own_fresh_mdev(host: FakeHost, tmp_path: Path) -> None:
    with Testbed(fake_config(mdev_entry()), tmp_path) as bed:
        source, _ = bed.launch("source")
        destination, _ = bed.launch("destination", incoming=True)
        given = [q.devices[0].device for q in (source, destination)]
        assert all(isinstance(d, MdevDevice) for d in given)
        uuids = [d.kernel_name for d in given]
        assert uuids[0] != uuids[1]
        assert host.mdevs() == set(uuids)
        for qemu, fake, uuid in zip((source, destination), host.qemus, uuids):
            # QEMU is given its own mdev, and that mdev exists before QEMU starts.
            assert fake.vfio_paths == [f"{MDEV_DEVICES}/{uuid}"] and fake.name == qemu.name
            assert host.journal.index(f"mdev create {uuid}") < host.journal.index(f"spawn {qemu.pid} {qemu.name}")
    assert host.mdevs() == set()
    for uuid in uuids:
        assert f"mdev remove {uuid}" in host.journal


def pci_pool(*bdfs: str, bind: str = "") -> DeviceConfig:
    return DeviceConfig(kind="pci", bdfs=bdfs, bind=bind)


def test_every_qemu_gets_its_own_pci_function(host: FakeHost, tmp_path: Path) -> None:
    host.add_pci("0000:3b:00.1")
    host.add_pci("0000:3b:00.2")
    with Testbed(fake_config(pci_pool("0000:3b:00.1", "0000:3b:00.2")), tmp_path) as bed:
        source, _ = bed.launch("source")
        destination, _ = bed.launch("destination", incoming=True)
        bdfs = [qemu.devices[0].device.kernel_name for qemu in (source, destination)]
        assert bdfs == ["0000:3b:00.1", "0000:3b:00.2"]
        assert host.qemus[0].vfio_paths != host.qemus[1].vfio_paths


def test_a_pool_that_runs_dry_names_the_entry_and_who_holds_what(host: FakeHost, tmp_path: Path) -> None:
    host.add_pci("0000:3b:00.1")
    with Testbed(fake_config(pci_pool("0000:3b:00.1")), tmp_path) as bed:
        bed.launch("source")
        with pytest.raises(PoolExhausted, match=r"^\[\[device\]\] #1 \(pci 0000:3b:00.1\): no free instance for "
                           r"destination; all 1 are held \(0000:3b:00.1 by source\)"):
            bed.launch("destination", incoming=True)
    assert len(host.qemus) == 1


def test_a_function_comes_back_to_its_pool_when_its_qemu_has_exited(host: FakeHost, tmp_path: Path) -> None:
    host.add_pci("0000:3b:00.1")
    host.add_pci("0000:3b:00.2")
    with Testbed(fake_config(pci_pool("0000:3b:00.1", "0000:3b:00.2")), tmp_path) as bed:
        source, _ = bed.launch("source")
        bed.launch("hop1", incoming=True)
        source.shutdown()
        hop2, _ = bed.launch("hop2", incoming=True)
        assert hop2.devices[0].device.kernel_name == "0000:3b:00.1"


def test_an_mdev_pool_with_a_count_holds_at_most_that_many(host: FakeHost, tmp_path: Path) -> None:
    entry = DeviceConfig(kind="mdev", parent="mtty", type="mtty-2", count=1)
    with Testbed(fake_config(entry), tmp_path) as bed:
        source, _ = bed.launch("source")
        with pytest.raises(PoolExhausted, match="no free instance for destination"):
            bed.launch("destination", incoming=True)
        uuid = source.devices[0].device.kernel_name
        source.shutdown()
        bed.launch("destination", incoming=True)
        assert f"mdev remove {uuid}" in host.journal  # given back when its QEMU exited


def test_the_vfs_of_a_pf_form_the_pool(host: FakeHost, tmp_path: Path) -> None:
    for number in range(3):
        host.add_vf("0000:05:00.0", number, f"0000:05:10.{2 * number}", driver="vfio-pci")
    entry = DeviceConfig(kind="pci", pf="0000:05:00.0", vfs=(1, 2))
    with Testbed(fake_config(entry), tmp_path) as bed:
        given = [bed.launch(name)[0].devices[0].device.kernel_name for name in ("a", "b")]
    assert given == ["0000:05:10.2", "0000:05:10.4"]


def test_bind_lends_each_function_and_gives_back_exactly_what_it_had(host: FakeHost, tmp_path: Path) -> None:
    host.add_driver("qmigpci", vfio=True)
    host.add_pci("0000:01:00.0", driver="")
    host.add_vf("0000:05:00.0", 0, "0000:05:10.0", driver="igbvf")
    host.add_pci("0000:06:00.0", driver="e1000e")  # named by nobody: never touched
    before = dict(host.pci_drivers)
    with Testbed(fake_config(pci_pool("0000:01:00.0", "0000:05:10.0", bind="qmigpci")), tmp_path) as bed:
        source, _ = bed.launch("source")
        bed.launch("destination", incoming=True)
        assert host.pci_drivers["0000:01:00.0"] == host.pci_drivers["0000:05:10.0"] == "qmigpci"
        lease = host.files[f"{_workdir(host)}/lease"].splitlines()
        assert {"bind 0000:01:00.0 -", "bind 0000:05:10.0 igbvf"} <= set(lease)
    assert host.pci_drivers == before
    journal = host.journal
    assert journal.index("bind 0000:01:00.0 qmigpci") < journal.index(f"spawn {source.pid} source")
    # Each goes back only once the QEMU that held it has exited.
    for qemu, restored in zip(host.qemus, ("restore 0000:01:00.0 -", "restore 0000:05:10.0 igbvf")):
        exited = next(i for i, e in enumerate(journal) if e.startswith(f"exit {qemu.pid} "))
        assert journal.index(restored) > exited


def test_a_function_the_host_uses_is_never_bound(host: FakeHost, tmp_path: Path) -> None:
    host.add_driver("vfio-pci", vfio=True)
    host.add_pci("0000:05:00.0", driver="igb")
    host.in_use["0000:05:00.0"] = "network interface eth1 is up"
    with Testbed(fake_config(pci_pool("0000:05:00.0", bind="vfio-pci")), tmp_path) as bed, \
            pytest.raises(DeviceError, match=r"pci 0000:05:00.0: the host is using it \(network interface eth1 is up\)"):
        bed.launch("source")
    assert host.pci_drivers["0000:05:00.0"] == "igb" and host.qemus == []


def test_the_sweep_gives_bound_functions_back(host: FakeHost, tmp_path: Path) -> None:
    host.add_driver("qmigpci", vfio=True)
    host.add_vf("0000:05:00.0", 0, "0000:05:10.0", driver="igbvf")
    sigterm = signal.getsignal(signal.SIGTERM)
    bed = Testbed(fake_config(pci_pool("0000:05:10.0", bind="qmigpci")), tmp_path)
    bed.launch("source")
    host.closed = False  # killed: nothing of the testbed's clean-up runs
    for qemu in host.running():
        qemu.exit(-9)
    assert host.pci_drivers["0000:05:10.0"] == "qmigpci"
    sweep(fake_config(), RUN)
    assert host.pci_drivers["0000:05:10.0"] == "igbvf"
    bed._stack.pop_all()  # what a killed process would never run
    signal.signal(signal.SIGTERM, sigterm)


def test_a_pci_function_not_bound_to_vfio_is_refused_before_any_qemu(host: FakeHost, tmp_path: Path) -> None:
    host.add_pci("0000:3b:00.1", driver="ixgbevf")
    with Testbed(fake_config(pci_pool("0000:3b:00.1")), tmp_path) as bed, \
            pytest.raises(DeviceError, match=r"pci 0000:3b:00.1 is bound to ixgbevf, not a VFIO driver"):
        bed.launch("source")
    assert host.qemus == []


# --- 2. the clean-up ---------------------------------------------------------------------------


@pytest.mark.parametrize("raised", [None, RuntimeError("scenario failed"), KeyboardInterrupt("signal 15")],
                         ids=["closed", "exception", "interrupted"])
def test_clean_up_in_reverse_order_of_creation(
    host: FakeHost, tmp_path: Path, raised: BaseException | None,
) -> None:
    with contextlib.ExitStack() as outside:
        if raised is not None:
            outside.enter_context(pytest.raises(type(raised)))
        with Testbed(fake_config(mdev_entry()), tmp_path) as bed:
            source, _ = bed.launch("source")
            destination, _ = bed.launch("destination", incoming=True)
            built = len(host.journal)
            if raised is not None:
                raise raised
    uuids = [q.devices[0].device.kernel_name for q in (source, destination)]
    workdir = _workdir(host)
    trace = f"{TRACEFS}/instances/qmp-mig-{workdir.rsplit('/', 1)[-1]}"
    assert host.journal[built:] == [
        f"exit {destination.pid} 0",  # quit over QMP
        f"mdev remove {uuids[1]}",
        f"exit {source.pid} 0",
        f"mdev remove {uuids[0]}",
        f"trace stop {trace}",
        f"rm {workdir}",
        "close",
    ]
    assert [q.commands[-1][0] for q in host.qemus] == ["quit", "quit"]
    assert host.processes == {} and host.mdevs() == set() and not host.present(workdir)
    # Each QEMU's transcript, command line and stderr are in the artifacts.
    for name in ("source", "destination"):
        assert {f"{name}.cmdline", f"{name}.qmp.jsonl", f"{name}.stderr.log", f"{name}.console.log",
                f"{name}.events.json"} <= {p.name for p in tmp_path.iterdir()}


def test_the_lease_names_each_mdev_before_it_exists_and_each_pid_right_after(
    host: FakeHost, tmp_path: Path,
) -> None:
    with Testbed(fake_config(mdev_entry()), tmp_path) as bed:
        lease = f"{bed.workdir}/lease"
        source, _ = bed.launch("source")
        destination, _ = bed.launch("destination", incoming=True)
        qemus = (source, destination)
        uuids = [q.devices[0].device.kernel_name for q in qemus]
        assert host.files[lease].splitlines() == [
            f"trace {TRACEFS}/instances/qmp-mig-{bed.workdir.rsplit('/', 1)[-1]}",
            f"mdev {MDEV_DEVICES}/{uuids[0]}", f"pid {source.pid}",
            f"mdev {MDEV_DEVICES}/{uuids[1]}", f"pid {destination.pid}",
        ]
    for qemu, uuid in zip(qemus, uuids):
        created = host.journal.index(f"mdev create {uuid}")
        assert f"mdev {MDEV_DEVICES}/{uuid}\n" in host.file_at(lease, created - 1)
        spawned = host.journal.index(f"spawn {qemu.pid} {qemu.name}")
        assert host.journal[spawned + 1] == f"write {lease}"
        assert f"pid {qemu.pid}\n" in host.file_at(lease, spawned + 1)
        assert f"pid {qemu.pid}\n" not in host.file_at(lease, spawned)


def test_without_tracefs_the_testbed_runs_on_and_makes_no_trace_instance(
    host: FakeHost, tmp_path: Path,
) -> None:
    host.tracefs = False
    with Testbed(fake_config(mdev_entry()), tmp_path) as bed:
        assert not bed.kernel.available and bed.kernel.reason == f"no tracefs at {TRACEFS}"
        assert bed.check_kernel().available is False
        bed.launch("source")
        lease = host.files[f"{bed.workdir}/lease"].splitlines()
        # The instance is leased before it is made (a sweep skips one that never was).
        assert lease[0].startswith(f"trace {TRACEFS}/instances/") and lease[1].startswith("mdev ")
    assert not any(e.startswith("trace ") for e in host.journal)
    assert host.mdevs() == set() and not host.present(bed.workdir)


# --- 3. a QEMU that dies before its monitor answers ------------------------------------------------


def test_a_qemu_that_exits_before_its_monitor_answers_fails_once_and_leaves_nothing(
    host: FakeHost, tmp_path: Path,
) -> None:
    words = "qemu-system-x86_64: -machine q35,accel=kvm: failed to initialize kvm: Permission denied"
    host.fail_next_spawn = words + "\n"
    started = time.monotonic()
    with pytest.raises(QemuError) as failure, Testbed(fake_config(mdev_entry()), tmp_path) as bed:
        bed.launch("source")
    assert time.monotonic() - started < 10  # not the monitor's 30 s connect timeout
    message = str(failure.value)
    assert message.startswith("source: QEMU did not start (")
    assert message.count(words) == 1 and "exit status 1" in message
    assert failure.value.__cause__ is None and failure.value.__suppress_context__
    assert (tmp_path / "source.stderr.log").read_text().strip() == words
    # Its device and directory are gone all the same, and nothing runs.
    uuid = host.qemus[0].vfio_paths[0].rsplit("/", 1)[-1]
    assert f"mdev create {uuid}" in host.journal and f"mdev remove {uuid}" in host.journal
    assert host.mdevs() == set() and host.processes == {}
    assert not host.present(bed.workdir) and host.journal[-1] == "close"
    assert not any(d.startswith(f"{TRACEFS}/instances/") for d in host.dirs)


# --- 5. the sweep of what a killed run left -----------------------------------------------------------


def test_sweep_kills_only_our_qemus_and_removes_only_this_runs_leftovers(host: FakeHost) -> None:
    mine, also_mine = f"{WORKDIR}/testbed.{RUN}.000007", f"{WORKDIR}/testbed.{RUN}.000008"
    other_run = f"{WORKDIR}/testbed.4243-1700000001.000009"
    trace = f"{TRACEFS}/instances/qmp-mig-testbed.{RUN}.000007"
    host.add_dir(trace)
    host.put(f"{WORKDIR}/snapshots/guest-abc", "snapshot")
    a, b, c, d = (host.add_mdev(f"{n}0000000-0000-4000-8000-000000000000")[len(MDEV_DEVICES) + 1:]
                  for n in "abcd")
    gone = "e0000000-0000-4000-8000-000000000000"  # named by the lease, already removed
    host.put(f"{mine}/lease", f"trace {trace}\nmdev {MDEV_DEVICES}/{a}\npid 501\n"
                              f"mdev {MDEV_DEVICES}/{gone}\npid 502\n")
    host.put(f"{also_mine}/lease", f"mdev {MDEV_DEVICES}/{b}\npid 503\n")
    host.put(f"{other_run}/lease", f"mdev {MDEV_DEVICES}/{c}\npid 504\n")
    qemu = ["qemu-system-x86_64", "-name", "source", "-serial"]
    host.add_process(501, [*qemu, f"file:{mine}/source.console.log"])
    host.add_process(502, ["/usr/sbin/cron", "-f"])  # pid 502 was reused: not ours any more
    host.add_process(503, [*qemu, f"file:{also_mine}/source.console.log"])
    host.add_process(504, [*qemu, f"file:{other_run}/source.console.log"])
    before = len(host.journal)

    swept = sweep(fake_config(mdev_entry()), RUN)

    assert host.journal[before:] == [
        "exit 501 -9", f"mdev remove {a}", f"trace stop {trace}", f"rm {mine}",
        "exit 503 -9", f"mdev remove {b}", f"rm {also_mine}",
        "close",
    ]
    assert swept == [
        "pid 502", f"mdev {MDEV_DEVICES}/{gone}", "pid 501", f"mdev {MDEV_DEVICES}/{a}", f"trace {trace}",
        f"dir {mine}",
        "pid 503", f"mdev {MDEV_DEVICES}/{b}", f"dir {also_mine}",
    ]
    assert set(host.processes) == {502, 504}
    assert host.mdevs() == {c, d}
    assert host.present(other_run) and host.present(f"{WORKDIR}/snapshots/guest-abc")


def test_sweep_of_a_run_that_left_nothing_touches_nothing(host: FakeHost) -> None:
    host.put(f"{WORKDIR}/testbed.4243-1700000001.000009/lease", "pid 504\n")
    host.add_process(504, ["qemu-system-x86_64", f"{WORKDIR}/testbed.4243-1700000001.000009"])
    assert sweep(fake_config(mdev_entry()), RUN) == []
    assert host.journal[-1] == "close" and 504 in host.processes
