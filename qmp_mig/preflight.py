# SPDX-License-Identifier: GPL-2.0-or-later
"""``qmp-mig check``: is this host ready to run the suite, and if not, what to do.

In the spirit of libvirt's ``virt-host-validate``: one row per thing looked
at (item, what was found, verdict, what to do), read-only except for one
short-lived mdev per configured mdev type (created, probed, removed) and a
tracefs instance that is removed again. ``qmp-mig run`` runs it first and
starts nothing when a row fails.

It also measures which optional checks the host can offer (the kernel
cross-check needs fprobes and BTF; the PRECOPY_INFO check needs QEMU's vfio
trace events): a check the configuration requires but the host cannot offer
is a failure here, before any test starts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from . import binding
from .config import Config, ConfigError, DeviceConfig
from .config import load as load_config
from .devices import BASE_VFIO_OPTIONS, DeviceError, MdevDevice, PciDevice, VfioDevice
from .hosts import Host, HostError
from .kernel_trace import KernelTrace
from .pools import Need, pci_functions, shortfalls
from .qemu_trace import TRACE_EVENTS

PASS, FAIL, OFF = "ok", "FAIL", "not offered"


@dataclass(frozen=True)
class Row:
    item: str
    found: str
    verdict: str
    todo: str = ""


@dataclass
class Preflight:
    rows: list[Row] = field(default_factory=list)
    offered: set[str] = field(default_factory=set)  # optional checks the host can run

    @property
    def ok(self) -> bool:
        return all(row.verdict != FAIL for row in self.rows)

    def add(self, item: str, found: str, ok: bool, todo: str = "") -> bool:
        self.rows.append(Row(item, found, PASS if ok else FAIL, "" if ok else todo))
        return ok

    def table(self, title: str) -> Table:
        table = Table(title=title)
        for column in ("item", "found", "verdict", "what to do"):
            table.add_column(column, overflow="fold")
        colours = {PASS: "green", FAIL: "red", OFF: "yellow"}
        for row in self.rows:
            table.add_row(escape(row.item), escape(row.found), f"[{colours[row.verdict]}]{row.verdict}[/]",
                          escape(row.todo))
        return table


def check(config_path: Path, connect: Callable[[Config], Host], needs: Mapping[str, Need] | None = None) -> Preflight:
    """Every row for the configuration at ``config_path``; ``connect`` reaches its host.
    ``needs``: the tests to run and how many device instances each holds at once."""
    result = Preflight()
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            result.add("configuration", line, False, "fix the file")
        return result
    result.add("configuration", str(config_path), True)
    try:
        host = connect(config)
    except HostError as exc:
        result.add("host", str(exc), False, "check [host] address, port, user and key")
        return result
    try:
        result.add("host", host.name, True)
        _qemu(result, host, config)
        _vfio(result, host, config)
        entries = [(f"[[device]] #{i + 1}", spec, "device") for i, spec in enumerate(config.devices)]
        entries += [(label, spec, "test_device") for label, spec in config.test_device_labels()]
        if config.unmigratable_device is not None:
            entries.append(("[unmigratable_device]", config.unmigratable_device, "unmigratable_device"))
        for where, spec, table in entries:
            size = _device(result, host, where, spec, migratable=table != "unmigratable_device")
            _pool(result, where, size, needs or {}, table)
        _guest(result, host, config)
        _workdir(result, host, config)
        _kernel_probes(result, host)
        _required(result, config)
    finally:
        host.close()
    return result


def _qemu(result: Preflight, host: Host, config: Config) -> None:
    binary = config.vm.binary
    version = host.run([binary, "--version"], check=False)
    first = version.stdout.strip().splitlines()[0] if version.stdout.strip() else version.stderr.strip()
    if not result.add("QEMU", f"{binary}: {first}", version.returncode == 0,
                      "install QEMU (Debian: qemu-system-x86) or set [vm] binary"):
        return
    properties = host.run([binary, "-device", "vfio-pci,help"], check=False).stdout
    missing = [p for p in (*BASE_VFIO_OPTIONS, "enable-migration") if f"{p}=" not in properties]
    result.add("vfio-pci properties", "migration-events, enable-migration" if not missing
               else f"missing: {', '.join(missing)}", not missing,
               "use a QEMU with VFIO migration events (9.1 or newer)")
    events = host.run([binary, "-trace", "help"], check=False).stdout.split()
    lacking = [e for e in TRACE_EVENTS if e not in events]
    if not lacking:
        result.offered.add("precopy_info")
        result.add("QEMU vfio trace events", f"{len(TRACE_EVENTS)} present", True)
    else:
        result.rows.append(Row("QEMU vfio trace events", f"missing: {', '.join(lacking)}", OFF,
                               "a QEMU built with the log trace backend offers the PRECOPY_INFO check"))
    if config.vm.accel == "kvm":
        kvm = host.run(["test", "-w", "/dev/kvm"], check=False).returncode == 0
        result.add("KVM", "/dev/kvm" if kvm else "no writable /dev/kvm", kvm,
                   "load kvm_intel or kvm_amd, or set [vm] accel = \"tcg\"")


def _vfio(result: Preflight, host: Host, config: Config) -> None:
    container = host.exists("/dev/vfio/vfio")
    type1 = host.exists("/sys/module/vfio_iommu_type1")
    result.add("VFIO", "/dev/vfio/vfio, vfio_iommu_type1" if container and type1 else
               f"/dev/vfio/vfio {'present' if container else 'absent'}, vfio_iommu_type1 "
               f"{'loaded' if type1 else 'not loaded'}", container and type1,
               "modprobe vfio vfio_iommu_type1 vfio-pci")
    if any(d is not None and d.kind == "pci"
           for d in (*config.devices, *config.test_devices, config.unmigratable_device)):
        units = host.run(["ls", "/sys/class/iommu"], check=False).stdout.split()
        groups = host.run(["ls", "/sys/kernel/iommu_groups"], check=False).stdout.split()
        result.add("IOMMU", f"units: {', '.join(units) or 'none'}; {len(groups)} groups", bool(units and groups),
                   "enable the IOMMU in firmware and on the kernel command line (intel_iommu=on / amd_iommu=on)")


@contextmanager
def _instance(host: Host, spec: DeviceConfig, bdf: str) -> Iterator[VfioDevice]:
    """The device to probe: a short-lived mdev, or the named PCI function as it is."""
    if spec.kind == "mdev":
        mdev = MdevDevice(host, spec.parent, spec.type).create()
        try:
            yield mdev
        finally:
            mdev.release()
    else:
        yield PciDevice(host, bdf)


def _device(result: Preflight, host: Host, where: str, spec: DeviceConfig, migratable: bool = True) -> int | None:
    """The entry's rows; returns how many instances it has (None: unbounded or unknown)."""
    bdf, size = "", spec.count
    if spec.kind == "mdev":
        types = f"/sys/class/mdev_bus/{spec.parent}/mdev_supported_types"
        if not result.add(f"{where} mdev parent", spec.parent, host.exists(types),
                          f"load the driver of mdev parent {spec.parent!r}"):
            return None
        free = host.run(["cat", f"{types}/{spec.type}/available_instances"], check=False)
        if not result.add(f"{where} mdev type", f"{spec.type}: {free.stdout.strip() or 'absent'} available",
                          free.returncode == 0 and free.stdout.strip() not in ("", "0"),
                          f"the parent offers: {' '.join(host.run(['ls', types], check=False).stdout.split())}"):
            return None
    else:
        try:
            functions = pci_functions(host, spec)
        except DeviceError as exc:
            result.add(f"{where} PCI functions", str(exc), False, "fix pf / vfs, or make the VFs first")
            return None
        size = len(functions)
        if spec.bind and not result.add(f"{where} bind", spec.bind, host.exists(f"/sys/bus/pci/drivers/{spec.bind}"),
                                        f"no driver {spec.bind!r} is loaded on the host: modprobe it"):
            return size
        if not all([_pci_function(result, host, where, spec, bdf) for bdf in functions]) or spec.bind:
            return size  # with bind, each test probes the flags once it has bound the function
        bdf = functions[0]
    try:
        with _instance(host, spec, bdf) as device:
            flags = device.probe().flags
    except (DeviceError, HostError) as exc:
        result.add(f"{where} migration flags", str(exc), False, "the device must not be in use")
        return size
    if not migratable:  # the refusal scenario needs a function QEMU cannot migrate
        result.add(f"{where} migration flags", flags.describe(), not flags,
                   "this entry must name a function whose driver has no migration support")
        return size
    expected = spec.expect_flags
    result.add(f"{where} migration flags", flags.describe(),
               bool(flags) and (expected is None or flags == expected),
               "the driver reports no VFIO migration support" if not flags else
               f"the configuration expects {expected.describe() if expected else ''}")
    return size


def _pool(result: Preflight, where: str, size: int | None, needs: Mapping[str, Need], table: str) -> None:
    """The entry has as many instances as the tests to run hold at once."""
    mine = [n.instances for n in needs.values() if n.table == table]
    if size is None or not mine:
        return
    short = shortfalls(size, needs, table)
    result.add(f"{where} pool", f"{size} instance{'s' if size != 1 else ''}; "
               + (f"too few: {'; '.join(short)} at once" if short else f"the tests hold up to {max(mine)} at once"),
               not short, f"give the entry at least {max(mine)} instances (more bdf, vfs or count)")


def _pci_function(result: Preflight, host: Host, where: str, spec: DeviceConfig, bdf: str) -> bool:
    """One function of a PCI pool: it exists, has an IOMMU group, and is bound to a VFIO
    driver, or (with bind) is free for the suite to bind: the host is not using it."""
    sysfs = f"/sys/bus/pci/devices/{bdf}"
    if not result.add(f"{where} PCI function", bdf, host.exists(sysfs),
                      "no such PCI address on this host (lspci -D lists them)"):
        return False
    group = host.run(["readlink", f"{sysfs}/iommu_group"], check=False).stdout.strip().rsplit("/", 1)[-1]
    if not result.add(f"{where} {bdf} IOMMU group", group or "none", bool(group),
                      "the function has no IOMMU group: enable the IOMMU (intel_iommu=on / amd_iommu=on)"):
        return False
    driver = binding.driver(host, bdf)
    if spec.bind:
        busy = binding.in_use(host, bdf)
        return result.add(f"{where} {bdf} driver", f"{driver or 'none'} (bound to {spec.bind} for each test, "
                          "then given back)" if not busy else f"{driver}: {'; '.join(busy)}", not busy,
                          "the host is using this function: take it out of use, or name another")
    if not result.add(f"{where} {bdf} driver", driver or "none", binding.is_vfio_driver(host, driver),
                      "bind it to vfio-pci or its variant driver, or add bind = \"<driver>\" to the entry"):
        return False
    return result.add(f"{where} {bdf} VFIO group", f"/dev/vfio/{group}", host.exists(f"/dev/vfio/{group}"),
                      "the function's IOMMU group has no /dev/vfio node")


def _guest(result: Preflight, host: Host, config: Config) -> None:
    files = [("guest kernel", config.guest.kernel), ("guest initrd", config.guest.initrd)]
    if config.guest.micro:
        files.append(("micro guest", config.guest.micro))
    for what, path in files:
        result.add(what, path, host.run(["test", "-r", path], check=False).returncode == 0,
                   "build the guest image (qmp-mig images build guest) and point [guest] at it")
    key = Path(config.guest.key)
    readable = key.is_file() and os.access(key, os.R_OK)
    result.add("guest SSH key", str(key), readable, "the private key of the guest image, on this machine")


def _workdir(result: Preflight, host: Host, config: Config) -> None:
    workdir = config.host.workdir
    # It may not exist yet (the first testbed makes it): then its parent must be writable.
    usable = 'if [ -e "$1" ]; then test -d "$1" -a -w "$1"; else test -w "$(dirname "$1")"; fi'
    made = host.run(["sh", "-c", usable, "sh", workdir], check=False)
    result.add("work directory", workdir, made.returncode == 0, "a writable directory on the host")


def _kernel_probes(result: Preflight, host: Host) -> None:
    trace = KernelTrace.start(host, f"qmp-mig-preflight-{os.getpid()}")
    try:
        if trace.available:
            result.offered.add("kernel_cross_check")
            result.add("kernel cross-check probes", f"fprobe on vfio_mig_get_next_state; TAI offset "
                       f"{trace.tai_offset} s", True)
        else:
            result.rows.append(Row("kernel cross-check probes", trace.reason, OFF,
                                   "a kernel with FPROBE_EVENTS and BTF offers the kernel cross-check"))
    finally:
        trace.stop()


def _required(result: Preflight, config: Config) -> None:
    """Optional checks the configuration requires must be offered."""
    required = required_checks(config, result.offered)
    for name in sorted(required - result.offered):
        result.add(f"required check {name}", "not offered by this host (see above)", False,
                   f"remove {name!r} from [checks] require, or give the host what it lacks")


def required_checks(config: Config, offered: set[str]) -> set[str]:
    """What the configuration requires: its list, or by default all the host offers."""
    return set(offered) if config.require is None else set(config.require)


