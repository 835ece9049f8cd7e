# SPDX-License-Identifier: GPL-2.0-or-later
"""A VM with VFIO devices migrates, under the variant's QEMU options.

The option matrix (variants/*.yaml) runs this with capabilities, parameters
and device options such as switchover-ack, multifd device-state transfer, a
low downtime limit or a bandwidth limit; see qmp_mig/scenario.py for the
parameters.
"""

from __future__ import annotations

from qmp_mig.checks import check_equal
from qmp_mig.scenario import MigrationTest


class VfioMigration(MigrationTest):
    """:avocado: enable
    :avocado: tags=vfio,migration,options
    """

    def test_migrate(self) -> None:
        """Walks on both sides, the kernel's arcs, guest RAM and device bytes all check out."""
        source = self.bed.boot("source")
        fifo = self.load_guest(source)
        destination, _ = self.migrate(source)
        self.check_migrated_walks(source, destination)
        check_equal("source", "run state", "postmigrate", source.qemu.status())
        check_equal("destination", "run state", "running", destination.qemu.status())
        self.verify_guest(destination, fifo, "destination")
        self.check_kernel()
