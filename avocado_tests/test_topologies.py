# SPDX-License-Identifier: GPL-2.0-or-later
"""Shapes of migration beyond one hop with one device: ping-pong round trips,
and a VM with two VFIO devices that must all quiesce peer-to-peer traffic
before any of them stops.

Parameters: ``trips`` (round trips for ping-pong, default 5).
"""

from __future__ import annotations

from qmp_mig import fsm
from qmp_mig.checks import check_equal, check_ordering, check_walk
from qmp_mig.fsm import State
from qmp_mig.scenario import MigrationTest

S = State


class Topologies(MigrationTest):
    """:avocado: enable
    :avocado: tags=vfio,migration,topology
    """

    def test_ping_pong(self) -> None:
        """N round trips; each destination is the next source; the memory agent runs throughout."""
        trips = int(self.params.get("trips", default=5))
        vm = self.bed.boot("source")
        fifo = self.load_guest(vm)
        for hop in range(1, 2 * trips + 1):
            source = vm
            vm, result = self.migrate(source, name=f"hop{hop}")
            self.check_migrated_walks(source, vm)
            status = self.memory(vm).status()
            check_equal(f"hop {hop}", "memory agent alive", True, status.get("alive"))
            self.mark(vm.qemu.name, f"hop {hop}: {result.summary()}; agent {status.get('rewrites')} rewrites")
            self.check_kernel()
            source.guest.close()
            source.qemu.shutdown()  # frees its memory and devices' QEMU for the next hops
        self.whiteboard = f"{2 * trips} migrations; last {result.summary()}"
        self.verify_guest(vm, fifo, f"after {2 * trips} migrations")
        self.check_kernel()

    def test_two_devices(self) -> None:
        """Two devices: all reach *_P2P before any moves toward STOP; on the destination
        all reach RUNNING_P2P before any reaches RUNNING.

        :avocado: tags=instances:4
        """
        specs = [*self.config.devices, *self.config.devices]
        source = self.bed.boot("source", specs=specs)
        if not all(fsm.Flag.P2P in f for f in source.flags.values()):
            self.cancel("the devices do not support P2P: nothing to order")
        fifo = self.load_guest(source)
        mark = len(source.qemu.monitor.events)
        migration = self.start_migration(source, specs=specs)
        destination, _ = self.finish_migration(source, migration)
        self.check_migrated_walks(source, destination)
        check_ordering("source", source.qemu.vfio_timed_walks(mark),
                       {S.PRE_COPY_P2P, S.RUNNING_P2P}, {S.STOP, S.STOP_COPY})
        restored = destination.qemu.vfio_timed_walks()
        check_ordering("destination", restored, {S.RUNNING_P2P}, {S.RUNNING})
        for device_id, walk in restored.items():
            check_walk(f"destination {device_id}", fsm.destination_events(source.flags[device_id]),
                       [s for _, s in walk])
        self.verify_guest(destination, fifo, "destination")
        self.check_kernel()
