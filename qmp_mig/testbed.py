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
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from . import binding, fsm
from .checks import CheckFailed, check_walk
from .config import GUEST_KINDS, Config, DeviceConfig
from .devices import DeviceError, MdevDevice, PciDevice, VfioDevice
from .fsm import Flag, State
from .guest import AgentShell, Guest
from .hosts import Host, HostError, LocalHost, SshHost, fetch
from .kernel_trace import TRACEFS, KernelCall, KernelTrace, check_device, debugfs_state, stop_instance
from .micro_guest import MicroGuest
from .migration import restore_from_file, save_to_file
from .pools import DevicePool, pci_functions, pool_key
from .qemu import QemuInstance, VmSpec
from .snapshots import snapshot_name, stale

# The micro guest answers within seconds of its QEMU starting, even under nested TCG;
# a minute is a guest that will not answer.
MICRO_READY_TIMEOUT = 60.0


def connect(config: Config) -> Host:
    h = config.host
    if h.kind == "local":
        return LocalHost()
    return SshHost(h.address, h.port, h.key, user=h.user, name=f"{h.user}@{h.address}:{h.port}",
                   host_key=h.host_key)


@dataclass
class KernelCheck:
    """The kernel's walks set against QEMU's: problems found, or why it could not look."""

    available: bool
    reason: str = ""
    problems: list[str] = field(default_factory=list)
    calls: dict[str, list[KernelCall]] = field(default_factory=dict)  # VM name -> its devices' calls


@dataclass
class RunningVm:
    """A started VM with its guest logged in."""

    qemu: QemuInstance
    guest: AgentShell
    flags: dict[str, Flag]  # device id -> the kernel's migration flags
    start_walk: dict[str, list[State]]  # device id -> the model's walk for how it came up

    def expected_walk(self, device_id: str, *then: list[State]) -> list[State]:
        """The whole expected walk so far: coming up, then ``then``."""
        return [*self.start_walk[device_id], *(s for part in then for s in part)]


class Testbed:
    """What one scenario owns on its host; see the module docstring."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, config: Config, artifacts: Path, guest: str = "linux") -> None:
        self.config = config
        self.artifacts = artifacts
        if guest not in GUEST_KINDS:
            raise ValueError(f"guest kind {guest!r}: expected one of {', '.join(GUEST_KINDS)}")
        if guest == "micro" and not config.guest.micro:
            raise ValueError("the guest kind 'micro' needs [guest] micro (the micro guest's ELF) "
                             "in the host configuration")
        self.guest_kind = guest
        self._stack = ExitStack()
        self._uris = 0
        if threading.current_thread() is threading.main_thread():
            # The runner stops a test with SIGTERM: unwind like Ctrl-C, until the testbed is closed.
            previous = signal.signal(signal.SIGTERM, _raise_interrupt)
            self._stack.callback(signal.signal, signal.SIGTERM, previous)
        self._lease: list[str] = []
        self.vms: list[tuple[QemuInstance, list[Flag]]] = []
        self._pools: dict[tuple[object, ...], DevicePool] = {}
        self._pool_of: dict[int, DevicePool] = {}  # id(device) -> its pool
        self._held: dict[QemuInstance, list[VfioDevice]] = {}  # devices each QEMU holds
        self._bound: set[str] = set()  # functions lent to a driver (the lease says what they had)
        self.host = connect(config)
        self._stack.callback(self.host.close)
        try:  # whatever was made before a failure here is given back at once
            self._open(config)
        except BaseException:
            self._stack.close()
            raise

    def _open(self, config: Config) -> None:
        private_workdir(self.host, config.host.workdir)
        self.workdir = self.host.run(
            ["mktemp", "-d", "-p", config.host.workdir, f"testbed.{run_id()}.XXXXXX"]
        ).stdout.strip()
        self._stack.callback(self.host.remove_tree, self.workdir)
        self.clock_offset = _clock_offset(self.host)
        instance = f"qmp-mig-{self.workdir.rsplit('/', 1)[-1]}"
        self._record(f"trace {TRACEFS}/instances/{instance}")  # leased before it exists, like an mdev
        self.kernel = KernelTrace.start(self.host, instance)
        self._stack.callback(self.kernel.stop)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- devices --------------------------------------------------------------

    def _pool(self, spec: DeviceConfig) -> DevicePool:
        key = pool_key(spec)
        if key not in self._pools:
            labels: list[tuple[str, DeviceConfig | None]] = [
                (f"[[device]] #{i + 1}", d) for i, d in enumerate(self.config.devices)]
            labels += [*self.config.test_device_labels(),
                       ("[unmigratable_device]", self.config.unmigratable_device)]
            label = next((name for name, d in labels if d is not None and pool_key(d) == key), "a device entry")
            members = pci_functions(self.host, spec) if spec.kind == "pci" else None
            self._pools[key] = DevicePool(spec, label, members)
        return self._pools[key]

    def _make_device(self, spec: DeviceConfig, holder: str) -> VfioDevice:
        pool = self._pool(spec)
        bdf = pool.take(holder)
        try:
            if spec.kind == "mdev":
                mdev = MdevDevice(self.host, spec.parent, spec.type, dict(spec.options))
                self._record(f"mdev {mdev.sysfs_path}")
                self._stack.callback(mdev.release)
                device: VfioDevice = mdev.create()
                pool.hold(mdev.kernel_name, holder)
            else:
                assert bdf is not None
                if spec.bind and bdf not in self._bound:
                    self._bind(bdf, spec.bind)
                device = PciDevice(self.host, bdf, dict(spec.options)).check_bound()
            for name, value in spec.attributes.items():
                self.host.write_file(f"{device.sysfs_path}/{name}", value)
        except BaseException:
            if bdf is not None:
                pool.give_back(bdf)
            raise
        return device

    def _bind(self, bdf: str, to: str) -> None:
        """Lend ``bdf`` to driver ``to`` until the testbed closes (the lease says what
        it had first, so a sweep can give it back if we are killed)."""
        problems = binding.in_use(self.host, bdf)
        if problems:
            raise DeviceError(f"pci {bdf}: the host is using it ({'; '.join(problems)}); not binding it to {to}")
        original = binding.driver(self.host, bdf)
        self._record(f"bind {bdf} {original or binding.NONE}")
        self._bound.add(bdf)
        self._stack.callback(binding.restore, self.host, bdf, original)
        if original != to:
            binding.bind(self.host, bdf, to)

    def _reclaim(self) -> None:
        """Devices of QEMUs that have exited go back to their pools (an mdev is removed)."""
        for qemu, held in list(self._held.items()):
            if not qemu.running:  # exited, killed, or never started
                for device in held:
                    self._pool_of[id(device)].give_back(device.kernel_name)
                    device.release()
                del self._held[qemu]

    def devices(self, specs: Sequence[DeviceConfig] | None = None,
                holder: str = "a VM") -> tuple[list[VfioDevice], list[Flag]]:
        """A free instance of each entry's kind (default: the configuration's entries),
        with the kernel's flags; given back when the QEMU that gets them has exited."""
        self._reclaim()
        devices: list[VfioDevice] = []
        flags: list[Flag] = []
        try:
            for spec in self.config.devices if specs is None else specs:
                device = self._make_device(spec, holder)
                self._pool_of[id(device)] = self._pool(spec)
                devices.append(device)
                view = device.probe()
                if spec.expect_flags is not None and view.flags != spec.expect_flags:
                    raise CheckFailed(
                        f"{device.name}: kernel reports migration flags {view.flags.describe()}, "
                        f"configuration expects {spec.expect_flags.describe()}"
                    )
                flags.append(view.flags)
        except BaseException:
            for device in devices:  # no QEMU will hold them
                self._pool_of[id(device)].give_back(device.kernel_name)
                device.release()
            raise
        return devices, flags

    # --- VMs --------------------------------------------------------------------

    def spec(self) -> VmSpec:
        c = self.config
        if self.guest_kind == "micro":
            assert c.guest.micro is not None  # checked in __init__
            return VmSpec(kernel=c.guest.micro, initrd="", append="", guest="micro",
                          memory_mb=c.vm.memory_mb, accel=c.vm.accel, machine=c.vm.machine, cpu=c.vm.cpu,
                          binary=c.vm.binary)
        return VmSpec(
            kernel=c.guest.kernel, initrd=c.guest.initrd, append=c.guest.append,
            memory_mb=c.vm.memory_mb, accel=c.vm.accel, machine=c.vm.machine, cpu=c.vm.cpu,
            binary=c.vm.binary,
        )

    def launch(
        self, name: str, *, incoming: bool = False, specs: Sequence[DeviceConfig] | None = None,
        reuse: tuple[list[VfioDevice], list[Flag]] | None = None,
    ) -> tuple[QemuInstance, list[Flag]]:
        """A paused QEMU, monitor connected, with fresh devices made from ``specs``
        (default: the configuration's) or, with ``reuse``, devices another VM had."""
        if reuse is not None:
            devices, flags = reuse
            for qemu_before, held in list(self._held.items()):  # they change hands
                self._held[qemu_before] = [d for d in held if all(d is not r for r in devices)]
            for device in devices:
                self._pool_of[id(device)].hold(device.kernel_name, name)
        else:
            devices, flags = self.devices(specs, holder=name)
        qemu = QemuInstance(
            self.host, self.spec(), name, devices=devices, workdir=self.workdir,
            artifacts=self.artifacts, incoming=incoming,
        )
        self._held[qemu] = list(devices)
        self._stack.callback(qemu.shutdown)
        qemu.launch()
        self._record(f"pid {qemu.pid}")
        self.vms.append((qemu, flags))
        return qemu, flags

    def boot_cold(self, name: str, specs: Sequence[DeviceConfig] | None = None) -> RunningVm:
        """Launch paused, let the guest boot from scratch, and log into it."""
        qemu, flags = self.launch(name, specs=specs)
        qemu.start()
        guest = self.guest(qemu)
        ids = [a.device_id for a in qemu.devices]
        return RunningVm(qemu, guest, dict(zip(ids, flags)),
                         {i: fsm.vm_start_events(f) for i, f in zip(ids, flags)})

    def boot(self, name: str = "source", specs: Sequence[DeviceConfig] | None = None) -> RunningVm:
        """A ready guest: restored from the booted-guest snapshot (made on first use);
        the micro guest boots faster than a snapshot loads."""
        if self.guest_kind == "micro":
            return self.boot_cold(name, specs)
        snapshot = self.snapshot(specs)
        qemu, flags = self.launch(name, incoming=True, specs=specs)
        restore_from_file(qemu, snapshot)
        guest = self.guest(qemu)
        ids = [a.device_id for a in qemu.devices]
        return RunningVm(qemu, guest, dict(zip(ids, flags)),
                         {i: fsm.destination_events(f) for i, f in zip(ids, flags)})

    def snapshot(self, specs: Sequence[DeviceConfig] | None = None) -> str:
        """Path on the host of the booted-guest snapshot for these devices."""
        specs = self.config.devices if specs is None else specs
        directory = self.config.host.snapshot_dir or f"{self.config.host.workdir}/snapshots"
        name = snapshot_name(self.host, self.spec(), specs)
        path = f"{directory}/{name}"
        if self.host.exists(path):
            return path
        # Cold boot once; the VM start walk is checked here since restores skip it.
        vm = self.boot_cold("snapshot-maker", specs)
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
        old = stale(self.host.run(["ls", directory]).stdout.split(), name)
        if old:  # 100 MB each, and nothing will load them again
            self.host.run(["rm", "-f", *(f"{directory}/{n}" for n in old)])
        return path

    def guest(self, qemu: QemuInstance) -> AgentShell:
        """The agents of ``qemu``'s guest, once it answers."""
        if qemu.spec.micro:
            micro = MicroGuest(self.host, qemu.agent_port, f"micro guest in {qemu.name}",
                               self.artifacts / f"{qemu.name}.agent.jsonl")
            self._stack.callback(micro.close)
            return micro.connect(timeout=MICRO_READY_TIMEOUT)
        guest = Guest(self.host, qemu.ssh_port, self.config.guest.key, name=f"guest in {qemu.name}")
        self._stack.callback(guest.close)
        return guest.connect(timeout=self.config.guest.boot_timeout)

    def lease_process(self, pid: int) -> None:
        """A process of ours on the host, started with its command line naming this
        testbed's work directory: a sweep after a killed run kills it."""
        self._record(f"pid {pid}")

    def _record(self, entry: str) -> None:
        """Write what we own into the lease before (mdev) or right after (pid) it exists,
        so a run killed too hard to clean up can be swept by :func:`sweep`."""
        self._lease.append(entry)
        self.host.write_file(f"{self.workdir}/lease", "\n".join(self._lease) + "\n")

    def check_kernel(self) -> KernelCheck:
        """Set every VM's VFIO_MIGRATION walk against the kernel's arcs so far.

        Each device's calls are those of its QEMU process up to the moment we
        began to stop that QEMU; QEMU's events are cut at the same moment.
        """
        if not self.kernel.available:
            return KernelCheck(False, reason=self.kernel.reason)
        calls = self.kernel.calls()
        remote = f"{self.workdir}/kernel.trace"
        self.kernel.save(remote)
        fetch(self.host, remote, self.artifacts / "kernel.trace")
        check = KernelCheck(True)
        for qemu, flags in self.vms:
            until = (qemu.ended_at + self.clock_offset) if qemu.ended_at else float("inf")
            for attachment, device_flags in zip(qemu.devices, flags):
                mine = [c for c in calls if c.tgid == qemu.pid and c.device == attachment.device.kernel_name
                        and c.time <= until]
                check.calls.setdefault(qemu.name, []).extend(mine)
                where = f"{qemu.name} {attachment.device_id}"
                check.problems += check_device(where, device_flags, mine,
                                               qemu.vfio_walk(attachment.device_id, until=until))
                state = debugfs_state(self.host, attachment.device.kernel_name) if qemu.running else None
                walk = qemu.vfio_walk(attachment.device_id)
                if state is not None and walk and state != walk[-1]:
                    check.problems.append(f"{where}: debugfs says {state.name}, QEMU's last event "
                                          f"{walk[-1].name}")
        return check

    def to_controller_clock(self, host_time: float) -> float:
        return host_time - self.clock_offset

    def migration_uri(self) -> str:
        """Source and destination share the host: a unix socket needs no port."""
        self._uris += 1
        return f"unix:{self.workdir}/migration-{self._uris}.sock"


def run_id() -> str:
    """Names this run's testbeds on the host: `qmp-mig run` sets it for its tests."""
    return os.environ.get("QMP_MIG_RUN_ID", "adhoc")


def sweep(config: Config, run: str) -> list[str]:
    """Remove what testbeds of run ``run`` left behind (kill its QEMUs, remove its
    mdevs and directories, give functions back to their drivers). Touches only what
    their leases name."""
    host = connect(config)
    swept: list[str] = []
    try:
        listing = host.run(
            ["sh", "-c", 'ls -d "$1"/testbed."$2".* 2>/dev/null', "sh", config.host.workdir, run], check=False
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
                elif kind == "trace" and host.exists(what):
                    stop_instance(host, what)
                elif kind == "bind":  # "<bdf> <driver it had, or ->"
                    bdf, _, original = what.partition(" ")
                    host.run(["sh", "-c", binding.RESTORE, "sh", bdf, original or binding.NONE], check=False)
                swept.append(f"{kind} {what}")
            host.remove_tree(workdir)
            swept.append(f"dir {workdir}")
    finally:
        host.close()
    return swept


# Make the shared work directory if needed, then refuse it unless it is a real
# directory (no symlink planted in its place) owned by us and closed to others:
# QEMU's sockets, the guest's snapshots and the leases live under it.
_PRIVATE = """set -e
umask 077
[ -e "$1" ] || [ -L "$1" ] || mkdir -p -- "$1"
if [ -L "$1" ]; then echo "is a symbolic link"; exit 3; fi
if [ ! -d "$1" ]; then echo "is not a directory"; exit 3; fi
owner=$(stat -c %u -- "$1"); mode=$(stat -c %a -- "$1")
if [ "$owner" != "$(id -u)" ]; then echo "belongs to uid $owner, not to us (uid $(id -u))"; exit 3; fi
case "$mode" in *[2367]?|*[2367]) echo "is writable by others (mode $mode)"; exit 3;; esac
"""


def private_workdir(host: Host, path: str) -> None:
    """``path`` on ``host`` is a directory of ours that nobody else can write, or an error."""
    result = host.run(["sh", "-c", _PRIVATE, "sh", path], check=False)
    if result.returncode != 0:
        raise HostError(f"{host.name}: work directory {path} {result.stdout.strip() or result.stderr.strip()}; "
                        "refusing to use it ([host] workdir names another)")


def _clock_offset(host: Host) -> float:
    """The host's wall clock minus ours (a nested lab's clock drifts from the controller's)."""
    before = time.time()
    stamp = host.run(["date", "+%s.%N"], check=False).stdout.strip()
    after = time.time()
    try:
        return float(stamp) - (before + after) / 2
    except ValueError:
        return 0.0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
