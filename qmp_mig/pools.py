# SPDX-License-Identifier: GPL-2.0-or-later
"""Device pools: every QEMU a scenario starts gets its own instance of a device kind.

A ``[[device]]`` entry names one kind of device and its instances: a list of
PCI functions (``bdf = [...]``), the VFs of a physical function (``pf`` and
``vfs``), or mdevs of one type (made on demand, at most ``count`` at once).
Source, destination, every ping-pong hop and the snapshot builder each take a
free instance and give it back once their QEMU has exited. On one host two
QEMUs can never share a PCI function (the second cannot open a VFIO group the
first holds), so a pool that runs dry is an error in our words, and the suite
refuses a configuration whose pools are smaller than a scenario needs before
anything starts (:func:`shortfalls`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .config import DeviceConfig
from .devices import DeviceError
from .hosts import Host


class PoolExhausted(DeviceError):
    """Every instance of a device kind is held by a running QEMU."""


def describe(spec: DeviceConfig) -> str:
    """The kind of device an entry names, as a person reads it."""
    if spec.kind == "mdev":
        return f"mdev {spec.parent}/{spec.type}"
    if spec.pf:
        return f"VFs {_ranges(spec.vfs)} of {spec.pf}"
    return f"pci {', '.join(spec.bdfs)}"


def _ranges(numbers: Iterable[int]) -> str:
    ordered = sorted(numbers)
    return f"{ordered[0]}-{ordered[-1]}" if len(ordered) > 1 else str(ordered[0])


def pool_key(spec: DeviceConfig) -> tuple[object, ...]:
    """What makes two entries the same pool: the instances, not the options or
    sysfs attributes a scenario gives them (``dataclasses.replace`` keeps this)."""
    return (spec.kind, spec.parent, spec.type, spec.bdfs, spec.pf, spec.vfs)


def pci_functions(host: Host, spec: DeviceConfig) -> list[str]:
    """The PCI addresses of a pool: as listed, or the PF's VFs read from sysfs.
    A VF that does not exist is an error naming the PF and the number."""
    if not spec.pf:
        return list(spec.bdfs)
    functions = []
    for number in spec.vfs:
        link = f"/sys/bus/pci/devices/{spec.pf}/virtfn{number}"
        target = host.run(["readlink", "-f", link], check=False).stdout.strip()
        if not target or not host.exists(link):
            have = host.run(["cat", f"/sys/bus/pci/devices/{spec.pf}/sriov_numvfs"], check=False).stdout.strip()
            raise DeviceError(f"{spec.pf} has no VF {number} (it has {have or 'no'} VFs; "
                              f"sriov_numvfs makes them)")
        functions.append(target.rsplit("/", 1)[-1])
    return functions


@dataclass
class DevicePool:
    """Which instances of one entry are free; the testbed makes and releases them."""

    spec: DeviceConfig
    label: str  # how the configuration names the entry: "[[device]] #1", "[test_device]"
    members: list[str] | None  # PCI addresses; None for mdevs (made on demand)
    holders: dict[str, str] = field(default_factory=dict)  # instance -> the VM holding it

    @property
    def size(self) -> int | None:
        """How many instances can be held at once; None: as many as the host makes."""
        return len(self.members) if self.members is not None else self.spec.count

    def take(self, holder: str) -> str | None:
        """A free PCI address for ``holder`` (None for an mdev: the caller makes one,
        then registers it with :meth:`hold`)."""
        if self.members is None:
            if self.size is not None and len(self.holders) >= self.size:
                raise self._exhausted(holder)
            return None
        free = [m for m in self.members if m not in self.holders]
        if not free:
            raise self._exhausted(holder)
        self.holders[free[0]] = holder
        return free[0]

    def hold(self, instance: str, holder: str) -> None:
        """``instance`` (already taken) now belongs to ``holder``: a VM that reuses a device."""
        self.holders[instance] = holder

    def give_back(self, instance: str) -> None:
        self.holders.pop(instance, None)

    def _exhausted(self, holder: str) -> PoolExhausted:
        held = ", ".join(f"{instance} by {vm}" for instance, vm in self.holders.items())
        return PoolExhausted(
            f"{self.label} ({describe(self.spec)}): no free instance for {holder}; all {self.size} "
            f"are held ({held}). Give the entry more instances (the suite refuses a pool too small "
            "for a scenario before it starts; see `qmp-mig check`)"
        )


DEFAULT_NEED = 2  # a source and a destination


@dataclass(frozen=True)
class Need:
    """What one test holds at once: ``instances`` of each device kind it uses, from
    the configuration's ``table``: "device" (every [[device]] entry), "test_device"
    or "unmigratable_device"."""

    instances: int
    table: str = "device"


def shortfalls(size: int | None, needs: Mapping[str, Need], table: str) -> list[str]:
    """The tests that need more instances of an entry of ``size`` at once than it has."""
    if size is None:
        return []
    return [f"{test} needs {need.instances}" for test, need in sorted(needs.items())
            if need.table == table and need.instances > size]
