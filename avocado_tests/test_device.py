# SPDX-License-Identifier: GPL-2.0-or-later
"""Migration with our own test device (qmigdev) under DMA and P2P load, every
walk of the P2P/PRE_COPY flag combinations, and recovery from ERROR by reset."""

from __future__ import annotations

from qmp_mig import fsm
from qmp_mig.checks import check_equal, check_walk
from qmp_mig.device_scenario import DeviceTest
from qmp_mig.fsm import Flag
from qmp_mig.migration import Migration

COMBINATIONS = (
    Flag.STOP_COPY,
    Flag.STOP_COPY | Flag.P2P,
    Flag.STOP_COPY | Flag.PRE_COPY,
    Flag.STOP_COPY | Flag.P2P | Flag.PRE_COPY,
)


class DeviceMigration(DeviceTest):
    """:avocado: enable
    :avocado: tags=vfio,migration,device,dma,p2p,instances:4
    """

    def test_dma_and_p2p_load(self) -> None:
        """Two qmigdev functions, each DMA-ing sequence-numbered records into guest RAM,
        the first writing P2P into the second: no record lost or torn, device memory
        intact, nothing written while stopped or quiesced, every walk as the model says."""
        destination = self.migrate_loaded()
        assert destination is not None

    def test_flag_walks(self) -> None:
        """For each P2P/PRE_COPY combination, a VM starts and migrates; QEMU's events,
        the kernel's arcs and the device's own arc log all follow the FSM model."""
        for flags in COMBINATIONS:
            # QEMU migrates several VFIO devices only if all of them support P2P.
            specs = self.device_specs(flags, count=2 if flags & Flag.P2P else 1)
            source, _ = self.bed.launch(f"source-{_short(flags)}", specs=specs)
            source.start()
            destination, _ = self.bed.launch(f"destination-{_short(flags)}", incoming=True, specs=specs)
            migration = Migration(source, destination, uri=self.bed.migration_uri(),
                                  capabilities=self.capabilities, parameters=self.parameters)
            migration.start()
            result = migration.wait(timeout=300)
            check_equal(f"{flags.describe()} migration", "status", "completed", f"{result.status} {result.error}".strip())
            self.mark(source.name, f"{flags.describe()}: migrated, {result.summary()}", kind="note")
            for attachment in source.devices:
                check_walk(f"{source.name} {attachment.device_id} ({flags.describe()})",
                           [*fsm.vm_start_events(flags), *fsm.source_events(flags)],
                           source.vfio_walk(attachment.device_id))
                check_walk(f"{destination.name} {attachment.device_id} ({flags.describe()})",
                           fsm.destination_events(flags), destination.vfio_walk(attachment.device_id))
            for vm in (source, destination):
                self.check_device_view(vm, {a.device_id: flags for a in vm.devices})
            self.check_kernel()
            destination.shutdown()
            source.shutdown()


class ResetRecovery(DeviceTest):
    """:avocado: enable
    :avocado: tags=vfio,migration,device,reset,error,instances:4
    """

    def test_error_reset_then_migrate(self) -> None:
        """The device fails the arc into STOP_COPY and enters ERROR; QEMU resets it back
        to RUNNING, the migration fails and the VM runs on; DMA restarts, and a second
        migration succeeds with every check."""
        self.recover_from_error()

    def test_reuse_after_failed_destination(self) -> None:
        """A destination is killed mid-migration; its devices go back to RUNNING when it
        closes them, and a new destination on the same devices takes the migration."""
        self.reuse_after_failed_destination()


def _short(flags: Flag) -> str:
    """A VM name suffix: "stopcopy-p2p" for STOP_COPY|P2P."""
    return flags.describe().lower().replace("_", "").replace("|", "-")
