# SPDX-License-Identifier: GPL-2.0-or-later
"""Where QEMU runs: this machine (a real KVM host) or a host reached over SSH.

The nested lab is just an :class:`SshHost` on a loopback port. Everything
above this module (devices, QEMU instances, guests) talks to a :class:`Host`
and never asks which kind it is.

A host offers: run a command to completion, spawn a long-lived process whose
stdin/stdout is a byte stream (QEMU's QMP), read and write files, and open a
TCP stream to a port on the host (a guest's forwarded SSH port).
"""

from __future__ import annotations

import contextlib
import shlex
import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

# Every process we spawn dies with its controller: on a local host that is our
# own process, over SSH the server's session process, which exits when the
# connection drops (Ctrl-C, crash, killed runner).
PDEATHSIG = ["setpriv", "--pdeathsig", "KILL", "--"]


class HostError(RuntimeError):
    """A command on a host failed or timed out."""


class HostLost(HostError):
    """The host under test stopped answering (its connection died), or never answered.

    ``last_answer`` is when it last answered us (wall clock), None if it never did."""

    def __init__(self, host: str, cause: str, last_answer: float | None) -> None:
        self.host = host
        self.cause = cause
        self.last_answer = last_answer
        self.noticed = time.time()
        if last_answer is None:
            super().__init__(f"host under test {host} does not answer: {cause}")
        else:
            super().__init__(f"host under test {host} stopped answering (last answer at "
                             f"{time.strftime('%H:%M:%S', time.localtime(last_answer))}): {cause}")


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def _describe(argv: list[str] | tuple[str, ...]) -> str:
    text = shlex.join(argv)
    return text if len(text) < 300 else text[:300] + " ..."


class HostProcess(ABC):
    """A spawned process; ``stream`` is a socket joined to its stdin and stdout."""

    pid: int
    stream: socket.socket

    @abstractmethod
    def poll(self) -> int | None:
        """Exit status, or None while it runs."""

    @abstractmethod
    def wait(self, timeout: float) -> int:
        """Wait for exit; raises :class:`TimeoutError`."""

    @abstractmethod
    def kill(self) -> None:
        """SIGKILL the process (no error if it is already gone)."""


class Host(ABC):
    """A machine that can run QEMU and owns VFIO devices."""

    name: str

    @abstractmethod
    def run(
        self,
        argv: list[str],
        *,
        timeout: float = 60,
        check: bool = True,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run to completion. Raises :class:`HostError` on timeout or, with check, failure."""

    @abstractmethod
    def spawn(self, argv: list[str], *, stderr_path: str) -> HostProcess:
        """Start a long-lived process with stderr in a file on the host."""

    @abstractmethod
    def open_tcp(self, port: int) -> Any:
        """A socket-like stream to ``127.0.0.1:port`` as seen from the host."""

    def close(self) -> None:
        """Drop connections; processes spawned through them die with them."""

    def check_answering(self) -> None:
        """Raise :class:`HostLost` if the host no longer answers (this machine always does)."""

    # Conveniences built on run(); each is one idea, named for what it does.
    def write_file(self, path: str, data: str, *, timeout: float = 30) -> None:
        self.run(["sh", "-c", 'cat > "$1"', "sh", path], stdin=data.encode(), timeout=timeout)

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], check=False).returncode == 0

    def remove_tree(self, path: str) -> None:
        if path and path != "/":
            self.run(["rm", "-rf", "--", path], check=False)

    def free_tcp_port(self) -> int:
        """A port nothing listens on right now (the kernel picks it)."""
        script = (
            "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); "
            "print(s.getsockname()[1])"
        )
        return int(self.run(["python3", "-c", script]).stdout)


def _check(result: CommandResult, check: bool, host: str) -> CommandResult:
    if check and result.returncode != 0:
        raise HostError(
            f"{host}: `{_describe(result.argv)}` exited {result.returncode}: "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return result


# --- this machine ------------------------------------------------------------


class _LocalProcess(HostProcess):
    def __init__(self, popen: subprocess.Popen[bytes], stream: socket.socket) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stream = stream

    def poll(self) -> int | None:
        return self._popen.poll()

    def wait(self, timeout: float) -> int:
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"pid {self.pid} still running after {timeout:.0f} s") from None

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()
            self._popen.wait(10)


class LocalHost(Host):
    """The machine the suite runs on (a real KVM host)."""

    name = "local"

    def run(
        self, argv: list[str], *, timeout: float = 60, check: bool = True, stdin: bytes | None = None
    ) -> CommandResult:
        try:
            proc = subprocess.run(
                argv, input=stdin, capture_output=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise HostError(f"local: `{_describe(argv)}` timed out after {timeout:.0f} s") from None
        result = CommandResult(
            tuple(argv),
            proc.returncode,
            proc.stdout.decode("utf-8", "surrogateescape"),
            proc.stderr.decode("utf-8", "replace"),
        )
        return _check(result, check, self.name)

    def spawn(self, argv: list[str], *, stderr_path: str) -> HostProcess:
        ours, theirs = socket.socketpair()
        with open(stderr_path, "wb") as stderr:
            popen = subprocess.Popen(
                [*PDEATHSIG, *argv], stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=stderr
            )
        theirs.close()
        return _LocalProcess(popen, ours)

    def open_tcp(self, port: int) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=10)


# --- a host over SSH (the lab, or a remote KVM host) ---------------------------


class _SshProcess(HostProcess):
    """A remote process on its own SSH channel, pumped into a local socketpair."""

    def __init__(self, host: SshHost, channel: paramiko.Channel, argv: list[str]) -> None:
        self._host = host
        self._channel = channel
        self._argv = argv
        self.stream, self._pump_end = socket.socketpair()
        # The remote shell prints its pid, then execs the program in place.
        self.pid = int(self._read_line(timeout=30))
        threading.Thread(target=self._pump_out, daemon=True, name=f"ssh-out-{self.pid}").start()
        threading.Thread(target=self._pump_in, daemon=True, name=f"ssh-in-{self.pid}").start()

    def _read_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            self._channel.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                byte = self._channel.recv(1)
            except TimeoutError:
                raise HostError(f"{self._host.name}: no pid from `{_describe(self._argv)}`") from None
            if not byte:
                raise HostError(
                    f"{self._host.name}: `{_describe(self._argv)}` exited before it started"
                )
            line += byte
        self._channel.settimeout(None)
        return line.decode().strip()

    def _pump_out(self) -> None:
        try:
            while data := self._channel.recv(65536):
                self._pump_end.sendall(data)
        except OSError:
            pass
        finally:
            self._pump_end.shutdown(socket.SHUT_WR)

    def _pump_in(self) -> None:
        try:
            while data := self._pump_end.recv(65536):
                self._channel.sendall(data)
        except OSError:
            pass

    def poll(self) -> int | None:
        return self._channel.recv_exit_status() if self._channel.exit_status_ready() else None

    def wait(self, timeout: float) -> int:
        if not self._channel.status_event.wait(timeout):
            raise TimeoutError(f"{self._host.name}: pid {self.pid} still running after {timeout:.0f} s")
        return self._channel.recv_exit_status()

    def kill(self) -> None:
        if self.poll() is None:
            self._host.run(["kill", "-9", str(self.pid)], check=False)
            with contextlib.suppress(TimeoutError):
                self.wait(10)
        self._channel.close()


class SshHost(Host):
    """A host reached over SSH with a key (the lab VM, or a remote KVM host)."""

    def __init__(
        self, address: str, port: int, key_file: str, *, user: str = "root", name: str | None = None,
        host_key: str = "",
    ) -> None:
        """``host_key`` (``ssh-ed25519 AAAA...``) pins the host's key; without it the key
        must be in ``~/.ssh/known_hosts``. An unknown or different key is refused."""
        self.name = name or f"{user}@{address}:{port}"
        self._client = paramiko.SSHClient()
        self._client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if host_key:
            kind, _, data = host_key.strip().partition(" ")
            entry = paramiko.hostkeys.HostKeyEntry.from_line(f"x {kind} {data.split()[0]}")
            if entry is None or entry.key is None:
                raise HostError(f"{self.name}: host key {host_key[:40]!r} is not an OpenSSH public key line")
            known = address if port == 22 else f"[{address}]:{port}"
            self._client.get_host_keys().add(known, entry.key.get_name(), entry.key)
        else:
            with contextlib.suppress(OSError):
                self._client.load_host_keys(str(Path.home() / ".ssh" / "known_hosts"))
        try:
            self._client.connect(
                address,
                port=port,
                username=user,
                key_filename=key_file,
                look_for_keys=False,
                allow_agent=False,
                timeout=20,
                banner_timeout=20,
                auth_timeout=20,
            )
        except paramiko.AuthenticationException as exc:
            self._client.close()
            raise HostError(f"{self.name}: SSH login as {user} with key {key_file} refused: {exc}") from None
        except paramiko.BadHostKeyException as exc:
            self._client.close()
            raise HostError(f"{self.name}: its SSH host key is {_fingerprint(exc.key)}, not the expected "
                            f"{_fingerprint(exc.expected_key)}: refusing to connect") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._client.close()
            if "not found in known_hosts" in str(exc):  # RejectPolicy's words
                raise HostError(f"{self.name}: its SSH host key is unknown: add it to ~/.ssh/known_hosts "
                                "(ssh-keyscan) or set [host] host_key") from None
            raise HostLost(self.name, _unreachable(exc), None) from None
        transport = self._client.get_transport()
        assert transport is not None
        transport.set_keepalive(15)
        self._transport = transport
        self.last_answer = time.time()

    def check_answering(self) -> None:
        if not self._transport.is_active():
            raise HostLost(self.name, "its SSH connection closed", self.last_answer)

    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        """A failure of the connection itself becomes :class:`HostLost`."""
        try:
            yield
        except (paramiko.SSHException, OSError, EOFError):
            self.check_answering()
            raise
        self.last_answer = time.time()

    def run(
        self, argv: list[str], *, timeout: float = 60, check: bool = True, stdin: bytes | None = None
    ) -> CommandResult:
        with self._answering():
            channel = self._transport.open_session(timeout=20)
            channel.exec_command(shlex.join(argv))
            if stdin is not None:
                channel.sendall(stdin)
            channel.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        channel.settimeout(0.5)
        while not (channel.exit_status_ready() and not channel.recv_ready()
                   and not channel.recv_stderr_ready()):
            if time.monotonic() > deadline:
                channel.close()
                raise HostError(f"{self.name}: `{_describe(argv)}` timed out after {timeout:.0f} s")
            try:
                if chunk := channel.recv(65536):
                    out += chunk
            except TimeoutError:
                pass
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
        returncode = channel.recv_exit_status()
        channel.close()
        if returncode == -1:  # no exit status: the channel closed under the command
            self.check_answering()
        else:
            self.last_answer = time.time()
        result = CommandResult(
            tuple(argv), returncode, out.decode("utf-8", "surrogateescape"), err.decode("utf-8", "replace")
        )
        return _check(result, check, self.name)

    def spawn(self, argv: list[str], *, stderr_path: str) -> HostProcess:
        with self._answering():
            channel = self._transport.open_session(timeout=20)
            command = f"echo $$; exec {shlex.join([*PDEATHSIG, *argv])} 2>{shlex.quote(stderr_path)}"
            channel.exec_command(command)
        return _SshProcess(self, channel, argv)

    def open_tcp(self, port: int) -> paramiko.Channel:
        with self._answering():
            return self._transport.open_channel(
                "direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=20
            )

    def close(self) -> None:
        self._client.close()


def _fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def _unreachable(error: BaseException) -> str:
    """Why an SSH connection could not be made, in a sentence."""
    if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
        return "nothing accepts SSH connections there (connection refused)"
    if isinstance(error, TimeoutError):
        return "no answer to an SSH connection within 20 s"
    return f"the SSH connection failed ({type(error).__name__}: {error})"


def fetch(host: Host, remote: str, local: Path) -> bool:
    """Copy a file from the host into the artifacts; False if it is not there."""
    result = host.run(["cat", "--", remote], check=False, timeout=60)
    if result.returncode != 0:
        return False
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(result.stdout.encode("utf-8", "surrogateescape"))
    return True
