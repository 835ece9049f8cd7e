# SPDX-License-Identifier: GPL-2.0-or-later
"""A fake host and fake QEMUs, for unit tests of the orchestration (no lab, no QEMU, no root).

:class:`FakeHost` is a :class:`~qmp_mig.hosts.Host` that answers the commands
the orchestration sends (mkdir, mktemp, cat, test, readlink, rm, the few
``sh -c`` scripts, sysfs writes, the migration probe) from a small in-memory
model: files, directories, symbolic links, processes, mediated devices and
tracefs instances. It models the host, not the code under test: mdevs appear
when their type's ``create`` is written and go when their ``remove`` is, a
device a running QEMU holds cannot be removed or opened by a second QEMU, a
pid is only killed by the sweep's script if its command line names what the
script greps for. Every change to the model is one line of :attr:`FakeHost.journal`
(``mkdir <path>``, ``write <path>``, ``rm <path>``, ``mdev create <uuid>``,
``mdev remove <uuid>``, ``trace start|stop <path>``, ``spawn <pid> <name>``,
``exit <pid> <status>``, ``close``), so a test
asserts what happened and in which order. A command the model does not know
is answered with status 127 and kept in :attr:`FakeHost.unknown`: a test that
sees one should fail, since the fake no longer matches what the code sends.

:class:`FakeQemu` is what :meth:`FakeHost.spawn` returns: a process whose
``stream`` is one end of a socketpair, with a thread on the other end that
speaks QMP the way QEMU does (greeting, ``qmp_capabilities``, replies with the
client's ids, timestamped events). Its commands have QEMU-like defaults
(``cont`` resumes, ``quit`` replies then exits, a unix migration connects to
the QEMU listening on that URI, ``migrate_cancel`` cancels, ``query-migrate``
reports the last status), and a test scripts the rest with :meth:`FakeQemu.on`
and :meth:`FakeQemu.play`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
import shlex
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qmp_mig import binding
from qmp_mig.config import Config, DeviceConfig, GuestConfig, HostConfig, VmConfig
from qmp_mig.fsm import Flag, State
from qmp_mig.hosts import CommandResult, Host, HostError, HostProcess
from qmp_mig.kernel_trace import TRACEFS

WORKDIR = "/var/tmp/qmp-mig"
MDEV_DEVICES = "/sys/bus/mdev/devices"
_CREATE = re.compile(r"/sys/class/mdev_bus/([^/]+)/mdev_supported_types/([^/]+)/create")
_REMOVE = re.compile(re.escape(MDEV_DEVICES) + r"/([^/]+)/remove")
ACTIVE = {"setup", "active", "pre-switchover", "device", "cancelling"}

Handler = Callable[["FakeQemu", dict[str, Any]], Any]


def fake_config(*devices: DeviceConfig, workdir: str = WORKDIR) -> Config:
    """A configuration for a host reached over SSH (the fake replaces the connection)."""
    return Config(
        path=Path("fake-host.toml"),
        host=HostConfig(kind="ssh", address="192.0.2.1", key="/nonexistent/key", workdir=workdir),
        vm=VmConfig(),
        guest=GuestConfig(kernel="/images/vmlinuz", initrd="/images/initrd.img", key="/nonexistent/guest"),
        devices=tuple(devices),
    )


def mdev_entry() -> DeviceConfig:
    return DeviceConfig(kind="mdev", parent="mtty", type="mtty-2")


class QmpFailure(Exception):
    """Raised by a handler: the command fails with QEMU's error class and text."""

    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(desc)
        self.error_class = error_class
        self.desc = desc


class FakeHost(Host):
    """An in-memory host; see the module docstring."""

    name = "fake-host"

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.files: dict[str, str] = {}
        self.dirs: set[str] = {"/"}
        self.links: dict[str, str] = {}  # path -> target (readlink -f)
        self.processes: dict[int, str] = {}  # every running process: pid -> /proc/<pid>/cmdline
        self.qemus: list[FakeQemu] = []  # every QEMU spawned, in order, also those that died
        self.listening: dict[str, FakeQemu] = {}  # migration URI -> the QEMU waiting on it
        self.flags: dict[str, Flag] = {}  # device sysfs path -> migration flags the kernel reports
        self.pci_drivers: dict[str, str] = {}  # bdf -> the driver it is bound to ("" none)
        self.driver_modules: dict[str, str] = {}  # loaded PCI driver -> its module
        self.in_use: dict[str, str] = {}  # bdf -> what the host uses it for (binding's check)
        self.mdev_flags = Flag.STOP_COPY | Flag.P2P
        self.tracefs = True  # False: the host has no tracefs (the kernel cross-check is off)
        self.fail_next_spawn: str | None = None  # stderr of a QEMU that exits before its monitor answers
        self.commands: list[tuple[str, ...]] = []
        self.unknown: list[tuple[str, ...]] = []
        self.journal: list[str] = []
        self.closed = False
        self._versions: dict[str, list[tuple[int, str]]] = {}  # path -> (journal index, content)
        self._next_pid = 4000
        self._next_port = 20000
        self._serial = 0

    # --- setting the scene ----------------------------------------------------------

    def add_mdev_parent(self, parent: str, mdev_type: str) -> None:
        self._file(f"/sys/class/mdev_bus/{parent}/mdev_supported_types/{mdev_type}/create", "")
        self._mkdir(MDEV_DEVICES)

    def add_pci(self, bdf: str, driver: str = "vfio-pci", flags: Flag = Flag.STOP_COPY) -> None:
        """A PCI function bound to ``driver`` ("" for none); the driver is loaded."""
        device = f"/sys/bus/pci/devices/{bdf}"
        self._mkdir(device)
        self.pci_drivers[bdf] = driver
        if driver and driver not in self.driver_modules:
            self.add_driver(driver, vfio=driver == "vfio-pci")
        self.flags[device] = flags

    def add_driver(self, name: str, vfio: bool = False) -> None:
        """A loaded PCI driver; ``vfio``: a variant driver built on vfio_pci_core."""
        module = name.replace("-", "_")
        self.driver_modules[name] = module
        self._mkdir(f"/sys/bus/pci/drivers/{name}")
        if vfio:
            self._mkdir(f"/sys/module/vfio_pci_core/holders/{module}")

    def add_vf(self, pf: str, number: int, bdf: str, driver: str = "igbvf") -> None:
        """A VF of ``pf`` (its virtfn link), bound to ``driver``."""
        self.add_pci(bdf, driver)
        self.links[f"/sys/bus/pci/devices/{pf}/virtfn{number}"] = f"/sys/devices/pci0000:00/{bdf}"
        self._file(f"/sys/bus/pci/devices/{pf}/virtfn{number}", "")

    def add_mdev(self, uuid: str) -> str:
        """An mdev that exists already (left by an earlier run)."""
        path = f"{MDEV_DEVICES}/{uuid}"
        self._mkdir(path)
        self.flags[path] = self.mdev_flags
        return path

    def add_process(self, pid: int, argv: list[str]) -> None:
        """A process that runs already (not one we spawned)."""
        self.processes[pid] = "\0".join(argv) + "\0"

    def add_dir(self, path: str) -> None:
        """A directory that exists already (a tracefs instance left by an earlier run)."""
        self._mkdir(path)

    def put(self, path: str, text: str) -> None:
        """A file that exists already (its directories too)."""
        self._mkdir(path.rsplit("/", 1)[0] or "/")
        self._file(path, text)

    # --- reading the model ------------------------------------------------------------

    def present(self, path: str) -> bool:
        return path in self.dirs or path in self.files

    def mdevs(self) -> set[str]:
        prefix = MDEV_DEVICES + "/"
        return {d[len(prefix):] for d in self.dirs if d.startswith(prefix) and "/" not in d[len(prefix):]}

    def file_at(self, path: str, index: int) -> str:
        """What ``path`` held when journal entry ``index`` happened ("" before it existed)."""
        content = ""
        for at, text in self._versions.get(path, []):
            if at <= index:
                content = text
        return content

    def running(self) -> list[FakeQemu]:
        return [q for q in self.qemus if q.exit_status is None]

    # --- Host ---------------------------------------------------------------------------

    def run(
        self, argv: list[str], *, timeout: float = 60, check: bool = True, stdin: bytes | None = None
    ) -> CommandResult:
        with self.lock:
            if self.closed:
                raise HostError(f"{self.name}: `{shlex.join(argv)}` after the connection was closed")
            self.commands.append(tuple(argv))
            code, out, err = self._answer(list(argv), stdin.decode() if stdin is not None else "")
        result = CommandResult(tuple(argv), code, out, err)
        if check and code != 0:
            raise HostError(f"{self.name}: `{shlex.join(argv)}` exited {code}: {err.strip() or out.strip()}")
        return result

    def spawn(self, argv: list[str], *, stderr_path: str) -> HostProcess:
        with self.lock:
            if self.closed:
                raise HostError(f"{self.name}: spawn after the connection was closed")
            pid = self._next_pid
            self._next_pid += 1
            qemu = FakeQemu(self, pid, argv, stderr_path)
            self.qemus.append(qemu)
            self.processes[pid] = "\0".join(argv) + "\0"
            self._log(f"spawn {pid} {qemu.name}")
            self.files[stderr_path] = ""  # the shell's 2> redirection
            failure, self.fail_next_spawn = self.fail_next_spawn or self._cannot_open(qemu), None
        qemu.start(failure)
        return qemu

    def open_tcp(self, port: int) -> Any:
        raise HostError(f"{self.name}: nothing listens on port {port} (no guests here)")

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self._log("close")

    # --- the model ------------------------------------------------------------------------

    def _log(self, entry: str) -> int:
        self.journal.append(entry)
        return len(self.journal) - 1

    def _mkdir(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self.dirs.add("/" + "/".join(parts[:i]))

    def _file(self, path: str, text: str) -> None:
        self.files[path] = text
        self._versions.setdefault(path, []).append((len(self.journal), text))

    def _remove(self, path: str) -> None:
        def gone(name: str) -> bool:
            return name == path or name.startswith(path.rstrip("/") + "/")
        self.dirs = {d for d in self.dirs if not gone(d)}
        self.files = {f: t for f, t in self.files.items() if not gone(f)}
        self.links = {n: t for n, t in self.links.items() if not gone(n)}

    def _user(self, device: str) -> FakeQemu | None:
        """The running QEMU that holds ``device`` open."""
        return next((q for q in self.running() if device in q.vfio_paths), None)

    def _cannot_open(self, qemu: FakeQemu) -> str | None:
        """Why QEMU would fail to open one of its VFIO devices (as QEMU says it)."""
        for device_arg, path in zip(qemu.vfio_args, qemu.vfio_paths):
            name = path.rsplit("/", 1)[-1]
            if path not in self.dirs:
                return (f"{qemu.binary}: -device {device_arg}: vfio {name}: no such host device: "
                        "No such file or directory\n")
            other = self._user(path)
            if other is not None and other is not qemu:
                return (f"{qemu.binary}: -device {device_arg}: vfio {name}: error opening the device: "
                        "Device or resource busy\n")
        return None

    def _exited(self, qemu: FakeQemu, status: int) -> None:
        """A QEMU ended: out of the process table; a migration it was part of breaks."""
        self.processes.pop(qemu.pid, None)
        self._log(f"exit {qemu.pid} {status}")
        for uri in [u for u, q in self.listening.items() if q is qemu]:
            del self.listening[uri]
        peer = qemu.peer
        if peer is not None and peer.exit_status is None and peer.migration.get("status") in ACTIVE:
            if peer.incoming:
                peer.set_migration("failed", error="load of migration failed: Input/output error")
            else:
                peer.set_migration("failed", error="Unable to write to socket: Connection reset by peer")

    def _unknown(self, argv: list[str]) -> tuple[int, str, str]:
        self.unknown.append(tuple(argv))
        return 127, "", f"fake host: no model for `{shlex.join(argv)}`\n"

    def _answer(self, argv: list[str], stdin: str) -> tuple[int, str, str]:
        match argv:
            case ["sh", "-c", script, "sh", *args]:
                return self._shell(argv, script, args, stdin)
            case ["sh", "-c", script]:
                return self._shell(argv, script, [], stdin)
            case ["mktemp", "-d", "-p", parent, template] if template.endswith("XXXXXX"):
                if parent not in self.dirs:
                    return 1, "", f"mktemp: failed to create directory via template '{parent}/{template}'\n"
                self._serial += 1
                path = f"{parent}/{template[:-6]}{self._serial:06d}"
                self._mkdir(path)
                self._log(f"mkdir {path}")
                return 0, path + "\n", ""
            case ["mkdir", "-p", path]:
                if path not in self.dirs:
                    self._mkdir(path)
                    self._log(f"mkdir {path}")
                return 0, "", ""
            case ["date", "+%s.%N"]:
                return 0, f"{time.time():.9f}\n", ""
            case ["test", "-e", path]:
                return (0 if self.present(path) else 1), "", ""
            case ["cat", "--", path] | ["cat", path]:
                if path in self.files:
                    return 0, self.files[path], ""
                return 1, "", f"cat: {path}: No such file or directory\n"
            case ["rm", "-rf", "--", path]:
                if self.present(path):
                    self._remove(path)
                    self._log(f"rm {path}")
                return 0, "", ""
            case ["readlink", path] if path.startswith("/sys/bus/pci/devices/") and path.endswith("/driver"):
                driver = self.pci_drivers.get(path.split("/")[5], "")
                return (0, f"../../../bus/pci/drivers/{driver}\n", "") if driver else (1, "", "")
            case ["readlink", path] if path.startswith("/sys/bus/pci/drivers/") and path.endswith("/module"):
                module = self.driver_modules.get(path.split("/")[5])
                return (0, f"../../../../module/{module}\n", "") if module else (1, "", "")
            case ["readlink", path] if path in self.links:
                return 0, self.links[path] + "\n", ""
            case ["readlink", "-f", path]:
                if path in self.links:
                    return 0, self.links[path] + "\n", ""
                return 1, "", ""
            case ["python3", "-c", _] if "def op_set_state" in stdin:  # host_vfio.py, probing
                device = json.loads(stdin.splitlines()[1])["path"]
                if device not in self.dirs:
                    opened = {"ok": False, "errno": 2, "error": f"ENOENT: {device}: no such device"}
                elif self._user(device) is not None:
                    opened = {"ok": False, "errno": 16, "error": "EBUSY: Device or resource busy"}
                else:
                    opened = {"ok": True, "fd": 5}
                flags = self.flags.get(device, self.mdev_flags)
                answers = [opened, {"ok": True, "value": int(flags)}, {"ok": True, "value": int(State.RUNNING)},
                           {"ok": True}]
                return 0, "".join(json.dumps(a) + "\n" for a in answers), ""
            case ["python3", "-c", script] if "getsockname" in script:  # Host.free_tcp_port
                self._next_port += 1
                return 0, f"{self._next_port}\n", ""
            case ["python3", "-c", script] if "CLOCK_TAI" in script:  # the kernel's TAI offset
                return 0, "0\n", ""
        return self._unknown(argv)

    def _shell(self, argv: list[str], script: str, args: list[str], stdin: str) -> tuple[int, str, str]:
        if script == 'cat > "$1"':  # Host.write_file
            return self._write(args[0], stdin)
        if script == 'echo 1 > "$1/remove"':  # the sweep removes an mdev
            return self._write(f"{args[0]}/remove", "1\n")
        if script == binding._IN_USE:
            return 0, (self.in_use[args[0]] + "\n") if args[0] in self.in_use else "", ""
        if script == binding._BIND:
            bdf, driver = args
            if driver not in self.driver_modules:
                return 1, "", "sh: 1: cannot write: No such device\n"
            self.pci_drivers[bdf] = driver
            self._log(f"bind {bdf} {driver}")
            return 0, "", ""
        if script == binding.RESTORE:
            bdf, driver = args
            if self.pci_drivers.get(bdf) and self._user(f"/sys/bus/pci/devices/{bdf}") is not None:
                return 1, "", "unbind of a function a QEMU holds\n"
            self.pci_drivers[bdf] = "" if driver == "-" else driver
            self._log(f"restore {bdf} {driver}")
            return 0, "", ""
        if 'mkdir -p -- "$1"' in script and "stat -c %u" in script:  # the shared work directory, made private
            if args[0] not in self.dirs:
                self._mkdir(args[0])
                self._log(f"mkdir {args[0]}")
            return 0, "", ""
        if 'mkdir "$t/instances/$1"' in script:  # a kernel trace instance with its probes
            if not self.tracefs:
                return 3, f"no tracefs at {TRACEFS}\n", ""
            path = f"{TRACEFS}/instances/{args[0]}"
            if path in self.dirs:
                return 1, "", f"mkdir: cannot create directory '{path}': File exists\n"
            self._mkdir(path)
            self._log(f"trace start {path}")
            return 0, "", ""
        if script.startswith('echo 0 > "$1/events/') and script.endswith('rmdir "$1"'):  # stop_instance
            if args[0] not in self.dirs:
                return 1, "", f"rmdir: failed to remove '{args[0]}': No such file or directory\n"
            self._remove(args[0])
            self._log(f"trace stop {args[0]}")
            return 0, "", ""
        if 'grep -qF "$2" "/proc/$1/cmdline"' in script and 'kill -9 "$1"' in script:  # the sweep's kill
            pid, named = int(args[0]), args[1]
            if named not in self.processes.get(pid, ""):
                return 1, "", ""
            self._kill(pid)
            return 0, "", ""
        if script == 'ls -d "$1"/testbed."$2".* 2>/dev/null':  # the sweep's glob of one run's directories
            where, pattern = args[0], f"testbed.{args[1]}.*"
            found = sorted(d for d in self.dirs
                           if d.rpartition("/")[0] == where and fnmatch.fnmatchcase(d.rpartition("/")[2], pattern))
            return (0 if found else 2), "".join(f"{d}\n" for d in found), ""
        return self._unknown(argv)

    def _kill(self, pid: int) -> None:
        qemu = next((q for q in self.qemus if q.pid == pid and q.exit_status is None), None)
        if qemu is not None:
            qemu.exit(-9)
        else:
            del self.processes[pid]
            self._log(f"exit {pid} -9")

    def _write(self, path: str, data: str) -> tuple[int, str, str]:
        if (match := _CREATE.fullmatch(path)) and path in self.files:
            device = f"{MDEV_DEVICES}/{data.strip()}"
            if not re.fullmatch(r"[0-9a-f-]{36}", data.strip()):
                return 1, "", f"sh: 1: cannot write {path}: Invalid argument\n"
            if device in self.dirs:
                return 1, "", f"sh: 1: cannot write {path}: File exists\n"
            self._mkdir(device)
            self.flags[device] = self.mdev_flags
            self._log(f"mdev create {data.strip()}")
            return 0, "", ""
        if (match := _REMOVE.fullmatch(path)) and f"{MDEV_DEVICES}/{match[1]}" in self.dirs:
            device = f"{MDEV_DEVICES}/{match[1]}"
            user = self._user(device)
            if user is not None:
                # The kernel would wait for the VM to let go; here the write fails at once,
                # so that a release before the VM's shutdown shows.
                self._log(f"mdev remove {match[1]} refused: open in pid {user.pid}")
                return 1, "", f"sh: 1: cannot write {path}: Device or resource busy\n"
            self._remove(device)
            self._log(f"mdev remove {match[1]}")
            return 0, "", ""
        parent = path.rsplit("/", 1)[0] or "/"
        if parent not in self.dirs:
            return 2, "", f"sh: 1: cannot create {path}: Directory nonexistent\n"
        if path.startswith("/sys/") and path not in self.files:
            return 2, "", f"sh: 1: cannot create {path}: Permission denied\n"
        self._file(path, data)
        self._log(f"write {path}")
        return 0, "", ""


class FakeQemu(HostProcess):
    """A QEMU process: QMP on ``stream``, served from a thread; see the module docstring."""

    def __init__(self, host: FakeHost, pid: int, argv: list[str], stderr_path: str) -> None:
        self.host = host
        self.pid = pid
        self.argv = list(argv)
        self.binary = argv[0]
        self.name = argv[argv.index("-name") + 1] if "-name" in argv else argv[0]
        self.stderr_path = stderr_path
        self.stream, self._end = socket.socketpair()
        devices = [argv[i + 1] for i, a in enumerate(argv[:-1])
                   if a == "-device" and argv[i + 1].startswith("vfio-pci,")]
        self.vfio_args = devices
        self.vfio_paths = [self._prop(d, "sysfsdev") for d in devices]
        self.vfio_ids = [self._prop(d, "id") for d in devices]
        self.incoming = "-incoming" in argv
        self.status = "inmigrate" if self.incoming else "prelaunch"
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.capabilities: dict[str, bool] = {}
        self.parameters: dict[str, Any] = {}
        self.migration: dict[str, Any] = {}  # what query-migrate answers
        self.handlers: dict[str, Handler] = {}
        self.peer: FakeQemu | None = None  # the other end of a migration
        self.exit_status: int | None = None
        self.exited = threading.Event()
        self._send_lock = threading.Lock()
        self._after: list[Callable[[], None]] = []

    @staticmethod
    def _prop(device: str, key: str) -> str:
        props = dict(p.split("=", 1) for p in device.split(",")[1:] if "=" in p)
        return props.get(key, "")

    # --- scripting ------------------------------------------------------------------------------

    def on(self, command: str, handler: Handler) -> None:
        """Answer ``command`` with ``handler(qemu, arguments)`` (its return value, or
        :class:`QmpFailure`) instead of the default."""
        self.handlers[command] = handler

    def after_reply(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the reply to the command being handled is sent."""
        self._after.append(action)

    def play(self, *statuses: str, error: str = "", step: float = 0.02,
             then: Callable[[], None] | None = None) -> None:
        """From a thread: each migration status in turn, ``step`` seconds apart; ``error``
        goes with a final 'failed'; ``then`` runs after the last one."""
        mine = self.migration

        def playing() -> None:
            nonlocal mine
            for status in statuses:
                time.sleep(step)
                if self.exit_status is not None or self.migration is not mine:
                    return  # it died, or something else decided the migration's fate
                self.set_migration(status, error=error if status == "failed" else "")
                mine = self.migration
            if then is not None:
                then()
        threading.Thread(target=playing, daemon=True, name=f"play-{self.name}").start()

    def set_migration(self, status: str, *, error: str = "") -> None:
        """The migration reaches ``status``: query-migrate says so, a MIGRATION event tells it."""
        info: dict[str, Any] = {"status": status}
        if error:
            info["error-desc"] = error
        if status == "completed" and not self.incoming:
            info.update({"total-time": 1234, "downtime": 56, "setup-time": 7,
                         "ram": {"transferred": 270_000_000, "total": 268_435_456},
                         "vfio": {"transferred": 8192}})
            self.status = "postmigrate"
        self.migration = info
        if self.capabilities.get("events"):
            self.emit("MIGRATION", {"status": status})

    def finish_incoming(self, refuse: str = "") -> None:
        """The incoming side at the end of the stream: it loads it (MIGRATION completed,
        RESUME, then each VFIO device's RUNNING) or, with ``refuse``, fails to."""
        if refuse:
            self.set_migration("failed", error=refuse)
            return
        self.set_migration("completed")
        self.status = "running"
        self.emit("RESUME")
        for device_id in self.vfio_ids:
            self.emit("VFIO_MIGRATION", {"device-id": device_id, "qom-path": f"/machine/peripheral/{device_id}",
                                         "device-state": "running"})

    def emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        now = time.time()
        self._send({"event": name, "data": data or {},
                    "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)}})

    def exit(self, status: int, stderr: str = "") -> None:
        """The process ends (``status`` -9: killed): its monitor closes."""
        with self.host.lock:
            if self.exit_status is not None:
                return
            if stderr:
                self.host.files[self.stderr_path] = self.host.files.get(self.stderr_path, "") + stderr
            self.exit_status = status
            self.host._exited(self, status)
        with contextlib.suppress(OSError):
            self._end.shutdown(socket.SHUT_RDWR)
        self.exited.set()

    # --- HostProcess ----------------------------------------------------------------------------

    def poll(self) -> int | None:
        return self.exit_status

    def wait(self, timeout: float) -> int:
        if not self.exited.wait(timeout):
            raise TimeoutError(f"pid {self.pid} still running after {timeout:.0f} s")
        assert self.exit_status is not None
        return self.exit_status

    def kill(self) -> None:
        self.exit(-9)

    # --- the process ----------------------------------------------------------------------------

    def start(self, failure: str | None) -> None:
        if failure is not None:  # dies before its monitor answers
            self.exit(1, stderr=failure)
            self._end.close()
            return
        with self.host.lock:
            workdir = self.stderr_path.rsplit("/", 1)[0]
            self.host.files[f"{workdir}/{self.name}.console.log"] = ""
            if self.vfio_paths:
                self.host.files[f"{workdir}/{self.name}.trace.log"] = ""
        threading.Thread(target=self._serve, daemon=True, name=f"fake-qemu-{self.name}").start()

    def _send(self, message: dict[str, Any]) -> None:
        with self._send_lock, contextlib.suppress(OSError):
            self._end.sendall(json.dumps(message).encode() + b"\r\n")

    def _serve(self) -> None:
        self._send({"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 0}, "package": ""},
                            "capabilities": []}})
        decoder = json.JSONDecoder()
        pending = ""
        try:
            while chunk := self._end.recv(65536):
                pending += chunk.decode()
                while pending.strip():
                    try:
                        message, end = decoder.raw_decode(pending.lstrip())
                    except json.JSONDecodeError:
                        break  # the rest of it is still on its way
                    pending = pending.lstrip()[end:]
                    self._dispatch(message)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                self._end.close()

    def _dispatch(self, message: dict[str, Any]) -> None:
        command = str(message.get("execute"))
        arguments = dict(message.get("arguments", {}))
        self.commands.append((command, arguments))
        self._after = []
        handler = self.handlers.get(command) or _DEFAULTS.get(command)
        reply: dict[str, Any]
        try:
            if handler is None:
                raise QmpFailure("CommandNotFound", f"The command {command} has not been found")
            answer = handler(self, arguments)
            reply = {"return": {} if answer is None else answer}
        except QmpFailure as failure:
            reply = {"error": {"class": failure.error_class, "desc": failure.desc}}
        if "id" in message:
            reply["id"] = message["id"]
        self._send(reply)
        for action in self._after:
            action()

    # --- QEMU's defaults ----------------------------------------------------------------------

    def _cont(self, _: dict[str, Any]) -> None:
        if self.status == "inmigrate":
            raise QmpFailure("GenericError", "Guest can not be started while an incoming migration is pending")
        self.status = "running"
        self.emit("RESUME")

    def _stop(self, _: dict[str, Any]) -> None:
        self.status = "paused"
        self.emit("STOP")

    def _quit(self, _: dict[str, Any]) -> None:
        def leave() -> None:
            self.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
            self.exit(0)
        self.after_reply(leave)

    def _set_capabilities(self, arguments: dict[str, Any]) -> None:
        for entry in arguments["capabilities"]:
            self.capabilities[entry["capability"]] = bool(entry["state"])

    def _set_parameters(self, arguments: dict[str, Any]) -> None:
        self.parameters.update(arguments)

    def _migrate_incoming(self, arguments: dict[str, Any]) -> None:
        if not self.incoming:
            raise QmpFailure("GenericError", "'-incoming' was not specified on the command line")
        with self.host.lock:
            self.host.listening[arguments["uri"]] = self
        self.set_migration("setup")

    def _migrate(self, arguments: dict[str, Any]) -> None:
        uri = arguments["uri"]
        if uri.startswith("file:"):
            self.after_reply(lambda: self.play("setup", "active", "completed"))
            return
        with self.host.lock:
            target = self.host.listening.get(uri)
        if target is None:
            error = f"Failed to connect to '{uri.removeprefix('unix:')}': No such file or directory"
            self.after_reply(lambda: self.play("setup", "failed", error=error))
            return
        self.peer, target.peer = target, self
        target.set_migration("active")
        self.after_reply(lambda: self.play("setup", "active"))

    def _migrate_cancel(self, _: dict[str, Any]) -> None:
        if self.migration.get("status") not in ACTIVE:
            return
        self.set_migration("cancelling")
        self.set_migration("cancelled")
        peer = self.peer
        if peer is not None and peer.migration.get("status") in ACTIVE:  # the stream closed under it
            peer.set_migration("failed", error="load of migration failed: Input/output error")

    def _query_migrate(self, _: dict[str, Any]) -> dict[str, Any]:
        return dict(self.migration)

    def _query_status(self, _: dict[str, Any]) -> dict[str, Any]:
        return {"status": self.status, "running": self.status == "running", "singlestep": False}


_DEFAULTS: dict[str, Handler] = {
    "qmp_capabilities": lambda qemu, arguments: {},
    "cont": FakeQemu._cont,
    "stop": FakeQemu._stop,
    "quit": FakeQemu._quit,
    "migrate-set-capabilities": FakeQemu._set_capabilities,
    "migrate-set-parameters": FakeQemu._set_parameters,
    "migrate-incoming": FakeQemu._migrate_incoming,
    "migrate": FakeQemu._migrate,
    "migrate_cancel": FakeQemu._migrate_cancel,
    "query-migrate": FakeQemu._query_migrate,
    "query-status": FakeQemu._query_status,
}
