# SPDX-License-Identifier: GPL-2.0-or-later
"""QmpSession against a minimal QMP peer on a socketpair: a monitor that closes
while we wait for an event fails the wait at once instead of at its timeout."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from qmp_mig.qmp import QmpError, QmpSession


def fake_qemu(end: socket.socket, then: list[dict[str, object]]) -> None:
    """Greet, accept qmp_capabilities, send ``then`` (events), close."""
    greeting = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 10}, "package": ""},
                        "capabilities": []}}
    end.sendall(json.dumps(greeting).encode() + b"\n")
    received = b""
    while True:  # the client sends one JSON object, without a newline
        received += end.recv(4096)
        try:
            request = json.loads(received)
            break
        except json.JSONDecodeError:
            continue
    assert request["execute"] == "qmp_capabilities"
    reply: dict[str, object] = {"return": {}}
    if "id" in request:
        reply["id"] = request["id"]
    end.sendall(json.dumps(reply).encode() + b"\n")
    for message in then:
        end.sendall(json.dumps(message).encode() + b"\n")
    time.sleep(0.2)
    end.close()


def test_wait_fails_fast_when_qemu_goes_away(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    event = {"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 0}}
    peer = threading.Thread(target=fake_qemu, args=(theirs, [event]), daemon=True)
    peer.start()
    session = QmpSession.connect("fake", ours, tmp_path / "fake.qmp.jsonl", timeout=10)
    try:
        assert session.wait_event("STOP", timeout=10).name == "STOP"  # sent before the close: kept
        started = time.monotonic()
        with pytest.raises(QmpError, match="QEMU closed its monitor"):
            session.wait_event("RESUME", timeout=60)
        assert time.monotonic() - started < 10
        assert session.gone  # what a test asks to tell a dying QEMU from a live one
    finally:
        session.close()
