# SPDX-License-Identifier: GPL-2.0-or-later
"""qmp-mig: live-migration tests for VMs that own VFIO devices."""
