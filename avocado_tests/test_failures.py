# SPDX-License-Identifier: GPL-2.0-or-later
"""Migrations that do not complete: cancelled, destination killed, connection cut.

In each, the source device must walk back to RUNNING as the model says, the
guest keeps running with its data intact, and a recovery migration succeeds.
"""

from __future__ import annotations

import time

from qmp_mig import fsm
from qmp_mig.checks import check_equal, check_walk
from qmp_mig.migration import Migration
from qmp_mig.scenario import MigrationTest
from qmp_mig.testbed import RunningVm


class Failures(MigrationTest):
    """:avocado: enable
    :avocado: tags=vfio,migration,failure
    """

    def test_cancel_active(self) -> None:
        """migrate_cancel while RAM is being copied (status active)."""
        source, fifo, boot_walk = self.loaded_source()
        migration = self.throttled(source, "cancelled-destination")
        migration.cancel()
        migration.wait_destination_failed()
        for device_id, flags in source.flags.items():
            check_walk(f"cancelled-destination {device_id}", fsm.destination_events(flags, "cancelled"),
                       migration.destination.vfio_walk(device_id))
        self.check_recovered(source, migration, "cancelled", fifo, boot_walk)

    def test_destination_killed_precopy(self) -> None:
        """The destination QEMU dies (SIGKILL) while RAM is being copied."""
        source, fifo, boot_walk = self.loaded_source()
        migration = self.throttled(source, "killed-destination")
        migration.destination.kill()
        self.mark("killed-destination", "destination QEMU killed", kind="note")
        self.check_recovered(source, migration, "failed", fifo, boot_walk)

    def test_connection_cut(self) -> None:
        """The migration connection is cut mid-stream (QMP ``yank`` of the migration
        channel: the sockets are shut down as by a network failure)."""
        source, fifo, boot_walk = self.loaded_source()
        migration = self.throttled(source, "cut-destination")
        source.qemu.monitor.execute("yank", {"instances": [{"type": "migration"}]})
        self.mark(source.qemu.name, "migration connection yanked", kind="note")
        self.check_recovered(source, migration, "failed", fifo, boot_walk)

    def test_device_reuse_after_failure(self) -> None:
        """After a destination dies, the next destination opens the *same* device
        instances (not fresh ones) and the migration must succeed. Devices with a
        known issue for this scenario report an expected failure, with its reason."""
        source = self.bed.boot("source")
        fifo = self.load_guest(source)
        migration = self.throttled(source, "killed-destination")
        migration.destination.kill()
        self.mark("killed-destination", "destination QEMU killed", kind="note")
        result = migration.wait(timeout=120)
        check_equal("killed migration", "status", "failed", result.status)
        used = next(flags for qemu, flags in self.bed.vms if qemu is migration.destination)
        devices = [a.device for a in migration.destination.devices]
        reuse = Migration(source.qemu, self.bed.launch("reusing-destination", incoming=True,
                                                       reuse=(devices, used))[0],
                          uri=self.bed.migration_uri(), capabilities=self.capabilities,
                          parameters={**self.parameters, "max-bandwidth": self.bandwidth()})
        reuse.start()
        outcome = reuse.wait(timeout=300)
        known = self.known_issue("reuse-after-failure")
        if outcome.status != "completed":
            stderr = reuse.destination.stderr_tail()
            observed = f"migration into the reused devices ended {outcome.status}: {outcome.error}; " \
                       f"destination stderr: {stderr}"
            if known:
                self.cancel(f"expected failure: {known} (observed: {observed})")
            check_equal("migration into reused devices", "status", "completed", observed)
        destination = RunningVm(reuse.destination, self.bed.guest(reuse.destination), source.flags,
                                {d: fsm.destination_events(f) for d, f in source.flags.items()})
        self.verify_guest(destination, fifo, "destination with reused devices")
        self.check_kernel()

    def test_cancel_setup(self) -> None:
        """migrate_cancel while the migration is still in setup: held there by a
        destination socket whose listen queue is full, so QEMU's connect blocks."""
        source, fifo, boot_walk = self.loaded_source()
        path = f"{self.bed.workdir}/full-listener.sock"
        listener = self.bed.host.spawn(["python3", "-c", FULL_LISTENER, path],
                                       stderr_path=f"{self.bed.workdir}/full-listener.stderr")
        try:
            listener.stream.settimeout(30)
            check_equal("listener", "listen queue", b"full", listener.stream.recv(16).strip())
            qmp = source.qemu.monitor
            mark = len(qmp.events)
            qmp.execute("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})
            qmp.execute("migrate", {"uri": f"unix:{path}"})
            qmp.wait_event("MIGRATION", timeout=60, since=mark, match=lambda e: e.data.get("status") == "setup")
            check_equal(source.qemu.name, "status while connecting", "setup",
                        qmp.execute("query-migrate").get("status"))
            qmp.execute("migrate_cancel")
            qmp.wait_event("MIGRATION", timeout=60, since=mark,
                           match=lambda e: e.data.get("status") == "cancelled")
            self.mark(source.qemu.name, "cancelled in setup", kind="note")
        finally:
            listener.kill()
        # QEMU's connect was still blocked after the cancel; with the listener gone it
        # fails and QEMU drops the attempt's yank instance. Until then a new migrate is
        # refused ("duplicate yank instance"). QEMU sends no event for it: poll, bounded.
        deadline = time.monotonic() + 60
        while {"type": "migration"} in qmp.execute("query-yank"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{source.qemu.name}: the cancelled connect still holds its yank "
                                   "instance 60 s after its listener went away")
            time.sleep(0.2)
        self.check_recovered(source, None, "cancelled", fifo, boot_walk, outcome="")

    def test_cancel_device_phase(self) -> None:
        """migrate_cancel with the source VM stopped and its devices in STOP_COPY
        (held at pre-switchover): the devices walk back to RUNNING as the VM restarts."""
        source, fifo, boot_walk = self.loaded_source()
        migration = self.paused_at_switchover(source, "cancelled-destination")
        migration.cancel()
        self.check_recovered(source, migration, "cancelled", fifo, boot_walk, outcome="cancelled-stopped")

    def test_destination_killed_device_phase(self) -> None:
        """The destination dies while the source VM is stopped for the switchover;
        the switchover then fails and the source VM and devices run again."""
        source, fifo, boot_walk = self.loaded_source()
        migration = self.paused_at_switchover(source, "killed-destination")
        migration.destination.kill()
        self.mark("killed-destination", "destination QEMU killed", kind="note")
        source.qemu.monitor.execute("migrate-continue", {"state": "pre-switchover"})
        self.check_recovered(source, migration, "failed", fifo, boot_walk, outcome="cancelled-stopped")


# A unix socket whose listen queue is already full: a connect to it blocks.
FULL_LISTENER = """
import socket, sys, time
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen(0)
held = socket.socket(socket.AF_UNIX)
held.setblocking(False)
held.connect_ex(sys.argv[1])
probe = socket.socket(socket.AF_UNIX)
probe.setblocking(False)
print("full" if probe.connect_ex(sys.argv[1]) != 0 else "room", flush=True)
time.sleep(3600)
"""
