# SPDX-License-Identifier: GPL-2.0-or-later
"""The FSM model: the kernel's table walk against an independent search, and
QEMU's expected walks against what was observed in the lab (lab.md)."""

import itertools

import pytest

from qmp_mig import fsm
from qmp_mig.fsm import Flag, State

ALL_FLAGS = [Flag.STOP_COPY | extra for extra in (Flag(0), Flag.P2P, Flag.PRE_COPY, Flag.P2P | Flag.PRE_COPY)]


def names(text: str) -> list[State]:
    return [State.from_qapi(n) for n in text.split()]


@pytest.mark.parametrize("flags", ALL_FLAGS, ids=lambda f: f.describe())
def test_table_walk_is_a_shortest_path_for_every_request(flags: Flag) -> None:
    states = fsm.supported_states(flags)
    for cur, new in itertools.product(states, states):
        if cur == State.ERROR or new == State.ERROR:
            continue
        try:
            walk = fsm.kernel_walk(cur, new, flags)
        except fsm.InvalidTransition:
            # The only requests the uAPI refuses outright: leaving STOP_COPY for pre-copy.
            assert cur == State.STOP_COPY and new in {State.PRE_COPY, State.PRE_COPY_P2P}
            continue
        path = [cur] + [b for _, b in walk]
        assert len(path) == len(fsm.shortest_path(cur, new, flags)), (cur, new, path)
        assert all(arc in fsm.arcs(flags) for arc in walk)


def test_unsupported_states_are_skipped() -> None:
    # Without P2P, RUNNING -> STOP is one arc instead of two via RUNNING_P2P.
    assert fsm.kernel_walk(State.RUNNING, State.STOP, Flag.STOP_COPY) == [(State.RUNNING, State.STOP)]
    full = Flag.STOP_COPY | Flag.P2P
    assert fsm.kernel_walk(State.RUNNING, State.STOP, full) == [
        (State.RUNNING, State.RUNNING_P2P), (State.RUNNING_P2P, State.STOP)]


def test_requests_the_kernel_refuses() -> None:
    with pytest.raises(fsm.InvalidTransition):
        fsm.next_step(State.STOP_COPY, State.PRE_COPY, Flag.STOP_COPY | Flag.PRE_COPY)
    with pytest.raises(fsm.InvalidTransition):
        fsm.next_step(State.RUNNING, State.RUNNING_P2P, Flag.STOP_COPY)  # no P2P flag
    with pytest.raises(fsm.InvalidTransition):
        fsm.next_step(State.ERROR, State.RUNNING, Flag.STOP_COPY)


def test_mtty_destination_walk_seen_by_kprobe() -> None:
    # lab.md: the destination's single "resuming" request is 2->5->1->4 in the kernel.
    flags = Flag.STOP_COPY | Flag.P2P | Flag.PRE_COPY
    walk = fsm.kernel_walk(State.RUNNING, State.RESUMING, flags)
    assert [a for a, _ in walk] + [walk[-1][1]] == [State(2), State(5), State(1), State(4)]


@pytest.mark.parametrize(
    ("flags", "source", "destination"),
    [
        (Flag.STOP_COPY | Flag.P2P | Flag.PRE_COPY, "pre-copy pre-copy-p2p stop-copy stop",
         "resuming running-p2p running"),
        (Flag.STOP_COPY | Flag.P2P, "running-p2p stop stop-copy stop", "resuming running-p2p running"),
        (Flag.STOP_COPY | Flag.PRE_COPY, "pre-copy stop-copy stop", "resuming running"),
        (Flag.STOP_COPY, "stop stop-copy stop", "resuming running"),
    ],
)
def test_qemu_walks(flags: Flag, source: str, destination: str) -> None:
    assert fsm.source_events(flags) == names(source)
    assert fsm.destination_events(flags) == names(destination)


def test_cancel_and_vm_start_walks() -> None:
    flags = Flag.STOP_COPY | Flag.P2P | Flag.PRE_COPY
    assert fsm.source_events(flags, "cancelled") == names("pre-copy running")
    assert fsm.destination_events(flags, "cancelled") == names("resuming")
    assert fsm.vm_start_events(flags) == names("running-p2p running")
    assert fsm.vm_start_events(Flag.STOP_COPY) == []  # already RUNNING: no request, no event


def test_qemu_walk_is_a_chain_of_valid_requests() -> None:
    # Every request QEMU makes must be one the kernel accepts from where the device is.
    for flags in ALL_FLAGS:
        cur = State.RUNNING
        for state in fsm.source_events(flags):
            fsm.kernel_walk(cur, state, flags)
            cur = state
        cur = State.RUNNING
        for state in fsm.destination_events(flags):
            fsm.kernel_walk(cur, state, flags)
            cur = state


def test_first_difference_names_the_step() -> None:
    expected = names("pre-copy pre-copy-p2p stop-copy stop")
    assert fsm.first_difference(expected, expected) is None
    assert fsm.first_difference(expected, names("pre-copy running")) == (
        "step 2: expected pre-copy-p2p, observed running")
    assert fsm.first_difference(expected, expected[:3]) == "step 4: expected stop, observed nothing"
    assert fsm.first_difference(expected[:1], expected[:2]) == (
        "step 2: expected nothing, observed pre-copy-p2p")


def test_flag_parsing() -> None:
    assert Flag.parse("stop_copy|P2P, pre_copy") == Flag.STOP_COPY | Flag.P2P | Flag.PRE_COPY
    with pytest.raises(ValueError, match="unknown migration flag 'DIRTY'"):
        Flag.parse("STOP_COPY|DIRTY")


def test_source_walk_when_cancelled_after_the_vm_stopped() -> None:
    S = State
    # Seen in the lab with mtty: cancel at pre-switchover (VM stopped, device in STOP_COPY).
    mtty = Flag.STOP_COPY | Flag.P2P | Flag.PRE_COPY
    assert fsm.source_events(mtty, "cancelled-stopped") == [
        S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY, S.RUNNING_P2P, S.RUNNING]
    # Without P2P or pre-copy: STOP, STOP_COPY, then straight back to RUNNING.
    assert fsm.source_events(Flag.STOP_COPY, "cancelled-stopped") == [S.STOP, S.STOP_COPY, S.RUNNING]
