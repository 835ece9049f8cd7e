# SPDX-License-Identifier: GPL-2.0-or-later
"""Model of the VFIO migration uAPI v2 state machine and of QEMU's walk of it.

Two layers, both data-driven:

* the kernel's FSM: states, feature flags, and the next-step table that
  ``vfio_mig_get_next_state()`` applies one arc at a time;
* QEMU's policy: which states QEMU *requests* (one ``VFIO_MIGRATION`` event per
  request) at each point of a migration, for a device with given flags.

Expected event sequences are derived from these, never listed per test, so a
new state or flag changes one table here rather than every scenario.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Sequence


class State(enum.IntEnum):
    """``enum vfio_device_mig_state`` (values are the uAPI's)."""

    ERROR = 0
    STOP = 1
    RUNNING = 2
    STOP_COPY = 3
    RESUMING = 4
    RUNNING_P2P = 5
    PRE_COPY = 6
    PRE_COPY_P2P = 7

    @property
    def qapi_name(self) -> str:
        """The spelling QEMU uses in the ``VFIO_MIGRATION`` event."""
        return self.name.lower().replace("_", "-")

    @classmethod
    def from_qapi(cls, name: str) -> State:
        try:
            return cls[name.upper().replace("-", "_")]
        except KeyError:
            raise ValueError(f"unknown VFIO device-state {name!r}") from None


class Flag(enum.IntFlag):
    """``VFIO_MIGRATION_*`` feature flags."""

    STOP_COPY = 1 << 0
    P2P = 1 << 1
    PRE_COPY = 1 << 2

    @classmethod
    def parse(cls, text: str) -> Flag:
        """Parse ``"STOP_COPY|P2P"`` (case-insensitive, ``|`` or ``,`` separated)."""
        flags = cls(0)
        for part in text.replace(",", "|").split("|"):
            part = part.strip().upper()
            if not part:
                continue
            if part not in cls.__members__:
                raise ValueError(
                    f"unknown migration flag {part!r}; expected some of "
                    f"{', '.join(cls.__members__)}"
                )
            flags |= cls[part]
        return flags

    def describe(self) -> str:
        return "|".join(f.name for f in Flag if f in self and f.name) or "none"


S = State


def as_state(value: int) -> State | int:
    """A state value as the kernel or a driver gave it: the State, or the bare number
    when the uAPI defines none (a driver's bug must stay visible, not raise)."""
    try:
        return State(value)
    except ValueError:
        return value


def state_text(value: State | int | None) -> str:
    """A state for a person: its name, ``<n>`` for an undefined value."""
    if value is None:
        return "nothing"
    return value.name if isinstance(value, State) else f"<{value}>"

# Feature flags a state needs to exist on a device. ERROR is never a target.
_REQUIRED_FLAGS: dict[State, Flag] = {
    S.STOP: Flag.STOP_COPY,
    S.RUNNING: Flag.STOP_COPY,
    S.STOP_COPY: Flag.STOP_COPY,
    S.RESUMING: Flag.STOP_COPY,
    S.RUNNING_P2P: Flag.STOP_COPY | Flag.P2P,
    S.PRE_COPY: Flag.STOP_COPY | Flag.PRE_COPY,
    S.PRE_COPY_P2P: Flag.STOP_COPY | Flag.P2P | Flag.PRE_COPY,
}

# The kernel's table: NEXT[cur][requested] is the next arc the driver executes.
# A missing cell is an invalid request (the kernel answers ERROR / EINVAL).
NEXT: dict[State, dict[State, State]] = {
    S.STOP: {
        S.STOP: S.STOP, S.RUNNING: S.RUNNING_P2P, S.STOP_COPY: S.STOP_COPY,
        S.RESUMING: S.RESUMING, S.RUNNING_P2P: S.RUNNING_P2P,
        S.PRE_COPY: S.RUNNING_P2P, S.PRE_COPY_P2P: S.RUNNING_P2P,
    },
    S.RUNNING: {
        S.STOP: S.RUNNING_P2P, S.RUNNING: S.RUNNING, S.STOP_COPY: S.RUNNING_P2P,
        S.RESUMING: S.RUNNING_P2P, S.RUNNING_P2P: S.RUNNING_P2P,
        S.PRE_COPY: S.PRE_COPY, S.PRE_COPY_P2P: S.RUNNING_P2P,
    },
    S.PRE_COPY: {
        S.STOP: S.RUNNING, S.RUNNING: S.RUNNING, S.STOP_COPY: S.PRE_COPY_P2P,
        S.RESUMING: S.RUNNING, S.RUNNING_P2P: S.RUNNING,
        S.PRE_COPY: S.PRE_COPY, S.PRE_COPY_P2P: S.PRE_COPY_P2P,
    },
    S.PRE_COPY_P2P: {
        S.STOP: S.RUNNING_P2P, S.RUNNING: S.RUNNING_P2P, S.STOP_COPY: S.STOP_COPY,
        S.RESUMING: S.RUNNING_P2P, S.RUNNING_P2P: S.RUNNING_P2P,
        S.PRE_COPY: S.PRE_COPY, S.PRE_COPY_P2P: S.PRE_COPY_P2P,
    },
    S.STOP_COPY: {
        S.STOP: S.STOP, S.RUNNING: S.STOP, S.STOP_COPY: S.STOP_COPY,
        S.RESUMING: S.STOP, S.RUNNING_P2P: S.STOP,
    },
    S.RESUMING: {
        S.STOP: S.STOP, S.RUNNING: S.STOP, S.STOP_COPY: S.STOP,
        S.RESUMING: S.RESUMING, S.RUNNING_P2P: S.STOP,
        S.PRE_COPY: S.STOP, S.PRE_COPY_P2P: S.STOP,
    },
    S.RUNNING_P2P: {
        S.STOP: S.STOP, S.RUNNING: S.RUNNING, S.STOP_COPY: S.STOP,
        S.RESUMING: S.STOP, S.RUNNING_P2P: S.RUNNING_P2P,
        S.PRE_COPY: S.RUNNING, S.PRE_COPY_P2P: S.PRE_COPY_P2P,
    },
    S.ERROR: {},
}


class InvalidTransition(ValueError):
    """A request the kernel would refuse with EINVAL."""


def supports(flags: Flag, state: State) -> bool:
    required = _REQUIRED_FLAGS.get(state)
    return required is not None and (flags & required) == required


def supported_states(flags: Flag) -> list[State]:
    return [s for s in State if supports(flags, s)]


def next_step(cur: State, new: State, flags: Flag) -> State:
    """One arc of ``vfio_mig_get_next_state()``: skip states the device lacks."""
    if not supports(flags, cur) or not supports(flags, new):
        raise InvalidTransition(
            f"{cur.name} -> {new.name} not valid for a device with {flags.describe()}"
        )
    step = NEXT[cur].get(new)
    while step is not None and not supports(flags, step):
        step = NEXT[step].get(new)
    if step is None:
        raise InvalidTransition(f"{cur.name} -> {new.name} is not an arc of the FSM")
    return step


def kernel_walk(cur: State, new: State, flags: Flag) -> list[tuple[State, State]]:
    """The arcs the kernel executes for one request, in order ([] if cur == new)."""
    arcs: list[tuple[State, State]] = []
    while cur != new:
        step = next_step(cur, new, flags)
        arcs.append((cur, step))
        cur = step
    return arcs


def arcs(flags: Flag) -> set[tuple[State, State]]:
    """The single-step arcs a driver with ``flags`` implements, as the uAPI
    header lists them per feature (independent of the next-step table)."""
    found = {(S.STOP, S.STOP_COPY), (S.STOP_COPY, S.STOP), (S.STOP, S.RESUMING), (S.RESUMING, S.STOP)}
    if Flag.P2P in flags:
        found |= {(S.RUNNING, S.RUNNING_P2P), (S.RUNNING_P2P, S.RUNNING),
                  (S.RUNNING_P2P, S.STOP), (S.STOP, S.RUNNING_P2P)}
    else:
        found |= {(S.RUNNING, S.STOP), (S.STOP, S.RUNNING)}
    if Flag.PRE_COPY in flags:
        found |= {(S.RUNNING, S.PRE_COPY), (S.PRE_COPY, S.RUNNING)}
        if Flag.P2P in flags:
            found |= {(S.PRE_COPY, S.PRE_COPY_P2P), (S.PRE_COPY_P2P, S.PRE_COPY),
                      (S.PRE_COPY_P2P, S.STOP_COPY), (S.RUNNING_P2P, S.PRE_COPY_P2P),
                      (S.PRE_COPY_P2P, S.RUNNING_P2P)}
        else:
            found.add((S.PRE_COPY, S.STOP_COPY))
    return found


def shortest_path(cur: State, new: State, flags: Flag) -> list[State]:
    """Breadth-first shortest path over :func:`arcs` (independent of the table walk)."""
    graph = arcs(flags)
    previous: dict[State, State] = {}
    queue = deque([cur])
    seen = {cur}
    while queue:
        here = queue.popleft()
        if here == new:
            path = [here]
            while path[-1] != cur:
                path.append(previous[path[-1]])
            return path[::-1]
        for a, b in sorted(graph):
            if a == here and b not in seen:
                seen.add(b)
                previous[b] = here
                queue.append(b)
    raise InvalidTransition(f"no path {cur.name} -> {new.name} for {flags.describe()}")


# --- QEMU's policy: the states QEMU requests, hence its VFIO_MIGRATION events.


def _requests(start: State, requests: Iterable[State]) -> list[State]:
    """Drop requests for the state the device is already in: QEMU emits no event then."""
    out: list[State] = []
    cur = start
    for state in requests:
        if state != cur:
            out.append(state)
            cur = state
    return out


def vm_start_events(flags: Flag, current: State = S.RUNNING) -> list[State]:
    """Requests when a VM starts running: via RUNNING_P2P for P2P devices."""
    wanted = [S.RUNNING_P2P] if Flag.P2P in flags else []
    return _requests(current, [*wanted, S.RUNNING])


def source_events(flags: Flag, outcome: str = "completed") -> list[State]:
    """Source-side requests for one migration.

    ``outcome`` is ``"completed"``, ``"cancelled"`` (cancel or failure while
    the guest still runs, i.e. during the iterative RAM phase) or
    ``"cancelled-stopped"`` (cancel or failure after the source VM stopped for
    the switchover: the devices reached the stop-copy side, then the VM starts
    again).
    """
    precopy = S.PRE_COPY if Flag.PRE_COPY in flags else S.RUNNING
    if outcome == "cancelled":
        return _requests(S.RUNNING, [precopy, S.RUNNING])
    if outcome == "cancelled-stopped":
        stopped = source_events(flags)[:-1]  # up to STOP_COPY, without the cleanup STOP
        return [*stopped, *vm_start_events(flags, current=stopped[-1])]
    if outcome != "completed":
        raise ValueError(f"unknown outcome {outcome!r}; expected completed, cancelled or cancelled-stopped")
    steps = [precopy]
    if Flag.P2P in flags:  # quiesce peer-to-peer before anything stops
        steps.append(S.PRE_COPY_P2P if precopy == S.PRE_COPY else S.RUNNING_P2P)
    # VM stop: a pre-copying device goes straight to STOP_COPY, others to STOP
    # and then to STOP_COPY when the device state is saved.
    steps += [S.STOP_COPY] if precopy == S.PRE_COPY else [S.STOP, S.STOP_COPY]
    steps.append(S.STOP)  # cleanup after completion
    return _requests(S.RUNNING, steps)


def destination_events(flags: Flag, outcome: str = "completed") -> list[State]:
    """Destination-side requests: RESUMING at load, then the VM start walk."""
    if outcome == "cancelled":
        return [S.RESUMING]
    if outcome != "completed":
        raise ValueError(f"unknown outcome {outcome!r}; expected completed or cancelled")
    return [S.RESUMING, *vm_start_events(flags, current=S.RESUMING)]


def first_difference(
    expected: Sequence[State], observed: Sequence[State]
) -> str | None:
    """One line naming the first step where two walks differ, or None if equal."""
    for index, (want, got) in enumerate(zip(expected, observed)):
        if want != got:
            return (
                f"step {index + 1}: expected {want.qapi_name}, observed {got.qapi_name}"
            )
    if len(expected) > len(observed):
        missing = ", ".join(s.qapi_name for s in expected[len(observed):])
        return f"step {len(observed) + 1}: expected {missing}, observed nothing"
    if len(observed) > len(expected):
        extra = ", ".join(s.qapi_name for s in observed[len(expected):])
        return f"step {len(expected) + 1}: expected nothing, observed {extra}"
    return None


def format_walk(states: Sequence[State]) -> str:
    return " -> ".join(s.qapi_name for s in states) or "(none)"


# --- the data fd: which arcs open a data transfer session.

# "These arcs begin the process of saving the device state and will return a new
# data_fd" (and STOP -> RESUMING for restoring). The saving group (PRE_COPY,
# PRE_COPY_P2P, STOP_COPY) shares one session: moving inside it opens none.
DATA_FD_ARCS = frozenset({
    (S.RUNNING, S.PRE_COPY), (S.RUNNING_P2P, S.PRE_COPY_P2P),
    (S.STOP, S.STOP_COPY), (S.STOP, S.RESUMING),
})


def returns_data_fd(cur: State, new: State, flags: Flag) -> bool:
    """Whether a request from ``cur`` for ``new`` answers with a new data_fd: only
    when its last arc starts a session (the kernel never passes through one)."""
    walk = kernel_walk(cur, new, flags)
    return bool(walk) and walk[-1] in DATA_FD_ARCS
