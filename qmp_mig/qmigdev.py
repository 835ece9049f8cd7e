# SPDX-License-Identifier: GPL-2.0-or-later
"""The lab host's view of one of our test devices: a qmigdev instance
(devices/qmigdev, an mdev) or an edu function on qmigpci (devices/qmigpci, a
vfio-pci variant driver). Both keep their migration state, the arcs they took,
their counters and their fault knobs in sysfs, with the same layout and names.

This is the device's own account, read from outside the guest and QEMU: a third
view of the walk next to QEMU's events and the kernel probe, and the only place
that sees what the device did while nobody was supposed to be looking (DMA
while stopped, P2P while quiesced).
"""

from __future__ import annotations

from dataclasses import dataclass

from .fsm import Flag, State
from .hosts import Host

PARENT = "qmigdev"
# The sysfs directory (under the device's) of each kind's test device.
DRIVERS = {"mdev": "qmigdev", "pci": "qmigpci"}

# Each mdev type offers some flags; per instance, P2P and PRE_COPY can be switched
# off (sysfs enable_p2p / enable_precopy) before a VM opens it.
FULL_TYPE = "qmigdev-full"

# Knob -> the value that disarms it.
FAULTS = {
    "fail_arc": "none",
    "dma_after_stop": "0",
    "p2p_in_running_p2p": "0",
    "corrupt_stream": "0",
    "truncate_stream": "0",
    "drop_state": "0",
    "lie_data_size": "off",
    "lie_precopy_info": "off",
    "delay_save_ms": "0",
    "stale_state_on_close": "0",
    "refuse_reset": "off",
}

# Counters that must stay 0 in a correct migration, and what a non-zero one means.
MISBEHAVIOUR = {
    "writes_while_stopped": "device wrote guest memory {n} time(s) while stopped",
    "p2p_while_quiesced": "device issued {n} P2P write(s) while quiesced (RUNNING_P2P/PRE_COPY_P2P)",
    "rx_while_stopped": "{n} P2P write(s) landed in the device while it was stopped",
}


def flag_attributes(flags: Flag, kind: str = "mdev") -> dict[str, str]:
    """sysfs settings that make a test device (a qmigdev-full instance, or a
    qmigpci function at its next open) offer exactly ``flags``."""
    driver = DRIVERS[kind]
    return {
        f"{driver}/enable_p2p": "1" if Flag.P2P in flags else "0",
        f"{driver}/enable_precopy": "1" if Flag.PRE_COPY in flags else "0",
    }


def fresh_account(kind: str = "mdev") -> dict[str, str]:
    """sysfs writes that start a test device's own account (arc log, counters) afresh
    for the VM about to open it: a PCI function lent to several VMs of one test keeps
    both from the one before."""
    driver = DRIVERS[kind]
    return {f"{driver}/arcs": "clear", f"{driver}/clear_counters": "1"}


@dataclass(frozen=True)
class Arc:
    cur: State
    new: State
    failed: bool

    def describe(self) -> str:
        return f"{self.cur.name}->{self.new.name}" + (" FAILED" if self.failed else "")


class QmigdevError(RuntimeError):
    """The instance's sysfs directory is missing or answered something unexpected."""


class Qmigdev:
    """One test device on ``host``, by its device's sysfs path
    (``/sys/bus/mdev/devices/<uuid>``, or ``/sys/bus/pci/devices/<bdf>`` for ``kind``
    "pci")."""

    def __init__(self, host: Host, sysfs_path: str, kind: str = "mdev") -> None:
        self.host = host
        self.uuid = sysfs_path.rstrip("/").rsplit("/", 1)[-1]  # or the BDF
        self.driver = DRIVERS[kind]
        self.path = f"{sysfs_path}/{self.driver}"

    def read(self, name: str) -> str:
        result = self.host.run(["cat", f"{self.path}/{name}"], check=False)
        if result.returncode != 0:
            raise QmigdevError(f"{self.driver} {self.uuid}: cannot read {name}: {result.stderr.strip()}")
        return result.stdout.strip()

    def write(self, name: str, value: str) -> None:
        self.host.write_file(f"{self.path}/{name}", value)

    def state(self) -> State:
        text = self.read("state")
        try:
            return State[text.upper()]
        except KeyError:
            raise QmigdevError(f"{self.driver} {self.uuid}: state {text!r} is not a VFIO state") from None

    def counters(self) -> dict[str, int]:
        pairs = (line.split() for line in self.read("counters").splitlines())
        return {name: int(value) for name, value in pairs}

    def arcs(self) -> list[Arc]:
        """The arcs the device took (its last 64), oldest first."""
        out = []
        for line in self.read("arcs").splitlines():
            step, _, note = line.partition(" ")
            cur, _, new = step.partition("->")
            out.append(Arc(State[cur], State[new], note == "FAILED"))
        return out

    def arm(self, knob: str, value: str) -> None:
        if knob not in FAULTS:
            raise QmigdevError(f"unknown {self.driver} fault {knob!r}; expected one of {', '.join(FAULTS)}")
        self.write(knob, value)

    def misbehaviour(self) -> list[str]:
        """What the counters say the device did that a correct device never does."""
        counters = self.counters()
        return [text.format(n=counters[name]) for name, text in MISBEHAVIOUR.items() if counters.get(name)]
