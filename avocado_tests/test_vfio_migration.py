# SPDX-License-Identifier: GPL-2.0-or-later
"""Live migration of a VM that owns VFIO devices: the foundation scenarios.

Parameters (``-p key=value``): ``host_config`` (required: the TOML file the lab
writes, or your KVM host's); ``memory_mb`` / ``dirty_mb`` override the host
configuration's [workload] for the memory agent.
"""

from __future__ import annotations

import os
from pathlib import Path

from avocado import Test

from qmp_mig import config as configuration
from qmp_mig import fsm
from qmp_mig.agents import MTTY_PATTERN, MemoryAgent, MttyAgent
from qmp_mig.checks import check_bytes, check_equal, check_memory, check_walk
from qmp_mig.migration import Migration, MigrationResult
from qmp_mig.testbed import RunningVm, Testbed


class VfioMigration(Test):
    """:avocado: tags=vfio,migration,foundation"""

    def setUp(self) -> None:
        path = self.params.get("host_config", default=os.environ.get("QMP_MIG_HOST_CONFIG"))
        if not path:
            self.cancel("no host_config parameter (qmp-mig run passes the lab's)")
        config = configuration.load(path)
        self.bed = Testbed(config, Path(self.logdir) / "artifacts")
        workload = config.workload
        self.memory_mb = int(self.params.get("memory_mb", default=workload.memory_mb))
        self.dirty_mb = int(self.params.get("dirty_mb", default=workload.dirty_mb))
        self.agent_timeout = float(workload.agent_timeout)

    def tearDown(self) -> None:
        if hasattr(self, "bed"):
            self.bed.close()

    # --- steps shared by the scenarios ------------------------------------------

    def memory(self, vm: RunningVm) -> MemoryAgent:
        return MemoryAgent(vm.guest, timeout=self.agent_timeout)

    def load_guest(self, vm: RunningVm) -> dict[str, bytes]:
        """Start the memory agent and put bytes into every mtty FIFO."""
        started = self.memory(vm).start(self.memory_mb, self.dirty_mb)
        self.log.info("memory agent: %s", started)
        fifo = {}
        mtty = MttyAgent(vm.guest)
        for port in mtty.ports():
            mtty.write(port, MTTY_PATTERN)
            fifo[f"{port.bdf}/{port.index}"] = MTTY_PATTERN
        self.log.info("mtty FIFOs loaded: %s", sorted(fifo))
        return fifo

    def verify_guest(self, vm: RunningVm, fifo: dict[str, bytes], where: str) -> None:
        report = self.memory(vm).verify()
        self.log.info("memory verify: %d pages, %d rewrites during the run, %d bad",
                      report["pages"], report["rewrites"], report["bad_pages"])
        check_memory(where, report)
        agent = MttyAgent(vm.guest)
        for port in agent.ports():
            key = f"{port.bdf}/{port.index}"
            check_bytes(f"{where}: mtty {key}", fifo[key], agent.read(port))

    def migrate(
        self, source: RunningVm, parameters: dict[str, int] | None = None
    ) -> tuple[RunningVm, MigrationResult]:
        destination, _ = self.bed.launch("destination", incoming=True)
        migration = Migration(source.qemu, destination, uri=self.bed.migration_uri(),
                              parameters=parameters)
        migration.start()
        result = migration.wait()
        self.log.info("migration %s", result.summary())
        self.whiteboard = result.summary()
        check_equal("migration", "status", "completed", f"{result.status} {result.error}".strip())
        guest = self.bed.guest(destination)
        start = {d: fsm.destination_events(f) for d, f in source.flags.items()}
        return RunningVm(destination, guest, source.flags, start), result

    # --- scenarios --------------------------------------------------------------

    def test_migrate(self) -> None:
        """A VM with an mtty device migrates; walks, guest RAM and FIFO bytes check out."""
        source = self.bed.boot("source")
        fifo = self.load_guest(source)
        destination, _ = self.migrate(source)

        for device_id, flags in source.flags.items():
            check_walk(f"source {device_id}", source.expected_walk(device_id, fsm.source_events(flags)),
                       source.qemu.vfio_walk(device_id))
            check_walk(f"destination {device_id}", fsm.destination_events(flags),
                       destination.qemu.vfio_walk(device_id))
        check_equal("source", "run state", "postmigrate", source.qemu.status())
        check_equal("destination", "run state", "running", destination.qemu.status())
        self.verify_guest(destination, fifo, "destination")

    def test_cancel_then_migrate(self) -> None:
        """A migration cancelled in flight leaves the source running and intact;
        the next migration succeeds."""
        source = self.bed.boot("source")
        fifo = self.load_guest(source)
        boot_walk = {d: source.qemu.vfio_walk(d) for d in source.flags}

        # Throttled so the cancel lands while RAM is still being copied, however
        # fast the host; the recovery migration gets the original bandwidth back.
        bandwidth = source.qemu.monitor.execute("query-migrate-parameters")["max-bandwidth"]
        doomed, _ = self.bed.launch("cancelled-destination", incoming=True)
        migration = Migration(source.qemu, doomed, uri=self.bed.migration_uri(),
                              parameters={"max-bandwidth": 1 << 20})
        migration.start()
        migration.wait_for_status("active", timeout=120)
        migration.cancel()
        result = migration.wait(timeout=120)
        check_equal("cancelled migration", "status", "cancelled", result.status)
        migration.wait_destination_failed()
        for device_id, flags in source.flags.items():
            walk = source.qemu.vfio_walk(device_id)[len(boot_walk[device_id]):]
            check_walk(f"source {device_id} (cancel)", fsm.source_events(flags, "cancelled"), walk)
            check_walk(f"cancelled destination {device_id}", fsm.destination_events(flags, "cancelled"),
                       doomed.vfio_walk(device_id))
        check_equal("source after cancel", "run state", "running", source.qemu.status())
        doomed.shutdown()

        # The guest is whole on the source; then a real migration succeeds.
        report = self.memory(source).status()
        self.log.info("memory agent still running after cancel: %s", report)
        destination, _ = self.migrate(source, parameters={"max-bandwidth": bandwidth})
        check_equal("destination", "run state", "running", destination.qemu.status())
        self.verify_guest(destination, fifo, "destination after cancel + migrate")
