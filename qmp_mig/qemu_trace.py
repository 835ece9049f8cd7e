# SPDX-License-Identifier: GPL-2.0-or-later
"""QEMU's own account of each VFIO device's migration data, from its trace log.

QEMU's events say which state it asked for; they do not say what the device
announced through VFIO_MIG_GET_PRECOPY_INFO or how much the data fd then gave.
QEMU's vfio trace points do (QEMU is launched with ``TRACE_EVENTS`` enabled):

    vfio_migration_set_device_state  (<dev>) state PRE_COPY
    vfio_state_pending_estimate  (<dev>) precopy N postcopy N precopy initial size N precopy dirty size N
    vfio_state_pending_exact  (<dev>) precopy N postcopy N stopcopy size N precopy initial size N precopy dirty size N
    vfio_save_block  (<dev>) data_size N
    vfio_save_iterate  (<dev>) precopy initial size N precopy dirty size N

``<dev>`` is QEMU's name for the device (an mdev's UUID, a PCI device's address).
The uAPI fixes two facts these lines can be held to: while in PRE_COPY, the data
fd reaches a temporary end of stream (read() fails with ENOMSG) exactly when
initial_bytes and dirty_bytes are both zero; and initial data, once read, does
not come back. A device that breaks either misleads QEMU's convergence and
switchover-ack decisions without corrupting anything, so no other check sees it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TRACE_EVENTS = (
    "vfio_migration_set_device_state",
    "vfio_save_setup",
    "vfio_state_pending_estimate",
    "vfio_state_pending_exact",
    "vfio_save_block",
    "vfio_save_block_precopy_empty_hit",
    "vfio_save_iterate",
    "vfio_save_complete_precopy",
    "vfio_save_cleanup",
    "vfio_load_state_device_data",
)

_LINE = re.compile(r"^(?:\d+@\d+\.\d+:)?(?P<event>vfio_\w+)\s+\((?P<device>[^)]*)\)\s*(?P<rest>.*)$")
_NUMBER = re.compile(r"(?P<key>[a-z_ ]+?)\s+(?P<value>-?\d+)")
PRECOPY_STATES = ("PRE_COPY", "PRE_COPY_P2P")


@dataclass(frozen=True)
class TraceRecord:
    """One trace line: the event, QEMU's device name, and its named values."""

    event: str
    device: str
    values: dict[str, int]
    state: str = ""  # vfio_migration_set_device_state only

    def pending(self) -> int:
        """initial + dirty bytes, for the lines that carry them."""
        return self.values.get("precopy initial size", 0) + self.values.get("precopy dirty size", 0)


def parse(text: str) -> list[TraceRecord]:
    """The vfio trace lines of a QEMU log, in order; other lines are skipped."""
    records = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        rest = m["rest"]
        if m["event"] == "vfio_migration_set_device_state":
            records.append(TraceRecord(m["event"], m["device"], {}, rest.removeprefix("state ").strip()))
            continue
        values = {n["key"].strip(): int(n["value"]) for n in _NUMBER.finditer(rest)}
        records.append(TraceRecord(m["event"], m["device"], values))
    return records


@dataclass
class SaveSession:
    """One migration attempt of one device, as its source QEMU saw it."""

    device: str
    entry_announced: int | None = None  # initial + dirty when PRE_COPY began (setup's query)
    entry_first_read: int | None = None  # what the first pre-copy read then returned
    precopy_bytes: int = 0
    stop_copy_bytes: int = 0
    queries: int = 0  # fresh PRECOPY_INFO answers (exact pending queries)
    empty_reads: int = 0  # pre-copy reads that found the temporary end of stream
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        entry = "-" if self.entry_announced is None else f"{self.entry_announced} B"
        return (f"announced {entry} on entering PRE_COPY, read {self.precopy_bytes} B in "
                f"pre-copy ({self.queries} PRECOPY_INFO queries, {self.empty_reads} empty reads), "
                f"{self.stop_copy_bytes} B in stop-copy")


def save_sessions(records: list[TraceRecord]) -> list[SaveSession]:
    """Every save session (vfio_save_setup .. vfio_save_cleanup) of every device,
    with what PRECOPY_INFO announced set against what the reads returned."""
    sessions: list[SaveSession] = []
    open_sessions: dict[str, _Tracker] = {}
    states: dict[str, str] = {}  # QEMU sets PRE_COPY just before vfio_save_setup
    for r in records:
        if r.event == "vfio_migration_set_device_state":
            states[r.device] = r.state
        if r.event == "vfio_save_setup":
            tracker = _Tracker(SaveSession(r.device), states.get(r.device, ""))
            open_sessions[r.device] = tracker
            sessions.append(tracker.session)
        elif r.device in open_sessions:
            open_sessions[r.device].feed(r)
            if r.event == "vfio_save_cleanup":
                del open_sessions[r.device]
    return sessions


@dataclass
class _Tracker:
    session: SaveSession
    state: str = ""
    entry_pending: bool = False  # waiting for the first pre-copy read
    read_since_iterate: bool = False
    after_empty_read: bool = False  # the last pre-copy read hit the end of stream
    stuck_reported: bool = False

    def feed(self, r: TraceRecord) -> None:
        s = self.session
        if r.event == "vfio_migration_set_device_state":
            self.state = r.state
        elif r.event == "vfio_state_pending_estimate" and self.precopy and s.entry_announced is None:
            # Nothing read yet: QEMU's estimate is still setup's PRECOPY_INFO answer.
            s.entry_announced = r.pending()
            self.entry_pending = True
        elif r.event == "vfio_state_pending_exact" and self.precopy:
            s.queries += 1
            if self.entry_pending:  # a fresh answer before anything was read
                s.entry_announced = r.pending()
            initial = r.values.get("precopy initial size", 0)
            if self.after_empty_read and initial and not self.stuck_reported:
                self.stuck_reported = True  # once per session: it repeats every iteration
                s.problems.append(
                    f"PRECOPY_INFO announced {initial} initial bytes right after the data fd "
                    f"reported the end of pre-copy data (ENOMSG): initial_bytes must reach zero when "
                    f"the initial data has been read")
        elif r.event == "vfio_save_block" and r.values.get("data_size", 0) > 0:
            size = r.values["data_size"]
            self.read_since_iterate = True
            if not self.precopy:
                s.stop_copy_bytes += size
                return
            s.precopy_bytes += size
            self.after_empty_read = False
            if self.entry_pending:
                self.entry_pending = False
                s.entry_first_read = size
                if s.entry_announced == 0:
                    s.problems.append(
                        f"PRECOPY_INFO announced nothing pending when PRE_COPY began, then "
                        f"the first pre-copy read returned {size} bytes: pre-copy size under-reported "
                        f"(with nothing pending the read must fail with ENOMSG)")
        elif r.event == "vfio_save_iterate" and self.precopy:
            if not self.read_since_iterate:
                s.empty_reads += 1
                self.after_empty_read = True
            self.read_since_iterate = False

    @property
    def precopy(self) -> bool:
        return self.state in PRECOPY_STATES
