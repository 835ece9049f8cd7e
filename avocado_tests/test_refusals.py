# SPDX-License-Identifier: GPL-2.0-or-later
"""Migrations QEMU must refuse, asserted by their exact text, and a destination
that refuses the stream it is sent.

Blockers need no running guest: a paused QEMU with the device is enough, as
QEMU checks them when ``migrate`` is issued.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from qmp_mig import fsm
from qmp_mig.checks import check_equal, check_walk
from qmp_mig.config import DeviceConfig
from qmp_mig.qmp import QmpError
from qmp_mig.scenario import MigrationTest


class Refusals(MigrationTest):
    """:avocado: enable
    :avocado: tags=vfio,migration,refusal
    """

    def refused(self, name: str, options: dict[str, str], capabilities: dict[str, bool],
                expected: str, devices: Sequence[DeviceConfig] | None = None) -> None:
        """``migrate`` from a VM whose devices (default: the configuration's) have
        ``options`` fails with exactly ``expected`` (``{device}`` stands for each
        device's kernel name)."""
        devices = self.config.devices if devices is None else devices
        specs = [dataclasses.replace(d, options={**d.options, **options}) for d in devices]
        vm, _ = self.bed.launch(name, specs=specs)
        reasons = [expected.format(device=a.device.kernel_name) for a in vm.devices]
        if capabilities:
            vm.monitor.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": k, "state": v} for k, v in capabilities.items()]})
        else:  # a blocker is listed before anyone tries
            blocked = vm.monitor.execute("query-migrate").get("blocked-reasons", [])
            check_equal(name, "query-migrate blocked-reasons", reasons, blocked)
        try:
            vm.monitor.execute("migrate", {"uri": self.bed.migration_uri()})
        except QmpError as exc:
            self.mark(name, f"migrate refused: {exc.desc}", kind="note")
            check_equal(name, "migrate error", reasons[0], exc.desc)
        else:
            check_equal(name, "migrate", f"refused with {reasons[0]!r}", "accepted")
        for attachment in vm.devices:  # a refused migration must not touch the device
            check_walk(f"{name} {attachment.device_id}", [], vm.vfio_walk(attachment.device_id))

    def test_blocker_enable_migration_off(self) -> None:
        """enable-migration=off blocks migration."""
        self.refused("migration-off", {"enable-migration": "off"}, {},
                     "{device}: Migration is disabled for VFIO device")

    def test_blocker_no_dirty_tracking(self) -> None:
        """enable-migration=auto on a device without device or IOMMU dirty tracking
        (the lab kernel has no IOMMUFD) blocks migration."""
        self.refused("migration-auto", {"enable-migration": "auto"}, {},
                     "{device}: VFIO device doesn't support device and IOMMU dirty tracking")

    def test_postcopy_refused(self) -> None:
        """postcopy-ram with a VFIO device: QEMU accepts the capability, refuses the migration."""
        self.refused("postcopy", {}, {"postcopy-ram": True},
                     "{device}: VFIO migration is not supported with postcopy migration")

    def test_blocker_device_without_migration(self) -> None:
        """A function whose driver has no migration support (an SR-IOV VF on plain
        vfio-pci: the [unmigratable_device] entry) blocks migration.

        :avocado: tags=unmigratable,instances:1
        """
        device = self.config.unmigratable_device
        if device is None:
            self.cancel("not run: the host configuration names no [unmigratable_device] "
                        "(a function whose driver cannot migrate, e.g. a VF on vfio-pci)")
            return
        self.refused("unmigratable", {}, {}, "{device}: VFIO migration is not supported in kernel", [device])

    def test_destination_refuses_stream(self) -> None:
        """A destination whose device is another type fails to load the device state;
        the source runs on intact and a recovery migration succeeds."""
        others = []
        for spec in self.config.devices:
            if spec.kind != "mdev":
                self.cancel("needs mdev devices: a PCI device's type cannot be changed here")
            listing = self.bed.host.run(["ls", f"/sys/class/mdev_bus/{spec.parent}/mdev_supported_types"])
            choices = [t for t in listing.stdout.split() if t != spec.type]
            if not choices:
                self.cancel(f"{spec.parent} offers no other mdev type than {spec.type}")
            others.append(dataclasses.replace(spec, type=choices[0], expect_flags=None))
        source = self.bed.boot("source")
        fifo = self.load_guest(source)
        boot_walk = {d: source.qemu.vfio_walk(d) for d in source.flags}
        migration = self.start_migration(source, "mismatched-destination", specs=others)
        self.mark("mismatched-destination", f"device types {[s.type for s in others]}", kind="note")
        migration.wait_destination_failed(timeout=300)
        for device_id, flags in source.flags.items():
            check_walk(f"mismatched-destination {device_id}", fsm.destination_events(flags, "cancelled"),
                       migration.destination.vfio_walk(device_id))
        self.check_recovered(source, migration, "failed", fifo, boot_walk)
