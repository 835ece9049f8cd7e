# SPDX-License-Identifier: GPL-2.0-or-later
"""Booted-guest snapshots: a ready guest in seconds instead of a cold boot.

A guest is booted once, then migrated to a file (``migrate file:``); every
later scenario restores that file into a fresh QEMU with fresh devices, like
a destination does. A snapshot is only valid for the exact guest, VM spec,
device types and QEMU that made it, so its name is a hash of all of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict

from .config import DeviceConfig
from .hosts import Host
from .qemu import VmSpec


def snapshot_key(host: Host, spec: VmSpec, devices: Sequence[DeviceConfig]) -> str:
    """Hash of everything that makes a saved guest loadable: images, spec, devices, QEMU."""
    images = host.run(["sha256sum", spec.kernel, spec.initrd]).stdout.split()[::2]
    qemu = host.run([spec.binary, "--version"]).stdout.splitlines()[0]
    identity = {
        "spec": asdict(spec),
        "images": images,
        "devices": [{"kind": d.kind, "parent": d.parent, "type": d.type, "bdf": d.bdf,
                     "options": d.options} for d in devices],
        "qemu": qemu,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
