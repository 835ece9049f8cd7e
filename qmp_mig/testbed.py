# SPDX-License-Identifier: GPL-2.0-or-later
"""Everything one scenario owns on a host, and the guarantee to give it back.

A :class:`Testbed` connects to the configured host, makes a private work
directory there, creates devices and VMs on request, and on close (or
Ctrl-C, or SIGTERM from the runner) shuts every VM down, releases every
device and removes its directory, in reverse order of creation.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from . import fsm
from .checks import CheckFailed, check_walk
from .config import Config, DeviceConfig
from .devices import MdevDevice, PciDevice, VfioDevice
from .fsm import Flag, State
from .guest import Guest
from .hosts import Host, LocalHost, SshHost
from .migration import restore_from_file, save_to_file
from .qemu import QemuInstance, VmSpec
from .snapshots import snapshot_key


def connect(config: Config) -> Host:
    h = config.host
    if h.kind == "local":
        return LocalHost()
    return SshHost(h.address, h.port, h.key, user=h.user, name=f"{h.user}@{h.address}:{h.port}")


@dataclass
class RunningVm:
    """A started VM with its guest logged in."""

    qemu: QemuInstance
    guest: Guest
    flags: dict[str, Flag]  # device id -> the kernel's migration flags
    start_walk: dict[str, list[State]]  # device id -> the model's walk for how it came up

    def expected_walk(self, device_id: str, *then: list[State]) -> list[State]:
        """The whole expected walk so far: coming up, then ``then``."""
        return [*self.start_walk[device_id], *(s for part in then for s in part)]


class Testbed:
    """What one scenario owns on its host; see the module docstring."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, config: Config, artifacts: Path) -> None:
        self.config = config
        self.artifacts = artifacts
        self._stack = ExitStack()
        self._uris = 0
        if threading.current_thread() is threading.main_thread():
            # The runner stops a test with SIGTERM: unwind like Ctrl-C.
            signal.signal(signal.SIGTERM, _raise_interrupt)
        self.host = connect(config)
        self._stack.callback(self.host.close)
        self.host.run(["mkdir", "-p", config.host.workdir])
        self.workdir = self.host.run(
            ["mktemp", "-d", "-p", config.host.workdir, f"testbed.{run_id()}.XXXXXX"]
        ).stdout.strip()
        self._stack.callback(self.host.remove_tree, self.workdir)
        self._lease: list[str] = []

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- devices --------------------------------------------------------------

    def _make_device(self, spec: DeviceConfig) -> VfioDevice:
        if spec.kind == "mdev":
            mdev = MdevDevice(self.host, spec.parent, spec.type, dict(spec.options))
            self._record(f"mdev {mdev.sysfs_path}")
            self._stack.callback(mdev.release)
            device: VfioDevice = mdev.create()
        else:
            device = PciDevice(self.host, spec.bdf, dict(spec.options)).check_bound()
        return device

    def devices(self) -> tuple[list[VfioDevice], list[Flag]]:
        """One fresh device per configured entry, with the kernel's flags for each."""
        devices, flags = [], []
        for spec in self.config.devices:
            device = self._make_device(spec)
            view = device.probe()
            if spec.expect_flags is not None and view.flags != spec.expect_flags:
                raise CheckFailed(
                    f"{device.name}: kernel reports migration flags {view.flags.describe()}, "
                    f"configuration expects {spec.expect_flags.describe()}"
                )
            devices.append(device)
            flags.append(view.flags)
        return devices, flags

    # --- VMs --------------------------------------------------------------------

    def spec(self) -> VmSpec:
        c = self.config
        return VmSpec(
            kernel=c.guest.kernel, initrd=c.guest.initrd, append=c.guest.append,
            memory_mb=c.vm.memory_mb, accel=c.vm.accel, machine=c.vm.machine, cpu=c.vm.cpu,
            binary=c.vm.binary,
        )

    def launch(self, name: str, *, incoming: bool = False) -> tuple[QemuInstance, list[Flag]]:
        """A paused QEMU with fresh devices, monitor connected."""
        devices, flags = self.devices()
        qemu = QemuInstance(
            self.host, self.spec(), name, devices=devices, workdir=self.workdir,
            artifacts=self.artifacts, incoming=incoming,
        )
        self._stack.callback(qemu.shutdown)
        qemu.launch()
        self._record(f"pid {qemu.pid}")
        return qemu, flags

    def boot_cold(self, name: str) -> RunningVm:
        """Launch paused, let the guest boot from scratch, and log into it."""
        qemu, flags = self.launch(name)
        qemu.start()
        guest = self.guest(qemu)
        ids = [a.device_id for a in qemu.devices]
        return RunningVm(qemu, guest, dict(zip(ids, flags)),
                         {i: fsm.vm_start_events(f) for i, f in zip(ids, flags)})

    def boot(self, name: str = "source") -> RunningVm:
        """A ready guest: restored from the booted-guest snapshot (made on first use)."""
        snapshot = self.snapshot()
        qemu, flags = self.launch(name, incoming=True)
        restore_from_file(qemu, snapshot)
        guest = self.guest(qemu)
        ids = [a.device_id for a in qemu.devices]
        return RunningVm(qemu, guest, dict(zip(ids, flags)),
                         {i: fsm.destination_events(f) for i, f in zip(ids, flags)})

    def snapshot(self) -> str:
        """Path on the host of the booted-guest snapshot for this configuration."""
        directory = self.config.host.snapshot_dir or f"{self.config.host.workdir}/snapshots"
        path = f"{directory}/guest-{snapshot_key(self.host, self.spec(), self.config.devices)}.mig"
        if self.host.exists(path):
            return path
        # Cold boot once; the VM start walk is checked here since restores skip it.
        vm = self.boot_cold("snapshot-maker")
        for device_id, expected in vm.start_walk.items():
            check_walk(f"snapshot-maker {device_id} (VM start)", expected, vm.qemu.vfio_walk(device_id))
        vm.guest.close()
        self.host.run(["mkdir", "-p", directory])
        partial = f"{path}.{self.workdir.rsplit('.', 1)[-1]}.partial"
        result = save_to_file(vm.qemu, partial)
        if result.status != "completed":
            self.host.run(["rm", "-f", partial])
            raise RuntimeError(f"saving the booted guest to {path} ended {result.status}: {result.error}")
        self.host.run(["mv", partial, path])
        vm.qemu.shutdown()
        return path

    def guest(self, qemu: QemuInstance) -> Guest:
        guest = Guest(self.host, qemu.ssh_port, self.config.guest.key, name=f"guest in {qemu.name}")
        self._stack.callback(guest.close)
        return guest.connect(timeout=self.config.guest.boot_timeout)

    def _record(self, entry: str) -> None:
        """Write what we own into the lease before (mdev) or right after (pid) it exists,
        so a run killed too hard to clean up can be swept by :func:`sweep`."""
        self._lease.append(entry)
        self.host.write_file(f"{self.workdir}/lease", "\n".join(self._lease) + "\n")

    def migration_uri(self) -> str:
        """Source and destination share the host: a unix socket needs no port."""
        self._uris += 1
        return f"unix:{self.workdir}/migration-{self._uris}.sock"


def run_id() -> str:
    """Names this run's testbeds on the host: `qmp-mig run` sets it for its tests."""
    return os.environ.get("QMP_MIG_RUN_ID", "adhoc")


def sweep(config: Config, run: str) -> list[str]:
    """Remove what testbeds of run ``run`` left behind (kill its QEMUs, remove its
    mdevs and directories). Touches only what their leases name."""
    host = connect(config)
    swept: list[str] = []
    try:
        listing = host.run(
            ["sh", "-c", f"ls -d {config.host.workdir}/testbed.{run}.* 2>/dev/null"], check=False
        )
        for workdir in listing.stdout.split():
            lease = host.run(["cat", f"{workdir}/lease"], check=False).stdout.splitlines()
            for entry in reversed(lease):
                kind, _, what = entry.partition(" ")
                if kind == "pid":  # only if that pid is still our QEMU (pids get reused)
                    kill = 'grep -qF "$2" "/proc/$1/cmdline" 2>/dev/null && kill -9 "$1"'
                    host.run(["sh", "-c", kill, "sh", what, workdir], check=False)
                elif kind == "mdev" and host.exists(what):
                    host.run(["sh", "-c", 'echo 1 > "$1/remove"', "sh", what], check=False)
                swept.append(f"{kind} {what}")
            host.remove_tree(workdir)
            swept.append(f"dir {workdir}")
    finally:
        host.close()
    return swept


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
