# SPDX-License-Identifier: GPL-2.0-or-later
"""The micro guest's agents, over its serial port (guest_agents/micro).

The micro guest has no OS and no network. Its QEMU serves the guest's COM1 as a
TCP server on the host (``-chardev socket,server=on``); we open that port through
the host, as the Linux guest's SSH is opened. The protocol is a line each way:
the agent's argv joined by spaces, then one line of JSON back, exactly what the
Linux agent of the same name prints. Lines that are not JSON (the boot banner)
are kept in the transcript and otherwise ignored.

After a migration the guest runs in another QEMU with its own port: a new
:class:`MicroGuest` connects there. Nothing is in flight at the switchover, since
a command is only sent while the test waits for its answer.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

from .guest import GuestError
from .hosts import Host

# One ping's wait before the next is sent: a ping that reached the UART before the
# guest set it up may have been dropped.
PING_INTERVAL = 1.0
MAX_LINE = 8192  # longer than any answer the guest gives (a verify report of 64 pages)


class MicroGuest:
    """Commands to the micro guest of one QEMU, through ``host``'s ``port``."""

    def __init__(self, host: Host, port: int, name: str, transcript: Path) -> None:
        self.host = host
        self.port = port
        self.name = name
        self.transcript = transcript
        self._stream: Any = None
        self._buffer = b""
        self._tokens = itertools.count(1)

    # --- connection ---------------------------------------------------------------

    def connect(self, timeout: float) -> MicroGuest:
        """Open the serial port and wait until the guest answers a ping (it may still
        be booting). Answers to earlier pings are read past, so the next command's
        answer is its own."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                self._stream = self.host.open_tcp(self.port)
                break
            except OSError as exc:  # QEMU not listening yet
                last = exc
                time.sleep(0.2)
        if self._stream is None:
            raise GuestError(f"{self.name}: serial port {self.port} not open within {timeout:.0f} s ({last})")
        while time.monotonic() < deadline:
            token = f"c{next(self._tokens)}"
            self._send(f"ping {token}")
            try:
                answer = self._answer(min(PING_INTERVAL, max(0.01, deadline - time.monotonic())))
            except TimeoutError:
                continue
            if answer.get("pong"):
                return self._synchronised(deadline)
        raise GuestError(f"{self.name}: the micro guest did not answer a ping within {timeout:.0f} s "
                         f"(its console: {self.transcript.name})")

    def _synchronised(self, deadline: float) -> MicroGuest:
        """Send a last ping with a fresh token and read until its pong."""
        token = f"s{next(self._tokens)}"
        self._send(f"ping {token}")
        try:
            while self._answer(max(0.01, deadline - time.monotonic())).get("token") != token:
                pass
        except TimeoutError:
            raise GuestError(f"{self.name}: the micro guest answered a ping, then not the next") from None
        return self

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    # --- commands -----------------------------------------------------------------

    def agent(self, argv: list[str], *, timeout: float = 120) -> dict[str, Any]:
        """Run one agent command in the guest; its one JSON object (with 'error' on failure)."""
        if self._stream is None:
            raise GuestError(f"{self.name}: not connected")
        bad = [a for a in argv if not a or any(c.isspace() for c in a)]
        if bad:
            raise GuestError(f"{self.name}: the micro guest's line protocol cannot carry argument {bad[0]!r}")
        self._send(" ".join(argv))
        try:
            answer = self._answer(timeout)
        except TimeoutError:
            self.host.check_answering()
            raise GuestError(f"{self.name}: `{' '.join(argv)}` got no answer in {timeout:.0f} s") from None
        if "error" in answer:
            raise GuestError(f"{self.name}: {' '.join(argv[:2])}: {answer['error']}")
        return answer

    # --- the line protocol ----------------------------------------------------------

    def _send(self, line: str) -> None:
        self._log("to guest", line)
        try:
            self._stream.sendall(line.encode() + b"\n")
        except OSError as exc:
            self.host.check_answering()
            raise GuestError(f"{self.name}: serial port closed ({exc})") from None

    def _answer(self, timeout: float) -> dict[str, Any]:
        """The next JSON line from the guest (other lines are logged and skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._line(deadline)
            if not line.startswith("{"):
                continue
            try:
                answer: dict[str, Any] = json.loads(line)
                return answer
            except json.JSONDecodeError:
                raise GuestError(f"{self.name}: malformed answer {line!r}") from None

    def _line(self, deadline: float) -> str:
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self._stream.settimeout(left)
            try:
                chunk = self._stream.recv(4096)
            except TimeoutError:
                raise TimeoutError from None
            if not chunk:
                raise GuestError(f"{self.name}: the serial port closed (QEMU exited?)")
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE and b"\n" not in self._buffer:
                raise GuestError(f"{self.name}: a line of more than {MAX_LINE} bytes from the guest")
        raw, self._buffer = self._buffer.split(b"\n", 1)
        line = raw.decode(errors="replace").rstrip("\r")
        self._log("from guest", line)
        return line

    def _log(self, direction: str, line: str) -> None:
        self.transcript.parent.mkdir(parents=True, exist_ok=True)
        with self.transcript.open("a") as out:
            out.write(json.dumps({"time": time.time(), "direction": direction, "line": line}) + "\n")
