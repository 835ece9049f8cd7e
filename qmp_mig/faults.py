# SPDX-License-Identifier: GPL-2.0-or-later
"""Faults injected from outside the guest, to prove the suite's checks bite.

Corrupting guest RAM through QEMU's own process memory is what a migration
bug looks like to the guest: the guest did not write it, QEMU's copy changed.
"""

from __future__ import annotations

import re

from .qemu import QemuInstance

_WRITE_WORD = """
import struct, sys
pid, address = int(sys.argv[1]), int(sys.argv[2], 16)
with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
    mem.seek(address)
    old = mem.read(8)
    mem.seek(address)
    mem.write(bytes(b ^ 0xFF for b in old))
print(old.hex())
"""


def host_address(qemu: QemuInstance, gpa: int) -> int:
    """QEMU's virtual address for a guest-physical address (HMP gpa2hva)."""
    text = qemu.monitor.execute("human-monitor-command", {"command-line": f"gpa2hva {gpa:#x}"})
    match = re.search(r"is (0x[0-9a-f]+)", str(text))
    if not match:
        raise RuntimeError(f"{qemu.name}: gpa2hva {gpa:#x} answered {text!r}")
    return int(match.group(1), 16)


def corrupt_guest_word(qemu: QemuInstance, gpa: int) -> bytes:
    """Invert the 8 bytes at ``gpa`` in the running VM's RAM; returns the old bytes."""
    address = host_address(qemu, gpa)
    result = qemu.host.run(["python3", "-c", _WRITE_WORD, str(qemu.pid), f"{address:#x}"])
    return bytes.fromhex(result.stdout.strip())
