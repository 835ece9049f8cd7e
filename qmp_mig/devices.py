# SPDX-License-Identifier: GPL-2.0-or-later
"""VFIO devices a VM can own, behind one small interface.

A device is something on a host with a sysfs path that ``vfio-pci`` accepts,
a set of migration flags the kernel reports, and a way to give it back.
Mediated devices are created and removed by us; passthrough PCI functions are
named by the configuration and checked (binding them, when the configuration
asks for it, is qmp_mig/binding.py's job).
"""

from __future__ import annotations

import errno
import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from . import binding
from .fsm import Flag, State
from .hosts import Host, HostError

# Our VFIO user (it runs on the host): asked here for one device's flags and state.
# Its source comes as the first line of its stdin, the requests after it: a command
# line that long is more than some SSH servers take (dropbear's limit is 9000 bytes).
_HOST_VFIO = (Path(__file__).parent / "host_vfio.py").read_text()
_RUN_FIRST_LINE = "import json, sys; exec(json.loads(sys.stdin.readline()))"

# vfio-pci properties every migration test needs: report each state change.
BASE_VFIO_OPTIONS = {"migration-events": "on"}


class DeviceError(RuntimeError):
    """A device could not be created, probed or released."""


@dataclass(frozen=True)
class KernelView:
    """What the kernel says about a device (VFIO_DEVICE_FEATURE)."""

    flags: Flag
    state: State | None  # None: the driver has no migration support (no flags either)


class VfioDevice(ABC):
    """A VFIO device on ``host`` usable by one VM at a time."""

    host: Host
    name: str
    options: dict[str, str]

    @property
    @abstractmethod
    def sysfs_path(self) -> str:
        """The path given to ``-device vfio-pci,sysfsdev=``."""

    @property
    @abstractmethod
    def kernel_name(self) -> str:
        """The device's name in the kernel (mdev UUID, PCI address), as traces name it."""

    @abstractmethod
    def release(self) -> None:
        """Give the device back (remove what we created). Idempotent."""

    def probe(self) -> KernelView:
        """Ask the kernel directly; the device must not be open in a VM."""
        asks = [{"op": "open", "dev": "d", "path": self.sysfs_path},
                {"op": "get", "dev": "d", "feature": "migration"},
                {"op": "get", "dev": "d", "feature": "state"}, {"op": "bye"}]
        lines = [json.dumps(_HOST_VFIO), *map(json.dumps, asks)]
        result = self.host.run(["python3", "-c", _RUN_FIRST_LINE], stdin="".join(f"{line}\n" for line in lines).encode(),
                               check=False, timeout=60)
        try:
            opened, flags, state = (json.loads(line) for line in result.stdout.splitlines()[:3])
        except ValueError:
            raise DeviceError(
                f"{self.name}: migration probe printed no answer: {result.stderr.strip()}"
            ) from None
        if not opened["ok"]:
            raise DeviceError(f"{self.name}: migration probe failed: {opened['error']}")
        if not flags["ok"] and flags["errno"] == errno.ENOTTY:
            # The driver has no migration support (plain vfio-pci on most functions).
            return KernelView(Flag(0), None)
        for answer in (flags, state):
            if not answer["ok"]:
                raise DeviceError(f"{self.name}: migration probe failed: {answer['error']}")
        return KernelView(Flag(flags["value"]), State(state["value"]))

    def qemu_args(self, device_id: str) -> list[str]:
        props = {"id": device_id, "sysfsdev": self.sysfs_path, **BASE_VFIO_OPTIONS, **self.options}
        return ["-device", "vfio-pci," + ",".join(f"{k}={v}" for k, v in props.items())]

    def __enter__(self) -> VfioDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class MdevDevice(VfioDevice):
    """A mediated device instance of ``mdev_type`` under ``parent``, made by us."""

    host: Host
    parent: str
    mdev_type: str
    options: dict[str, str] = field(default_factory=dict)
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    _created: bool = field(default=False, init=False)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"mdev {self.mdev_type} {self.uuid}"

    @property
    def sysfs_path(self) -> str:
        return f"/sys/bus/mdev/devices/{self.uuid}"

    @property
    def kernel_name(self) -> str:
        return self.uuid

    def create(self) -> MdevDevice:
        create = f"/sys/class/mdev_bus/{self.parent}/mdev_supported_types/{self.mdev_type}/create"
        if not self.host.exists(create):
            available = self.host.run(
                ["sh", "-c", f"ls /sys/class/mdev_bus/{self.parent}/mdev_supported_types 2>&1"],
                check=False,
            ).stdout.split()
            raise DeviceError(
                f"{self.host.name}: no mdev type {self.mdev_type!r} under parent "
                f"{self.parent!r} (available: {', '.join(available) or 'none'})"
            )
        try:
            self.host.write_file(create, self.uuid)
        except HostError as exc:
            raise DeviceError(f"cannot create {self.name}: {exc}") from None
        self._created = True
        return self

    def release(self) -> None:
        if self._created:
            self.host.write_file(f"{self.sysfs_path}/remove", "1")
            self._created = False


@dataclass
class PciDevice(VfioDevice):
    """A passthrough PCI function the configuration names, bound to a VFIO driver
    (vfio-pci or a variant driver): by the host, or by the testbed (``bind``)."""

    host: Host
    bdf: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"pci {self.bdf}"

    @property
    def sysfs_path(self) -> str:
        return f"/sys/bus/pci/devices/{self.bdf}"

    @property
    def kernel_name(self) -> str:
        return self.bdf

    def check_bound(self) -> PciDevice:
        if not self.host.exists(self.sysfs_path):
            raise DeviceError(f"{self.name}: no such PCI function on {self.host.name}")
        driver = binding.driver(self.host, self.bdf)
        if not binding.is_vfio_driver(self.host, driver):
            raise DeviceError(
                f"{self.name} is bound to {driver or 'no driver'}, not a VFIO driver; bind it to "
                "vfio-pci or its variant driver first, or let the suite do it (bind = \"<driver>\")"
            )
        return self

    def release(self) -> None:
        """Nothing to give back: the device belongs to the host's configuration."""
