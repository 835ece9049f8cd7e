# SPDX-License-Identifier: GPL-2.0-or-later
"""Typed handles on the guest agents (guest_agents/*.c) over a guest's SSH."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .guest import AgentShell, GuestError

MEMCHECK = "/usr/local/bin/qmp-mig-memcheck"
MTTYIO = "/usr/local/bin/qmp-mig-mttyio"

# Bytes for an mtty FIFO (it keeps 15): distinct, so a lost or reordered byte shows.
MTTY_PATTERN = bytes([0x51, 0x4D, 0x50, 0x2D, 0x6D, 0x69, 0x67, 0xA5, 0x5A, 0x00, 0xFF, 0x10])


@dataclass
class MemoryAgent:
    """Fills guest RAM with a known pattern and keeps dirtying part of it."""

    guest: AgentShell
    timeout: float = 600.0  # filling or verifying is slow in a nested, emulated guest

    def _run(self, *args: str) -> dict[str, Any]:
        return self.guest.agent(
            [MEMCHECK, *args, "--timeout", str(int(self.timeout))], timeout=self.timeout + 30
        )

    def start(self, size_mb: int, dirty_mb: int, rate_mb: int = 0) -> dict[str, Any]:
        """Fill ``size_mb`` and keep rewriting its first ``dirty_mb``, at ``rate_mb``
        MB/s (0: flat out)."""
        return self._run("start", "--size-mb", str(size_mb), "--dirty-mb", str(dirty_mb),
                         "--rate-mb", str(rate_mb))

    def status(self) -> dict[str, Any]:
        return self.guest.agent([MEMCHECK, "status"])

    def gpa(self, page: int) -> int:
        """Guest-physical address of one of the agent's pages."""
        return int(self.guest.agent([MEMCHECK, "gpa", "--page", str(page)])["gpa"], 16)

    def verify(self) -> dict[str, Any]:
        """Stop writing and check every page; the report lists each bad page."""
        return self._run("verify")


@dataclass(frozen=True)
class MttyPort:
    bdf: str
    index: int


@dataclass
class MttyAgent:
    """Writes bytes into an mtty UART's FIFO below the tty layer and reads them back."""

    guest: AgentShell

    def ports(self) -> list[MttyPort]:
        devices = self.guest.agent([MTTYIO, "list"])["devices"]
        return [MttyPort(d["bdf"], p["index"]) for d in devices for p in d["ports"]]

    def write(self, port: MttyPort, data: bytes) -> int:
        answer = self.guest.agent(
            [MTTYIO, "write", "--bdf", port.bdf, "--port", str(port.index), "--clear", "--hex", data.hex()]
        )
        written = int(answer["written"])
        if written != len(data):
            raise GuestError(f"{self.guest.name}: mtty {port} took {written} of {len(data)} bytes")
        return written

    def read(self, port: MttyPort, limit: int = 64) -> bytes:
        answer = self.guest.agent(
            [MTTYIO, "read", "--bdf", port.bdf, "--port", str(port.index), "--max", str(limit)]
        )
        return bytes.fromhex(answer["hex"])


QMIGDEV = "/usr/local/bin/qmp-mig-qmigdev"


@dataclass
class QmigdevAgent:
    """Programs qmigdev functions from inside the guest (guest_agents/qmigdev.c):
    a DMA ring in guest RAM, device memory, and P2P between two functions."""

    guest: AgentShell

    def _run(self, command: str, *args: str) -> dict[str, Any]:
        return self.guest.agent([QMIGDEV, command, *args])

    def functions(self) -> list[str]:
        """PCI addresses of the qmigdev functions, in bus order."""
        return sorted(d["bdf"] for d in self._run("list")["devices"])

    def status(self, bdf: str) -> dict[str, Any]:
        return self._run("status", "--bdf", bdf)

    def dma_start(self, bdf: str, interval_us: int = 10000) -> dict[str, Any]:
        return self._run("dma-start", "--bdf", bdf, "--interval-us", str(interval_us))

    def dma_verify(self, bdf: str, stop: bool = True) -> dict[str, Any]:
        return self._run("dma-verify", "--bdf", bdf, *(["--stop"] if stop else []))

    def mem_fill(self, bdf: str, seed: int) -> dict[str, Any]:
        return self._run("mem-fill", "--bdf", bdf, "--seed", str(seed))

    def mem_check(self, bdf: str, seed: int) -> dict[str, Any]:
        return self._run("mem-check", "--bdf", bdf, "--seed", str(seed))

    def p2p_start(self, sender: str, receiver: str, interval_us: int = 20000) -> dict[str, Any]:
        return self._run("p2p-start", "--bdf", sender, "--peer", receiver, "--interval-us", str(interval_us))

    def p2p_verify(self, sender: str, receiver: str, stop: bool = True) -> dict[str, Any]:
        return self._run("p2p-verify", "--bdf", sender, "--peer", receiver, *(["--stop"] if stop else []))


EDU = "/usr/local/bin/qmp-mig-edu"


@dataclass
class EduAgent:
    """Programs QEMU's edu functions (assigned through our qmigpci driver) from inside
    the guest (guest_agents/edu.c): sequence-numbered records copied RAM -> the device's
    DMA buffer -> RAM by the device's DMA engine, and registers set before migration."""

    guest: AgentShell

    def _run(self, command: str, *args: str) -> dict[str, Any]:
        return self.guest.agent([EDU, command, *args])

    def functions(self) -> list[str]:
        """PCI addresses of the edu functions the guest sees, in bus order."""
        return sorted(d["bdf"] for d in self._run("list")["devices"])

    def start(self, bdf: str, seed: int) -> dict[str, Any]:
        return self._run("start", "--bdf", bdf, "--seed", str(seed))

    def status(self, bdf: str) -> dict[str, Any]:
        return self._run("status", "--bdf", bdf)

    def stop(self, bdf: str) -> dict[str, Any]:
        return self._run("stop", "--bdf", bdf)

    def verify(self, bdf: str, stop: bool = True) -> dict[str, Any]:
        return self._run("verify", "--bdf", bdf, *(["--stop"] if stop else []))
