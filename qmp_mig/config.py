# SPDX-License-Identifier: GPL-2.0-or-later
"""The host configuration file: where QEMU runs, which devices, which guest.

The lab writes one of these for itself; on a real KVM host a person writes a
small one (see ``ci/kvm-host.example.toml``) and the same tests run unchanged.

pydantic models describe the file, one per table: strict types, no unknown
keys, and values that later reach a shell or QEMU's ``-device`` string held to
what they may be. Every problem of a file is reported at once, one line each,
in our words (file, table, key, what was found, what was expected). ``load``
turns the checked tables into the frozen dataclasses the rest of the suite uses.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

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
    # For kind = "ssh": the host's public key ("ssh-ed25519 AAAA..."); without it the
    # key must be in ~/.ssh/known_hosts. An unknown or different key is refused.
    host_key: str = ""


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
    # Our micro guest (guest_agents/micro), booted by QEMU with -kernel: the guest kind
    # "micro" needs it; the Linux guest above stays the default kind.
    micro: str | None = None


@dataclass(frozen=True)
class WorkloadConfig:
    """How much the guest agents do; scale it to the host's speed."""

    memory_mb: int = 64  # region the memory agent fills and verifies
    dirty_mb: int = 8  # part of it rewritten continuously
    dirty_rate_mb: int = 0  # MB/s the rewriting is paced to; 0: as fast as the vCPU goes
    agent_timeout: float = 600.0  # for one agent command (fill, verify)


@dataclass(frozen=True)
class DeviceConfig:
    """One kind of device and its pool of instances: each QEMU a scenario starts
    gets its own instance (see qmp_mig/pools.py)."""

    kind: str  # "mdev" or "pci"
    parent: str = ""
    type: str = ""
    count: int | None = None  # mdev: at most this many at once; None: as many as the parent offers
    bdfs: tuple[str, ...] = ()  # pci: the functions of the pool
    pf: str = ""  # pci: or the VFs of this physical function ...
    vfs: tuple[int, ...] = ()  # ... with these numbers (its virtfn<N> links)
    bind: str = ""  # pci: bind the functions to this driver for the run, then put back what they had
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
    # Our own test devices where the host has them: qmigdev (an mdev) and qmigpci (a
    # variant driver on edu functions). The DMA, P2P, reset and fault-detection tests
    # use the one of the device kind they run on; without it they are cancelled.
    test_devices: tuple[DeviceConfig, ...] = ()
    # A function whose driver cannot migrate (an SR-IOV VF on plain vfio-pci): the
    # refusal scenario checks QEMU blocks migration with it, in QEMU's words.
    unmigratable_device: DeviceConfig | None = None
    # [checks] require: the optional checks (OPTIONAL_CHECKS) a test must run, or fail;
    # None: every one the host offers (qmp-mig check measures it).
    require: tuple[str, ...] | None = None

    def test_device_labels(self) -> list[tuple[str, DeviceConfig]]:
        """Each test device with the name a person gives its table."""
        if len(self.test_devices) == 1:
            return [("[test_device]", self.test_devices[0])]
        return [(f"[[test_device]] #{i + 1}", d) for i, d in enumerate(self.test_devices)]

    def of_kind(self, kind: str) -> Config:
        """The same host with only its [[device]] and [[test_device]] entries of ``kind``
        ("mdev", "pci")."""
        return dataclasses.replace(self, devices=tuple(d for d in self.devices if d.kind == kind),
                                   test_devices=tuple(d for d in self.test_devices if d.kind == kind))


# Checks that depend on what the host offers, by the names [checks] require uses.
OPTIONAL_CHECKS = {
    "kernel_cross_check": "the kernel's own arcs (fprobe on vfio_mig_get_next_state)",
    "precopy_info": "PRECOPY_INFO answers from QEMU's vfio trace",
}


# --- the file's schema ---------------------------------------------------------
#
# Patterns run on pydantic's regex engine, whose `$` is the end of the text
# (a trailing newline does not slip through). The words a person reads are each
# field's description; the error types pydantic reports are translated below.

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
# Host paths are pasted into `sh -c` lines (testbed's sweep of old work
# directories): only characters the shell takes literally.
_HOST_PATH = re.compile(r"/[A-Za-z0-9._/+:@-]*")


def _address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if len(value) > 253 or not _HOSTNAME.fullmatch(value):
            raise PydanticCustomError("address", "not a hostname or IP address") from None
    return value


def _host_path(value: str) -> str:
    if not _HOST_PATH.fullmatch(value) or ".." in PurePosixPath(value).parts:
        raise PydanticCustomError("host_path", "not an absolute path of plain characters")
    return value


def _not_dots(value: str) -> str:
    # "." and ".." fit the name pattern but would step around the sysfs tree.
    if value in {".", ".."}:
        raise PydanticCustomError("dots", "a path step, not a name")
    return value


def _flags(value: object) -> Flag:
    if not isinstance(value, str):
        raise PydanticCustomError("flags_type", "not a string")
    try:
        return Flag.parse(value)
    except ValueError as exc:  # its words say what was expected
        raise PydanticCustomError("flags", "{reason}", {"reason": str(exc)}) from None


_Address = Annotated[str, AfterValidator(_address)]
_Port = Annotated[int, Field(ge=1, le=65535)]
_HostPath = Annotated[str, AfterValidator(_host_path)]
_PciAddress = Annotated[str, Field(pattern=r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")]
_PCI_ADDRESS = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")


def _pci_pool(value: object) -> list[str]:
    """One PCI address or a non-empty list of them: the functions of a pool."""
    addresses = [value] if isinstance(value, str) else value
    if (not isinstance(addresses, list) or not addresses
            or not all(isinstance(a, str) and _PCI_ADDRESS.fullmatch(a) for a in addresses)):
        raise PydanticCustomError("pci_pool", "not a PCI address or a list of them")
    return addresses


_PciPool = Annotated[list[str], PlainValidator(_pci_pool)]
_VfRange = Annotated[str, Field(pattern=r"^[0-9]{1,3}(-[0-9]{1,3})?$")]
_DriverName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$"), AfterValidator(_not_dots)]
_MdevName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]+$"), AfterValidator(_not_dots)]
# vfio-pci properties end up in `-device vfio-pci,name=value,...`: a comma or
# '=' in either would add a property of its own.
_OptionName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$")]
_OptionValue = Annotated[str, Field(pattern=r"^[^,=\s]+$")]
_AttributeName = Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]  # one file in the device's sysfs directory
_Flags = Annotated[Flag, PlainValidator(_flags)]
_HostKey = Annotated[str, Field(pattern=r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*$")]
_CheckName = Literal["kernel_cross_check", "precopy_info", "all"]

_HOST_PATH_WORDS = "an absolute path of letters, digits and . _ / + : @ -, without '..' (string)"


def _needed_by(kind: str, value: str | None, info: ValidationInfo) -> str | None:
    """A key that is optional in general but needed by this ``kind`` (checked
    per key, so it is reported together with every other problem)."""
    if not value and info.data.get("kind") == kind:
        raise PydanticCustomError("needed", "needed by kind {kind}", {"kind": kind})
    return value


# One model per table. Optional keys default to None, meaning "not in the file":
# the dataclasses above keep the one copy of the defaults.
class _Table(BaseModel):
    # strict: TOML `true` is not an integer and 2 is not a string; unknown keys are typos.
    model_config = ConfigDict(extra="forbid", strict=True)


class _Host(_Table):
    kind: Literal["local", "ssh"] = Field(description="'local' or 'ssh'")
    address: _Address | None = Field(None, description="a hostname or IP address (string)")
    port: _Port | None = Field(None, description="a TCP port, 1..65535 (integer)")
    user: str | None = Field(None, description="a user name (string)")
    key: str | None = Field(None, validate_default=True, description="a private key file path (string)")
    workdir: _HostPath | None = Field(None, description=_HOST_PATH_WORDS)
    snapshot_dir: _HostPath | None = Field(None, description=_HOST_PATH_WORDS)
    host_key: _HostKey | None = Field(None, description="an OpenSSH public key line like 'ssh-ed25519 AAAA...'")

    @field_validator("key")
    @classmethod
    def _ssh_needs_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _needed_by("ssh", value, info)


class _Vm(_Table):
    binary: str | None = Field(None, description="a QEMU binary (string)")
    accel: str | None = Field(None, description="a QEMU accelerator like 'kvm' or 'tcg' (string)")
    machine: str | None = Field(None, description="a QEMU machine type like 'q35' (string)")
    cpu: str | None = Field(None, description="a QEMU CPU model like 'max' or 'host' (string)")
    memory_mb: int | None = Field(None, description="the guest's memory in MB (integer)")


class _Guest(_Table):
    kernel: str = Field(description="a file path (string)")
    initrd: str = Field(description="a file path (string)")
    key: str = Field(description="a private key file path (string)")
    append: str | None = Field(None, description="a kernel command line (string)")
    boot_timeout: float | None = Field(None, description="seconds (number)")
    micro: str | None = Field(None, description="the micro guest's ELF file path (string)")


# The guest a scenario runs: the Linux guest over SSH, or the micro guest on its serial port.
GUEST_KINDS = ("linux", "micro")


class _Workload(_Table):
    memory_mb: int | None = Field(None, description="MB (integer)")
    dirty_mb: int | None = Field(None, description="MB (integer)")
    dirty_rate_mb: int | None = Field(None, description="MB/s, 0 for unpaced (integer)")
    agent_timeout: float | None = Field(None, description="seconds (number)")


class _Device(_Table):
    kind: Literal["mdev", "pci"] = Field(description="'mdev' or 'pci'")
    parent: _MdevName | None = Field(
        None, validate_default=True, description="an mdev parent name of letters, digits and _ . : - (string)")
    type: _MdevName | None = Field(
        None, validate_default=True, description="an mdev type name of letters, digits and _ . : - (string)")
    count: Annotated[int, Field(ge=1)] | None = Field(
        None, description="how many instances of the mdev type may exist at once (integer, 1 or more)")
    pf: _PciAddress | None = Field(None, description="the PCI address of a physical function, like 0000:3b:00.0")
    vfs: _VfRange | None = Field(None, description="VF numbers of the pf, like '0-3' or '2' (string)")
    bdf: _PciPool | None = Field(
        None, description="a PCI address like 0000:3b:00.1, or a list of them (the pool)")
    bind: _DriverName | None = Field(None, description=(
        "a driver name like 'vfio-pci' or 'qmigpci': the functions are bound to it for the run "
        "and given back to their own driver after it (string)"))
    options: dict[_OptionName, _OptionValue] | None = Field(None, description=(
        "vfio-pci properties as name = \"value\": names of a-z, 0-9, - and _ starting with a letter; "
        "values without commas, '=' or whitespace (strings)"))
    attributes: dict[_AttributeName, str] | None = Field(None, description=(
        "sysfs attributes as name = \"value\": names of a-z, 0-9 and _ (strings)"))
    expect_flags: _Flags | None = Field(None, description="migration flags like 'STOP_COPY|P2P' (string)")
    known_issues: dict[str, str] | None = Field(
        None, description="scenario = \"why it fails with this device\" (strings)")

    @field_validator("parent", "type")
    @classmethod
    def _mdev_needs(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _needed_by("mdev", value, info)

    @field_validator("vfs")
    @classmethod
    def _vf_range(cls, value: str | None) -> str | None:
        first, _, last = (value or "").partition("-")
        if last and int(last) < int(first):
            raise PydanticCustomError("vf_range", "a range that runs backwards")
        return value

    @model_validator(mode="after")
    def _pci_pool(self) -> _Device:
        """A PCI entry names its pool once: bdf, or pf with vfs (checked once every key
        is valid, so a bad key is reported alone)."""
        if self.kind != "pci":
            return self
        if self.bdf and (self.pf or self.vfs):
            raise PydanticCustomError("pool_twice", "a pool given twice")
        if self.bdf and len(set(self.bdf)) != len(self.bdf):
            raise PydanticCustomError("pool_repeats", "the same function twice")
        if not self.bdf and not (self.pf or self.vfs):
            raise PydanticCustomError("pool_needed", "no pool")
        if not self.bdf and not (self.pf and self.vfs):
            raise PydanticCustomError("vf_pool", "pf and vfs go together")
        return self


class _Checks(_Table):
    require: list[_CheckName] | None = Field(None, description=(
        "a list of optional checks that must run: 'kernel_cross_check', 'precopy_info', or 'all'"))


class _File(_Table):
    host: _Host = Field(description="a table with kind = 'local' or 'ssh'")
    vm: _Vm | None = Field(None, description="a table of QEMU settings")
    guest: _Guest = Field(description="a table with kernel, initrd and key")
    device: list[_Device] = Field(min_length=1, description=(
        "one or more [[device]] tables (double brackets), each naming a VFIO device"))
    workload: _Workload | None = Field(None, description="a table of guest agent sizes")
    test_device: list[_Device] | None = Field(None, description=(
        "a [test_device] table, or [[test_device]] tables (one per kind), naming our own test "
        "devices (qmigdev, qmigpci)"))
    unmigratable_device: _Device | None = Field(
        None, description="a table naming a device whose driver has no migration support")
    checks: _Checks | None = Field(None, description="a table with require = [...]")

    @field_validator("test_device")
    @classmethod
    def _one_per_kind(cls, tables: list[_Device] | None) -> list[_Device] | None:
        kinds = [t.kind for t in tables or ()]
        for kind in kinds:
            if kinds.count(kind) > 1:
                raise PydanticCustomError("one_per_kind", "two of kind {kind}", {"kind": kind})
        return tables


# Each top-level key: the table's model and how a person writes its name.
_TABLES: dict[str, tuple[type[_Table], str]] = {
    "host": (_Host, "[host]"),
    "vm": (_Vm, "[vm]"),
    "guest": (_Guest, "[guest]"),
    "device": (_Device, "[[device]]"),
    "workload": (_Workload, "[workload]"),
    "test_device": (_Device, "[test_device]"),
    "unmigratable_device": (_Device, "[unmigratable_device]"),
    "checks": (_Checks, "[checks]"),
}


# --- pydantic's errors in our words -------------------------------------------------


def _shown(value: object) -> str:
    """A found value as the file wrote it, on one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    text = repr(value)  # quotes strings and escapes newlines
    return text if len(text) <= 80 else f"{text[:76]}...{text[-1]}"


def _key(name: object) -> str:
    return str(name) if re.fullmatch(r"[A-Za-z0-9_-]+", str(name)) else repr(name)


def _sentence(where: str, error: ErrorDetails, single: bool = False) -> str:
    kind, loc, found = error["type"], error["loc"], error["input"]
    ctx = error.get("ctx") or {}
    top = str(loc[0])
    if top not in _TABLES:  # unknown top-level key: a misspelt table, or a key above any table
        tables = ", ".join(label for _, label in _TABLES.values())
        if isinstance(found, dict | list):
            name = f"[{_key(top)}]" if isinstance(found, dict) else f"[[{_key(top)}]]"
            return f"{where}: {name}: unknown table; expected some of {tables}"
        return f"{where}: {_key(top)} = {_shown(found)}: a key outside any table; expected some of {tables}"
    model, table = _TABLES[top]
    rest = loc[1:]
    if top == "device" and rest:
        table, rest = f"[[device]] #{int(rest[0]) + 1}", rest[1:]
    elif top == "test_device" and rest and isinstance(rest[0], int):
        # One [test_device] table is read as a list of one.
        table = "[test_device]" if single else f"[[test_device]] #{rest[0] + 1}"
        rest = rest[1:]
    if not rest:  # the table itself
        subject, expected = table, _File.model_fields[top].description
    else:
        name = str(rest[0])
        subject = f"{table} {_key(name)}"
        info = model.model_fields.get(name)
        expected = info.description if info else None
        if rest[-1] == "[key]":  # a key inside options/attributes
            subject += f" key {_key(rest[1])}"
        elif len(rest) > 1:  # a value inside options/attributes, as TOML's dotted key
            subject += "." + ".".join(_key(part) for part in rest[1:])
    if kind == "missing":
        return f"{where}: {subject}: missing; expected {expected}"
    pool_words = {
        "pool_needed": "kind = 'pci' needs bdf (an address or a list of them), or pf and vfs",
        "pool_twice": "give either bdf or pf and vfs, not both",
        "pool_repeats": "the same PCI function is listed twice in bdf; expected each once",
        "vf_pool": "pf and vfs go together: the VF numbers of that physical function",
        "vf_range": "the range runs backwards; expected FIRST-LAST with FIRST <= LAST",
    }
    if kind == "one_per_kind":
        return f"{where}: [[test_device]]: two tables of kind {ctx['kind']!r}; expected one per kind"
    if kind in pool_words:
        return f"{where}: {subject if rest else table}: {pool_words[kind]}"
    if kind == "needed" and found is None:
        return f"{where}: {subject}: missing, and kind = {ctx['kind']!r} needs it; expected {expected}"
    # A bad key inside options/attributes is itself what was found.
    head = f"{where}: {subject}" if rest and rest[-1] == "[key]" else f"{where}: {subject} = {_shown(found)}"
    if kind == "extra_forbidden":
        return f"{head}: unknown key; expected some of {', '.join(model.model_fields)}"
    if kind == "needed":
        return f"{head}: kind = {ctx['kind']!r} needs it; expected {expected}"
    if kind == "literal_error":
        return f"{head}: expected {ctx['expected']}"
    if kind == "flags":
        return f"{head}: {ctx['reason']}"
    # Types (string_type, int_type, ...), patterns, ranges and our own checks:
    # what was expected is the field's description.
    return f"{head}: expected {expected}"


# --- loading ---------------------------------------------------------------------

_D = TypeVar("_D")


def _built(cls: type[_D], table: _Table | None) -> _D:
    # Only the keys the file has: the dataclass supplies every default.
    return cls(**(table.model_dump(exclude_unset=True) if table else {}))


def load(path: str | Path) -> Config:
    path = Path(path)
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the configuration file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not valid TOML: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    single = isinstance(data.get("test_device"), dict)
    if single:  # [test_device] (one table) or [[test_device]] (one per kind)
        data["test_device"] = [data["test_device"]]
    try:
        file = _File.model_validate(data)
    except ValidationError as exc:
        lines = dict.fromkeys(_sentence(where, e, single) for e in exc.errors(include_url=False))
        raise ConfigError("\n".join(lines)) from None
    return Config(
        path=path,
        host=_built(HostConfig, file.host),
        vm=_built(VmConfig, file.vm),
        guest=_built(GuestConfig, file.guest),
        devices=tuple(_device(d) for d in file.device),
        workload=_built(WorkloadConfig, file.workload),
        test_devices=tuple(_device(d) for d in file.test_device or ()),
        unmigratable_device=_device(file.unmigratable_device) if file.unmigratable_device else None,
        require=_required(file.checks),
    )


def _device(table: _Device) -> DeviceConfig:
    keys = table.model_dump(exclude_unset=True)
    bdf = keys.pop("bdf", None)
    if bdf is not None:
        keys["bdfs"] = tuple(bdf)
    vfs = keys.pop("vfs", None)
    if vfs is not None:
        first, _, last = vfs.partition("-")
        keys["vfs"] = tuple(range(int(first), int(last or first) + 1))
    return DeviceConfig(**keys)


def _required(checks: _Checks | None) -> tuple[str, ...] | None:
    if checks is None or checks.require is None:
        return None
    return tuple(OPTIONAL_CHECKS) if "all" in checks.require else tuple(dict.fromkeys(checks.require))
