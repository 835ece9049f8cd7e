# SPDX-License-Identifier: GPL-2.0-or-later
"""The micro guest's line protocol against a fake guest on a local TCP port,
and the QEMU command line of a micro-guest VM."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qmp_mig.agents import EduAgent, MemoryAgent
from qmp_mig.guest import GuestError
from qmp_mig.hosts import LocalHost
from qmp_mig.images import REPO
from qmp_mig.micro_guest import MicroGuest
from qmp_mig.qemu import QemuInstance, VmSpec

Answer = Callable[[str], "str | None"]


def serve(answer: Answer, banner: bytes = b"") -> tuple[int, threading.Thread]:
    """A one-connection fake guest: each line in gets ``answer(line)`` back (None: silence)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        server.close()
        with conn:
            conn.sendall(banner)
            buffer = b""
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    reply = answer(line.decode())
                    if reply is not None:
                        conn.sendall(reply.encode() + b"\n")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return server.getsockname()[1], thread


def pong(line: str) -> str | None:
    words = line.split()
    if words[0] == "ping":
        return json.dumps({"pong": True, "token": words[1] if len(words) > 1 else None})
    if words[:2] == ["/usr/local/bin/qmp-mig-memcheck", "status"]:
        return json.dumps({"pid": 1, "alive": True, "rewrites": 7, "phase": "running"})
    return json.dumps({"error": f"unknown command {words[0]}"})


@pytest.fixture
def micro(tmp_path: Path) -> Iterator[Callable[..., MicroGuest]]:
    made: list[MicroGuest] = []

    def make(answer: Answer = pong, banner: bytes = b"", timeout: float = 5) -> MicroGuest:
        port, _ = serve(answer, banner)
        guest = MicroGuest(LocalHost(), port, "micro guest in test", tmp_path / "test.agent.jsonl")
        made.append(guest)
        return guest.connect(timeout=timeout)

    yield make
    for guest in made:
        guest.close()


def test_agent_answers_come_back_as_json(micro: Callable[..., MicroGuest], tmp_path: Path) -> None:
    guest = micro(banner=b"qmp-mig-micro: ready\r\n")
    assert MemoryAgent(guest).status() == {"pid": 1, "alive": True, "rewrites": 7, "phase": "running"}
    transcript = [json.loads(line) for line in (tmp_path / "test.agent.jsonl").read_text().splitlines()]
    assert {"direction": "from guest", "line": "qmp-mig-micro: ready"} in [
        {k: t[k] for k in ("direction", "line")} for t in transcript]


def test_pongs_to_unanswered_pings_are_read_past(micro: Callable[..., MicroGuest]) -> None:
    """A guest that boots late answers every ping it got at once: the next command
    must get its own answer, not a stale pong."""
    held: list[str] = []
    pings = 0

    def late(line: str) -> str | None:
        nonlocal pings
        pings += line.startswith("ping")
        if pings <= 2:
            held.append(line)  # still "booting": answered together with the third
            return None
        if held:
            stale = [pong(h) for h in held]
            held.clear()
            return "\n".join(s for s in [*stale, pong(line)] if s)
        return pong(line)

    guest = micro(late)
    assert MemoryAgent(guest).status()["rewrites"] == 7


def test_an_error_answer_is_a_guest_error(micro: Callable[..., MicroGuest]) -> None:
    guest = micro()
    with pytest.raises(GuestError, match="qmp-mig-edu list: unknown command"):
        guest.agent(["qmp-mig-edu", "list"])


def test_an_argument_the_line_cannot_carry_is_refused(micro: Callable[..., MicroGuest]) -> None:
    guest = micro()
    with pytest.raises(GuestError, match="cannot carry argument 'a b'"):
        guest.agent(["qmp-mig-edu", "a b"])


def test_a_silent_guest_is_named_after_the_timeout(micro: Callable[..., MicroGuest], tmp_path: Path) -> None:
    with pytest.raises(GuestError, match="did not answer a ping within 1 s"):
        micro(lambda line: None, timeout=1)


def test_a_micro_vm_has_its_serial_port_as_a_server_and_no_network(tmp_path: Path) -> None:
    spec = VmSpec(kernel="/images/qmp-mig-micro.elf", initrd="", append="", guest="micro")
    qemu = QemuInstance(LocalHost(), spec, "source", devices=[], workdir="/w", artifacts=tmp_path)
    qemu.agent_port = 4444
    argv = qemu.command_line()
    assert argv[argv.index("-kernel") + 1] == "/images/qmp-mig-micro.elf"
    assert "socket,id=agent,host=127.0.0.1,port=4444,server=on,wait=off,nodelay=on,logfile=/w/source.console.log" in argv
    assert argv[argv.index("-serial") + 1] == "chardev:agent"
    assert "-initrd" not in argv and "-netdev" not in argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def agents_built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Linux agents and the micro guest, built as the guest image builds them."""
    out = tmp_path_factory.mktemp("agents")
    subprocess.run(["make", "-s", "-C", str(REPO / "guest_agents"), f"O={out}"], check=True, timeout=300)
    return out


def test_the_micro_guest_judges_as_the_linux_agents_do(agents_built: Path, tmp_path: Path) -> None:
    """The real micro guest, booted by the host's QEMU (TCG) with QEMU's edu device: its
    agents' selftests (CRC, record classifiers, patterns) answer exactly as the Linux
    agents' do, a memory region it fills and rewrites verifies clean, and the edu's DMA
    engine copies the writer's records through without a loss."""
    def linux(agent: str) -> dict[str, object]:
        return dict(json.loads(subprocess.run([str(agents_built / agent), "selftest"], check=True,
                                              capture_output=True, text=True, timeout=30).stdout))

    port = free_port()
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-machine", "q35,accel=tcg", "-m", "128",
         "-kernel", str(agents_built / "qmp-mig-micro.elf"), "-device", "edu,dma_mask=0xffffffffff",
         "-chardev", f"socket,id=agent,host=127.0.0.1,port={port},server=on,wait=off,nodelay=on",
         "-serial", "chardev:agent"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    guest = MicroGuest(LocalHost(), port, "micro guest", tmp_path / "micro.agent.jsonl")
    try:
        guest.connect(timeout=60)
        for agent in ("qmp-mig-qmigdev", "qmp-mig-edu"):
            assert guest.agent([f"/usr/local/bin/{agent}", "selftest"]) == linux(agent)
        assert guest.agent(["/usr/local/bin/qmp-mig-qmigdev", "list"]) == {"devices": []}
        edu = EduAgent(guest)
        [bdf] = edu.functions()
        edu.start(bdf, seed=3)
        deadline = time.monotonic() + 30  # a record every ~200 ms (two 100 ms transfers)
        while int(edu.status(bdf)["done"]) < 3:
            assert time.monotonic() < deadline, f"edu {bdf}: fewer than 3 records copied in 30 s"
        verdict = edu.verify(bdf)
        assert verdict["ok_all"] and verdict["lost"] == 0 and verdict["done"] >= 3, verdict
        memory = MemoryAgent(guest)
        started = memory.start(16, 4, 0)
        assert started["pages"] == 16 * 256
        report = memory.verify()
        assert report["bad_pages"] == 0 and report["pages"] == 16 * 256, report
    finally:
        guest.close()
        qemu.kill()
        qemu.wait(timeout=30)
