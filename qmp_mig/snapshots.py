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


def snapshot_name(host: Host, spec: VmSpec, devices: Sequence[DeviceConfig]) -> str:
    """``guest-<images>-<all>.mig``: a hash of the guest's kernel and initrd, then one
    of everything that makes a saved guest loadable (images, spec, devices, QEMU)."""
    images = host.run(["sha256sum", spec.kernel, spec.initrd]).stdout.split()[::2]
    qemu = host.run([spec.binary, "--version"]).stdout.splitlines()[0]
    identity = {
        "spec": asdict(spec),
        "images": images,
        # The pool, not the instance: a snapshot loads into any instance of its pool.
        "devices": [{"kind": d.kind, "parent": d.parent, "type": d.type, "bdfs": d.bdfs, "pf": d.pf,
                     "vfs": d.vfs, "options": d.options} for d in devices],
        "qemu": qemu,
    }
    whole = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return f"guest-{_images_hash(images)}-{whole}.mig"


def stale(names: Sequence[str], current: str) -> list[str]:
    """Snapshots of other guest images than ``current``'s: a rebuilt guest image
    never loads them again. Those of the same image (other devices) stay."""
    prefix = current.rsplit("-", 1)[0] + "-"
    return [n for n in names if n.startswith("guest-") and n.endswith(".mig") and not n.startswith(prefix)]


def _images_hash(digests: Sequence[str]) -> str:
    return hashlib.sha256(" ".join(digests).encode()).hexdigest()[:8]
