# SPDX-License-Identifier: GPL-2.0-or-later
"""``system_reset`` of a freshly migrated destination, then a further migration."""

from __future__ import annotations

from qmp_mig import fsm
from qmp_mig.checks import check_equal, check_walk
from qmp_mig.scenario import MigrationTest
from qmp_mig.testbed import RunningVm


class Reset(MigrationTest):
    """:avocado: enable
    :avocado: tags=vfio,migration,reset
    """

    def test_reset_then_migrate(self) -> None:
        """The migrated guest is reset (it reboots); its devices stay RUNNING as
        far as migration goes; the rebooted guest then migrates again intact."""
        source = self.bed.boot("source")
        self.load_guest(source)
        destination, _ = self.migrate(source)
        self.check_migrated_walks(source, destination)
        qemu = destination.qemu
        since = len(qemu.monitor.events)
        destination.guest.close()
        qemu.monitor.execute("system_reset")
        qemu.monitor.wait_event("RESET", timeout=60, since=since)
        self.mark(qemu.name, "system_reset: guest rebooting", kind="note")
        guest = self.bed.guest(qemu)  # waits for the reboot
        for device_id, flags in destination.flags.items():
            check_walk(f"{qemu.name} {device_id} (after reset)", fsm.destination_events(flags),
                       qemu.vfio_walk(device_id))
        check_equal(qemu.name, "run state after reset", "running", qemu.status())
        rebooted = RunningVm(qemu, guest, destination.flags, destination.start_walk)
        fifo = self.load_guest(rebooted)
        final, _ = self.migrate(rebooted, name="second-destination")
        self.check_migrated_walks(rebooted, final)
        self.verify_guest(final, fifo, "after reset + migration")
        self.check_kernel()
