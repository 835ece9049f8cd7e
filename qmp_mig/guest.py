# SPDX-License-Identifier: GPL-2.0-or-later
"""A guest's shell over SSH (paramiko), reached through the host that runs it.

The guest's port 22 is forwarded by QEMU's user-mode network to a port on the
host; we open that port through the host (a direct-tcpip channel when the host
is itself over SSH), so nothing here knows whether the host is the lab.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import time
from collections.abc import Iterator
from typing import Any, Protocol

import paramiko

from .hosts import Host


@contextlib.contextmanager
def _quiet_paramiko() -> Iterator[None]:
    logger = logging.getLogger("paramiko.transport")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


# One login's limit. A guest just restored or migrated under nested TCG runs with
# a cold translation cache: its first login took 27 s in the lab. A shorter limit
# abandons logins that were about to succeed, and each new one starts over.
LOGIN_TIMEOUT = 120.0


class GuestError(RuntimeError):
    """The guest could not be reached, or a command in it failed."""


class AgentShell(Protocol):
    """What scenarios need of a guest, whatever its kind: run one of our agents
    (qmp_mig/agents.py) and get its JSON answer. The Linux guest does it over SSH
    (:class:`Guest`), the micro guest over its serial port (qmp_mig/micro_guest.py)."""

    name: str

    def agent(self, argv: list[str], *, timeout: float = 120) -> dict[str, Any]: ...

    def close(self) -> None: ...


class Guest:
    """Commands in one guest, through ``host``'s forwarded ``port``."""

    def __init__(self, host: Host, port: int, key_file: str, name: str) -> None:
        self.host = host
        self.port = port
        self.key_file = key_file
        self.name = name
        self._client: paramiko.SSHClient | None = None

    def connect(self, timeout: float) -> Guest:
        """Log in, retrying until sshd answers or ``timeout`` passes (it is booting)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        delay = 0.5
        with _quiet_paramiko():  # refused attempts are expected; we report the last one
            while time.monotonic() < deadline:
                try:
                    self._client = self._login(min(LOGIN_TIMEOUT, max(1.0, deadline - time.monotonic())))
                    return self
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    last = exc
                    time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                    delay = min(delay * 1.5, 3.0)
        raise GuestError(f"{self.name}: no SSH login within {timeout:.0f} s (last error: {last})")

    def _login(self, timeout: float) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        # Each guest image has its own host key and lives behind a private forward.
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(
                "guest", username="root", key_filename=self.key_file, sock=self.host.open_tcp(self.port),
                look_for_keys=False, allow_agent=False,
                timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
            )
        except BaseException:
            client.close()
            raise
        return client

    def run(self, argv: list[str], *, timeout: float = 60, check: bool = True) -> tuple[int, str, str]:
        if self._client is None:
            raise GuestError(f"{self.name}: not connected")
        try:
            _, stdout, stderr = self._client.exec_command(shlex.join(argv), timeout=timeout)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
        except TimeoutError:
            self.host.check_answering()
            raise GuestError(f"{self.name}: `{shlex.join(argv)}` timed out after {timeout:.0f} s") from None
        except (paramiko.SSHException, OSError, EOFError):
            self.host.check_answering()  # the guest's connection runs through the host's
            raise
        status = stdout.channel.recv_exit_status()
        if status == -1:  # no exit status: the connection closed under the command
            self.host.check_answering()
        if check and status != 0:
            raise GuestError(f"{self.name}: `{shlex.join(argv)}` exited {status}: {err.strip() or out.strip()}")
        return status, out, err

    def agent(self, argv: list[str], *, timeout: float = 120) -> dict[str, Any]:
        """Run a guest agent; it prints one JSON object (with 'error' on failure)."""
        status, out, err = self.run(argv, timeout=timeout, check=False)
        lines = out.strip().splitlines()
        try:
            answer: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            raise GuestError(
                f"{self.name}: {argv[0]} printed no JSON (exit {status}): {err.strip() or out.strip()}"
            ) from None
        if status != 0 or "error" in answer:
            raise GuestError(f"{self.name}: {' '.join(argv[:2])}: {answer.get('error', answer)}")
        return answer

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
