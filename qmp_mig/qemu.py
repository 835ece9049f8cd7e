# SPDX-License-Identifier: GPL-2.0-or-later
"""One QEMU process on a host: one VM, its monitor, its artifacts.

In the spirit of QEMU's own QEMUMachine: a context manager, so the process is
gone after ``with``; launched paused (``-S``) with QMP on its stdio so that not
one event is missed; console and stderr written to files on the host and
copied into the test's artifacts on shutdown, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from .devices import VfioDevice
from .fsm import State
from .hosts import Host, HostProcess, fetch
from .qemu_trace import TRACE_EVENTS, TraceRecord, parse
from .qmp import QmpError, QmpSession


class QemuError(RuntimeError):
    """QEMU failed to start or misbehaved; carries the command line and stderr."""


@dataclass
class VmSpec:
    """What a VM looks like. Source and destination must use the same spec.

    ``guest`` is the kind of guest: "linux" boots ``kernel`` and ``initrd`` and is
    reached over SSH through a forwarded port; "micro" boots our micro guest ELF
    (``kernel``, multiboot) that has no network and answers on its serial port.
    """

    kernel: str
    initrd: str
    append: str = "console=ttyS0"
    memory_mb: int = 256
    smp: int = 1
    accel: str = "tcg"
    machine: str = "q35"
    cpu: str = "max"
    binary: str = "qemu-system-x86_64"
    extra_args: list[str] = field(default_factory=list)
    guest: str = "linux"

    @property
    def micro(self) -> bool:
        return self.guest == "micro"


@dataclass(frozen=True)
class DeviceAttachment:
    device_id: str
    device: VfioDevice


class QemuInstance:
    """A QEMU process. Use as a context manager; launch() starts it paused."""

    def __init__(
        self,
        host: Host,
        spec: VmSpec,
        name: str,
        *,
        devices: list[VfioDevice],
        workdir: str,
        artifacts: Path,
        incoming: bool = False,
    ) -> None:
        self.host = host
        self.spec = spec
        self.name = name
        self.devices = [DeviceAttachment(f"vfio{i}", d) for i, d in enumerate(devices)]
        self.incoming = incoming
        self.workdir = workdir
        self.artifacts = artifacts
        self.console_path = f"{workdir}/{name}.console.log"
        self.stderr_path = f"{workdir}/{name}.stderr.log"
        self.trace_path = f"{workdir}/{name}.trace.log"
        self.ssh_port = 0  # a Linux guest's SSH, forwarded to this host port
        self.agent_port = 0  # a micro guest's serial port, a TCP server on this host port
        self.qmp: QmpSession | None = None
        self._process: HostProcess | None = None
        self.exit_status: int | None = None
        # When we began to stop it (controller clock): what it does after that,
        # such as the walk QEMU makes on quit, is not part of the scenario.
        self.ended_at: float | None = None

    # --- life cycle ---------------------------------------------------------

    def command_line(self) -> list[str]:
        s = self.spec
        argv = [
            s.binary, "-name", self.name, "-nodefaults", "-no-user-config",
            "-display", "none", "-machine", f"{s.machine},accel={s.accel}", "-cpu", s.cpu,
            "-m", str(s.memory_mb), "-smp", str(s.smp),
        ]
        if s.micro:
            # Everything the guest says is also logged as its console.
            argv += [
                "-kernel", s.kernel,
                "-chardev", f"socket,id=agent,host=127.0.0.1,port={self.agent_port},server=on,wait=off,nodelay=on,"
                            f"logfile={self.console_path}",
                "-serial", "chardev:agent",
            ]
        else:
            argv += [
                "-kernel", s.kernel, "-initrd", s.initrd, "-append", s.append,
                "-serial", f"file:{self.console_path}",
                "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
                "-device", "virtio-net-pci,netdev=net0,romfile=",
            ]
        argv += ["-qmp", "stdio"]
        for attachment in self.devices:
            argv += attachment.device.qemu_args(attachment.device_id)
        if self.devices:
            # QEMU's view of each device's migration data (what PRECOPY_INFO
            # announced, what each read returned): see qemu_trace.
            argv += ["-D", self.trace_path]
            for event in TRACE_EVENTS:
                argv += ["-trace", event]
        # A fresh VM starts paused so QMP hears its first events (the VM start
        # walk); an incoming one cannot run before its migration and must
        # autostart after it, as a destination does.
        argv += ["-incoming", "defer"] if self.incoming else ["-S"]
        return argv + s.extra_args

    def launch(self) -> QemuInstance:
        """Start paused with the monitor connected; the guest has not run yet."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        if self.spec.micro:
            self.agent_port = self.host.free_tcp_port()
        else:
            self.ssh_port = self.host.free_tcp_port()
        argv = self.command_line()
        (self.artifacts / f"{self.name}.cmdline").write_text(shlex.join(argv) + "\n")
        self._process = self.host.spawn(argv, stderr_path=self.stderr_path)
        try:
            self.qmp = QmpSession.connect(
                self.name, self._process.stream, self.artifacts / f"{self.name}.qmp.jsonl"
            )
        except Exception as exc:  # noqa: BLE001 - any failure: kill, then report it
            self.kill()
            self._process.stream.close()
            self._collect_artifacts()
            stderr = (self.artifacts / f"{self.name}.stderr.log")
            text = stderr.read_text(errors="replace").strip() if stderr.exists() else ""
            raise QemuError(
                f"{self.name}: QEMU did not start ({exc}); exit status {self.exit_status}; "
                f"stderr: {text or '(empty)'}; command: {shlex.join(argv)}"
            ) from None
        return self

    def start(self, timeout: float = 60) -> None:
        """Let the guest run (``cont``) and wait for QEMU to confirm it."""
        qmp = self.monitor
        since = len(qmp.events)
        qmp.execute("cont")
        qmp.wait_event("RESUME", timeout=timeout, since=since)

    def shutdown(self, timeout: float = 30) -> None:
        """Quit politely, kill if that fails; always collect the artifacts."""
        if self.ended_at is None and self._process is not None:
            self.ended_at = time.time()
        try:
            if self.qmp and self.running:
                # Any failure here is covered by the kill below.
                with contextlib.suppress(Exception):
                    self.qmp.execute("quit", timeout=timeout)
            if self._process:
                try:
                    self.exit_status = self._process.wait(timeout)
                except TimeoutError:
                    self.kill()
        finally:
            self.kill()
            if self.qmp:
                self.qmp.close()
            self._collect_artifacts()

    def kill(self) -> None:
        if self.ended_at is None and self._process is not None:
            self.ended_at = time.time()
        if self._process:
            self._process.kill()
            self.exit_status = self._process.poll()

    def __enter__(self) -> QemuInstance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def pid(self) -> int:
        """QEMU's process id on its host."""
        if self._process is None:
            raise QemuError(f"{self.name}: not launched")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def died(self, timeout: float = 30) -> bool:
        """Whether QEMU ended without being asked to. A QEMU that closed its monitor
        may still be dying (an abort dumps the vCPU state first): it gets ``timeout``
        seconds to exit, so that its stderr holds its last words."""
        if self.ended_at is not None or self._process is None:
            return False
        if self.running and not (self.qmp is not None and self.qmp.gone):
            return False
        with contextlib.suppress(TimeoutError):
            self.exit_status = self._process.wait(timeout)
        return True

    @property
    def monitor(self) -> QmpSession:
        if self.qmp is None:
            raise QemuError(f"{self.name}: not launched")
        return self.qmp

    # --- observations -------------------------------------------------------

    def status(self) -> str:
        return str(self.monitor.execute("query-status")["status"])

    def vfio_walk(self, device_id: str, since: float = 0.0, until: float = float("inf")) -> list[State]:
        """The states QEMU requested for one device, from its VFIO_MIGRATION events
        (``since``/``until``: QEMU timestamps, the host's clock)."""
        return [
            State.from_qapi(e.data["device-state"])
            for e in self.monitor.events
            if e.name == "VFIO_MIGRATION" and e.data.get("device-id") == device_id
            and since <= e.time <= until
        ]

    def settled_vfio_walk(self, device_id: str, length: int, timeout: float = 30) -> list[State]:
        """The device's walk once it holds ``length`` states, or as it is after
        ``timeout``: QEMU may report a migration's end before the device's last
        state change (seen with a cut connection: "failed" before the arc back
        to RUNNING)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = len(self.monitor.events)
            walk = self.vfio_walk(device_id)
            left = deadline - time.monotonic()
            if len(walk) >= length or left <= 0:
                return walk
            try:
                self.monitor.wait_event("VFIO_MIGRATION", timeout=left, since=seen,
                                        match=lambda e: e.data.get("device-id") == device_id)
            except (TimeoutError, QmpError):
                return self.vfio_walk(device_id)  # the caller's check says what is missing

    def stderr_tail(self, lines: int = 5) -> str:
        """The last lines QEMU wrote to stderr (read on its host)."""
        result = self.host.run(["tail", "-n", str(lines), self.stderr_path], check=False)
        return " | ".join(result.stdout.strip().splitlines())

    def vfio_timed_walks(self, since_index: int = 0) -> dict[str, list[tuple[float, State]]]:
        """Per device, (QEMU timestamp, state) of each VFIO_MIGRATION event from the
        ``since_index``-th event on (an index into ``monitor.events``)."""
        walks: dict[str, list[tuple[float, State]]] = {a.device_id: [] for a in self.devices}
        for e in self.monitor.events[since_index:]:
            if e.name == "VFIO_MIGRATION" and e.data.get("device-id") in walks:
                walks[e.data["device-id"]].append((e.time, State.from_qapi(e.data["device-state"])))
        return walks

    def vfio_trace(self) -> list[TraceRecord]:
        """QEMU's vfio migration trace so far, read on its host (empty without devices)."""
        if not self.devices:
            return []
        result = self.host.run(["cat", self.trace_path], check=False)
        return parse(result.stdout)

    def _errors(self) -> list[str]:
        """QEMU's error lines on stderr (its own lines, warnings left out)."""
        result = self.host.run(["cat", self.stderr_path], check=False)
        return [line for line in result.stdout.splitlines()
                if line.startswith("qemu") and "warning:" not in line]

    def last_error(self) -> str:
        """QEMU's last error line: why it died, if it did."""
        errors = self._errors()
        return errors[-1] if errors else "(nothing on stderr)"

    def device_errors(self, device_id: str) -> list[str]:
        """What QEMU reported as errors about one device."""
        name = f"{self.device_name(device_id)}: "
        return [line.split(name, 1)[1] for line in self._errors() if name in line]

    def device_name(self, device_id: str) -> str:
        """QEMU's name for a device in its trace: the last part of its sysfs path."""
        attachment = next(a for a in self.devices if a.device_id == device_id)
        return Path(attachment.device.sysfs_path).name

    def _collect_artifacts(self) -> None:
        traced = [self.trace_path] if self.devices else []
        for remote in (self.console_path, self.stderr_path, *traced):
            fetch(self.host, remote, self.artifacts / Path(remote).name)
        if self.qmp:
            timeline = [
                {"time": e.time, "vm": self.name, "event": e.name, "data": e.data}
                for e in self.qmp.events
            ]
            (self.artifacts / f"{self.name}.events.json").write_text(json.dumps(timeline, indent=1))
