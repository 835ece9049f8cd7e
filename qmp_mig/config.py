# SPDX-License-Identifier: GPL-2.0-or-later
"""The host configuration file: where QEMU runs, which devices, which guest.

The lab writes one of these for itself; on a real KVM host a person writes a
small one (see ``ci/kvm-host.example.toml``) and the same tests run unchanged.
Errors name the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fsm import Flag


class ConfigError(ValueError):
    """The configuration file is missing, malformed, or names something invalid."""


@dataclass(frozen=True)
class HostConfig:
    kind: str  # "local" or "ssh"
    address: str = "127.0.0.1"
    port: int = 22
    user: str = "root"
    key: str = ""
    workdir: str = "/var/tmp/qmp-mig"
    snapshot_dir: str = ""  # booted-guest snapshots; default <workdir>/snapshots


@dataclass(frozen=True)
class VmConfig:
    binary: str = "qemu-system-x86_64"
    accel: str = "tcg"
    machine: str = "q35"
    cpu: str = "max"
    memory_mb: int = 256


@dataclass(frozen=True)
class GuestConfig:
    kernel: str
    initrd: str
    key: str  # on this machine: the private key that logs into the guest
    append: str = "console=ttyS0"
    boot_timeout: float = 300.0


@dataclass(frozen=True)
class WorkloadConfig:
    """How much the guest agents do; scale it to the host's speed."""

    memory_mb: int = 64  # region the memory agent fills and verifies
    dirty_mb: int = 8  # part of it rewritten continuously
    dirty_rate_mb: int = 0  # MB/s the rewriting is paced to; 0: as fast as the vCPU goes
    agent_timeout: float = 600.0  # for one agent command (fill, verify)


@dataclass(frozen=True)
class DeviceConfig:
    kind: str  # "mdev" or "pci"
    parent: str = ""
    type: str = ""
    bdf: str = ""
    options: dict[str, str] = field(default_factory=dict)
    # sysfs attributes (relative to the device's sysfs path) written after it is
    # created and before any VM opens it, e.g. qmigdev's flag switches.
    attributes: dict[str, str] = field(default_factory=dict)
    expect_flags: Flag | None = None  # if set, the kernel must report exactly these
    # Scenario -> why it is expected to fail with this device (a known driver bug):
    # the test still runs and reports an expected failure, never hides it.
    known_issues: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    path: Path
    host: HostConfig
    vm: VmConfig
    guest: GuestConfig
    devices: tuple[DeviceConfig, ...]
    workload: WorkloadConfig = WorkloadConfig()
    # Our own test device (devices/qmigdev) where the host has it loaded: the DMA,
    # P2P, reset and fault-detection tests use it; without it they are skipped.
    test_device: DeviceConfig | None = None


def _table(where: str, data: dict[str, Any], key: str, required: bool = True) -> dict[str, Any]:
    value = data.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] is missing or not a table")
    return value


def _build(cls: type, where: str, section: str, data: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: [{section}] has unknown key(s) {', '.join(unknown)}; "
            f"expected some of {', '.join(fields)}"
        )
    for name, value in data.items():
        wanted = fields[name].type
        kinds: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float), "dict[str, str]": dict}
        expected = kinds.get(str(wanted))
        if expected and not isinstance(value, expected):
            raise ConfigError(
                f"{where}: [{section}] {name} = {value!r}: expected {wanted}"
            )
    try:
        return cls(**data)
    except TypeError as exc:
        raise ConfigError(f"{where}: [{section}]: {exc}") from None


def _device(where: str, section: str, data: dict[str, Any]) -> DeviceConfig:
    data = dict(data)
    flags = data.pop("expect_flags", None)
    device: DeviceConfig = _build(DeviceConfig, where, section, data)
    if device.kind == "mdev" and not (device.parent and device.type):
        raise ConfigError(f"{where}: [{section}] kind = 'mdev' needs parent and type")
    if device.kind == "pci" and not device.bdf:
        raise ConfigError(f"{where}: [{section}] kind = 'pci' needs bdf (e.g. '0000:3b:00.1')")
    if device.kind not in {"mdev", "pci"}:
        raise ConfigError(f"{where}: [{section}] kind = {device.kind!r}: expected 'mdev' or 'pci'")
    if flags is not None:
        try:
            parsed = Flag.parse(str(flags))
        except ValueError as exc:
            raise ConfigError(f"{where}: [{section}] expect_flags: {exc}") from None
        device = DeviceConfig(**{**device.__dict__, "expect_flags": parsed})
    return device


def load(path: str | Path) -> Config:
    path = Path(path)
    where = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    host: HostConfig = _build(HostConfig, where, "host", _table(where, data, "host"))
    if host.kind not in {"local", "ssh"}:
        raise ConfigError(f"{where}: [host] kind = {host.kind!r}: expected 'local' or 'ssh'")
    if host.kind == "ssh" and not host.key:
        raise ConfigError(f"{where}: [host] kind = 'ssh' needs key (a private key file)")
    vm: VmConfig = _build(VmConfig, where, "vm", _table(where, data, "vm", required=False))
    guest: GuestConfig = _build(GuestConfig, where, "guest", _table(where, data, "guest"))
    raw_devices = data.get("device")
    if not isinstance(raw_devices, list) or not raw_devices:
        raise ConfigError(f"{where}: no [[device]] entries: name at least one VFIO device")
    devices = tuple(_device(where, f"device #{i + 1}", d) for i, d in enumerate(raw_devices))
    workload: WorkloadConfig = _build(
        WorkloadConfig, where, "workload", _table(where, data, "workload", required=False)
    )
    raw_test_device = _table(where, data, "test_device", required=False)
    test_device = _device(where, "test_device", raw_test_device) if raw_test_device else None
    return Config(path, host, vm, guest, devices, workload, test_device)
