# SPDX-License-Identifier: GPL-2.0-or-later
"""A synchronous QMP session on top of qemu.qmp, with a complete event record.

qemu.qmp is asyncio-based. All sessions share one event loop running in a
background thread, so events are pulled off the wire as they arrive, whatever
the test thread is doing, and every command, reply and event goes into a
JSON-lines transcript that stays with the test's artifacts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from qemu.qmp import EventListener, ExecuteError, QMPClient, Runstate

# Every message is in our own transcript (<vm>.qmp.jsonl). The library's DEBUG copy of
# each, pretty-printed into the test's log, cost more than the message itself: a
# migration that never converges sends tens of thousands of MIGRATION_PASS events.
logging.getLogger("qemu.qmp").setLevel(logging.INFO)

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _reactor() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, daemon=True, name="qmp-reactor").start()
        return _loop


def _call(coro: Coroutine[Any, Any, T], timeout: float) -> T:
    future = asyncio.run_coroutine_threadsafe(coro, _reactor())
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise


class QmpError(RuntimeError):
    """A QMP command failed; the message carries QEMU's own error text."""

    def __init__(self, session: str, command: str, desc: str) -> None:
        super().__init__(f"{session}: {command} failed: {desc}")
        self.command = command
        self.desc = desc


@dataclass(frozen=True)
class Event:
    """A QMP event; ``time`` is QEMU's own timestamp (host wall clock, seconds)."""

    name: str
    data: dict[str, Any]
    time: float
    source: str = ""


@dataclass
class QmpSession:
    """One QEMU's monitor. Construct with :meth:`connect`."""

    name: str
    transcript: Path
    _client: QMPClient = field(init=False)
    _events: list[Event] = field(default_factory=list, init=False)
    _changed: threading.Condition = field(default_factory=threading.Condition, init=False)
    _pump_task: Future[None] | None = field(default=None, init=False)
    _gone: bool = field(default=False, init=False)  # the monitor connection closed

    @classmethod
    def connect(cls, name: str, stream: socket.socket, transcript: Path, timeout: float = 30) -> QmpSession:
        session = cls(name, transcript)
        session._client = QMPClient(name)
        listener = EventListener()
        session._client.register_listener(listener)
        _call(session._client.connect(stream), timeout)
        session._pump_task = asyncio.run_coroutine_threadsafe(session._pump(listener), _reactor())
        asyncio.run_coroutine_threadsafe(session._watch(listener), _reactor())
        session._log("greeting", session._client.greeting or {})
        return session

    async def _pump(self, listener: EventListener) -> None:
        async for message in listener:
            raw = cast(dict[str, Any], {key: message[key] for key in message})
            stamp = raw.get("timestamp", {})
            event = Event(
                name=raw["event"],
                data=dict(raw.get("data", {})),
                time=stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6,
                source=self.name,
            )
            self._log("event", raw)
            with self._changed:
                self._events.append(event)
                self._changed.notify_all()

    async def _watch(self, listener: EventListener) -> None:
        """Wake waiters when QEMU's end of the monitor closes (QEMU exited or crashed),
        once the events it sent before are all recorded."""
        while self._client.runstate == Runstate.RUNNING:
            await self._client.runstate_changed()
        while not listener.empty():
            await asyncio.sleep(0.01)
        self._log("closed", {"runstate": str(self._client.runstate)})
        with self._changed:
            self._gone = True
            self._changed.notify_all()

    def _log(self, kind: str, message: Any) -> None:
        record = {"t": time.time(), "vm": self.name, "kind": kind, "message": message}
        with self.transcript.open("a") as out:
            out.write(json.dumps(record, default=str) + "\n")

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float = 60) -> Any:
        self._log("command", {"execute": command, "arguments": arguments or {}})
        try:
            reply = _call(self._client.execute(command, arguments), timeout)
        except ExecuteError as exc:
            self._log("error", {"execute": command, "error": exc.error_class, "desc": str(exc)})
            raise QmpError(self.name, command, str(exc)) from None
        except TimeoutError:
            self._log("timeout", {"execute": command, "seconds": timeout})
            raise TimeoutError(f"{self.name}: {command} got no reply in {timeout:.0f} s") from None
        self._log("reply", {"execute": command, "return": reply})
        return reply

    @property
    def gone(self) -> bool:
        """QEMU's end of the monitor closed: it exited, crashed or is dying."""
        with self._changed:
            return self._gone

    @property
    def events(self) -> list[Event]:
        with self._changed:
            return list(self._events)

    def wait_event(
        self,
        name: str | tuple[str, ...],
        *,
        timeout: float,
        match: Callable[[Event], bool] = lambda _: True,
        since: int = 0,
    ) -> Event:
        """First event called ``name`` (or any of the names) at index >= ``since``
        that ``match`` accepts."""
        names = (name,) if isinstance(name, str) else name
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self._events[since:]:
                    if event.name in names and match(event):
                        return event
                if self._gone:
                    raise QmpError(self.name, f"waiting for {name}",
                                   "QEMU closed its monitor (exited or crashed) before the event came")
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = ", ".join(e.name for e in self._events[since:][-8:]) or "none"
                    raise TimeoutError(
                        f"{self.name}: no {name} event within {timeout:.0f} s (last events: {seen})"
                    )
                self._changed.wait(left)

    def close(self) -> None:
        # The peer may already be gone; there is nothing to save then.
        with contextlib.suppress(Exception):
            _call(self._client.disconnect(), 10)
        if self._pump_task is not None:
            self._pump_task.cancel()
