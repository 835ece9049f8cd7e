# SPDX-License-Identifier: GPL-2.0-or-later
"""Migration.wait() against fake QEMUs whose monitors script the migration: it returns
the status and error the source ends with (failed, cancelled, the destination gone,
a stream the destination refuses), at once, never after sleeping for its timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeHost

from qmp_mig.devices import MdevDevice
from qmp_mig.migration import Migration
from qmp_mig.qemu import QemuInstance, VmSpec
from qmp_mig.qmp import QmpError

URI = "unix:/var/tmp/w/migration-1.sock"
TIMEOUT = 60.0  # what wait() is given; each test must end far sooner
FAST = 5.0


class Pair:
    """A running source and an incoming destination, each with its own mdev."""

    def __init__(self, host: FakeHost, source: QemuInstance, destination: QemuInstance) -> None:
        self.host = host
        self.source = source
        self.destination = destination
        self.fake_source, self.fake_destination = host.qemus

    def migration(self, **options: Any) -> Migration:
        return Migration(self.source, self.destination, uri=URI, **options)

    def statuses(self, qemu: QemuInstance) -> list[str]:
        return [e.data["status"] for e in qemu.monitor.events if e.name == "MIGRATION"]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    host = FakeHost()
    host.add_mdev_parent("mtty", "mtty-2")
    host.add_dir("/var/tmp/w")
    with ExitStack() as stack:
        vms = []
        for name, incoming in (("source", False), ("destination", True)):
            device = stack.enter_context(MdevDevice(host, "mtty", "mtty-2").create())
            qemu = QemuInstance(host, VmSpec(kernel="/k", initrd="/i"), name, devices=[device],
                                workdir="/var/tmp/w", artifacts=tmp_path, incoming=incoming)
            stack.enter_context(qemu)
            vms.append(qemu.launch())
        vms[0].start(timeout=FAST)
        yield Pair(host, vms[0], vms[1])
    assert host.unknown == []
    assert host.mdevs() == set()  # each VM quit before its device was removed


def _waited(migration: Migration) -> tuple[Any, float]:
    started = time.monotonic()
    result = migration.wait(timeout=TIMEOUT)
    return result, time.monotonic() - started


def test_failed_after_active(pair: Pair) -> None:
    error = "vfio 6f2c7a0e: Failed to get the device's migration state: Input/output error"
    pair.fake_source.on("migrate", lambda qemu, _: qemu.after_reply(
        lambda: qemu.play("setup", "active", "failed", error=error)))
    migration = pair.migration()
    migration.start()
    result, seconds = _waited(migration)
    assert (result.status, result.error) == ("failed", error) and seconds < FAST
    assert pair.statuses(pair.source) == ["setup", "active", "failed"]
    assert result.stats["status"] == "failed"


def test_cancelled_while_active(pair: Pair) -> None:
    migration = pair.migration()
    migration.start()
    assert migration.wait_for_status("active", timeout=FAST).data["status"] == "active"
    migration.cancel()
    result, seconds = _waited(migration)
    assert (result.status, result.error) == ("cancelled", "") and seconds < FAST
    assert pair.statuses(pair.source) == ["setup", "active", "cancelling", "cancelled"]
    assert migration.wait_destination_failed(timeout=FAST).data["status"] == "failed"


@pytest.mark.parametrize("how", ["killed", "quit", "crashed"])
def test_destination_gone_while_active(pair: Pair, how: str) -> None:
    migration = pair.migration()
    migration.start()
    migration.wait_for_status("active", timeout=FAST)
    if how == "killed":
        pair.destination.kill()
    elif how == "quit":
        pair.destination.shutdown(timeout=FAST)
    else:
        pair.fake_destination.exit(-6, stderr="qemu-system-x86_64: vfio_load_state: error -5\n")
    result, seconds = _waited(migration)
    assert result.status == "failed" and seconds < FAST
    assert result.error == "Unable to write to socket: Connection reset by peer"


def _complete(pair: Pair, then: Callable[[], None]) -> None:
    pair.fake_source.on("migrate", lambda qemu, _: qemu.after_reply(
        lambda: qemu.play("setup", "active", "completed", then=then)))


def test_completed_but_the_destination_refuses_the_stream(pair: Pair) -> None:
    refusal = "load of migration failed: Invalid argument"
    _complete(pair, lambda: pair.fake_destination.finish_incoming(refuse=refusal))
    migration = pair.migration()
    migration.start()
    result, seconds = _waited(migration)
    assert result.status == "failed" and seconds < FAST
    assert result.error == f"destination failed to load: {refusal}"
    assert result.stats["status"] == "completed"  # the source's own statistics


def test_completed_waits_for_each_device_to_run_on_the_destination(pair: Pair) -> None:
    _complete(pair, pair.fake_destination.finish_incoming)
    migration = pair.migration(capabilities={"switchover-ack": True}, parameters={"downtime-limit": 20})
    migration.start()
    result, seconds = _waited(migration)
    assert (result.status, result.error) == ("completed", "") and seconds < FAST
    assert (result.total_ms, result.downtime_ms) == (1234, 56)
    device_id = pair.destination.devices[0].device_id
    assert any(e.name == "VFIO_MIGRATION" and e.data["device-id"] == device_id
               for e in pair.destination.monitor.events)
    # Both sides got the same capabilities and parameters before the stream was opened.
    for fake, opening in ((pair.fake_destination, "migrate-incoming"), (pair.fake_source, "migrate")):
        assert fake.capabilities == {"events": True, "switchover-ack": True}
        assert fake.parameters == {"downtime-limit": 20}
        names = [name for name, _ in fake.commands]
        assert names.index("migrate-set-capabilities") < names.index("migrate-set-parameters") \
            < names.index(opening)
    assert pair.fake_destination.commands[-1] == ("migrate-incoming", {"uri": URI, "exit-on-error": False})


def test_a_source_that_dies_fails_the_wait_at_once(pair: Pair) -> None:
    migration = pair.migration()
    migration.start()
    migration.wait_for_status("active", timeout=FAST)
    pair.fake_source.exit(-11, stderr="Segmentation fault\n")
    started = time.monotonic()
    with pytest.raises(QmpError, match="QEMU closed its monitor"):
        migration.wait(timeout=TIMEOUT)
    assert time.monotonic() - started < FAST
    assert pair.source.died(timeout=FAST) and pair.source.exit_status == -11


def test_no_final_status_within_the_timeout(pair: Pair) -> None:
    migration = pair.migration()
    migration.start()  # the fake's default: setup, then active for as long as nothing happens
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"source: no MIGRATION event within 0 s \(last events: .*MIGRATION"):
        migration.wait(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < FAST


def test_a_walk_is_read_once_the_device_has_settled(pair: Pair) -> None:
    """QEMU may say a migration failed before it moves the device back to RUNNING: the
    walk is read when its last state has come (awaited as an event), or after the
    timeout as it stands."""
    source, fake = pair.source, pair.fake_source
    device_id = source.devices[0].device_id

    def state(name: str) -> None:
        fake.emit("VFIO_MIGRATION", {"device-id": device_id, "qom-path": f"/machine/peripheral/{device_id}",
                                     "device-state": name})

    before = len(source.vfio_walk(device_id))
    state("pre-copy")
    fake.set_migration("failed", error="Unable to write to socket")
    threading.Timer(0.3, state, ["running"]).start()
    started = time.monotonic()
    walk = source.settled_vfio_walk(device_id, before + 2, timeout=FAST)
    assert [s.name for s in walk[before:]] == ["PRE_COPY", "RUNNING"]
    assert time.monotonic() - started < FAST
    # A state that never comes: the walk as it is, after the timeout.
    assert len(source.settled_vfio_walk(device_id, before + 3, timeout=0.2)) == before + 2
