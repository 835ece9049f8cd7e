# SPDX-License-Identifier: GPL-2.0-or-later
"""The kernel-walk reconstruction and cross-check, on a real lab trace and on doctored ones."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qmp_mig import fsm
from qmp_mig.fsm import Flag, State
from qmp_mig.kernel_trace import KernelCall, check_device, parse_trace, requests

S = State
MTTY = Flag.STOP_COPY | Flag.P2P | Flag.PRE_COPY
SOURCE, DEST = "52e54354-3b00-4545-90c7-0df0f3996fca", "007f1a95-f149-45cb-8ba3-d6b08a769b68"
TRACE = parse_trace((Path(__file__).parent / "data" / "mtty-migration.trace").read_text())


def calls_of(device: str) -> list[KernelCall]:
    return [c for c in TRACE if c.device == device]


def test_parse_pairs_calls_with_returns_and_groups_threads_by_process() -> None:
    assert len(TRACE) == 16
    assert all(c.ret == 0 for c in TRACE)
    assert {c.tgid for c in calls_of(SOURCE)} == {376}  # main loop and migration thread
    assert {c.tid for c in calls_of(SOURCE)} == {376, 399}


def test_requests_rebuild_the_kernel_path_of_each_request() -> None:
    walked = requests(calls_of(DEST))
    assert [r.target for r in walked] == [S.RESUMING, S.RUNNING_P2P, S.RUNNING]
    assert walked[0].path == [S.RUNNING, S.RUNNING_P2P, S.STOP, S.RESUMING]
    assert walked[1].path == [S.RESUMING, S.STOP, S.RUNNING_P2P]
    assert all(r.ok for r in walked)


def test_real_migration_agrees_with_qemu_and_the_model() -> None:
    source_walk = [*fsm.destination_events(MTTY), *fsm.source_events(MTTY)]  # restored, then migrated
    assert check_device("source vfio0", MTTY, calls_of(SOURCE), source_walk) == []
    assert check_device("destination vfio0", MTTY, calls_of(DEST), fsm.destination_events(MTTY)) == []


def test_disagreement_with_qemu_prints_both_views() -> None:
    problems = check_device("destination vfio0", MTTY, calls_of(DEST), [S.RESUMING, S.RUNNING])
    assert len(problems) == 1
    assert "QEMU and the kernel disagree at step 2: QEMU running, kernel running-p2p" in problems[0]
    assert "QEMU events:     resuming -> running" in problems[0]
    assert "RESUMING->STOP->RUNNING_P2P" in problems[0]


def test_an_arc_outside_the_fsm_is_reported() -> None:
    # A driver that jumps RUNNING -> STOP although it declares P2P.
    bad = [KernelCall(1.0, 7, 7, "d", S.RUNNING, S.STOP, 0)]
    problems = check_device("vm vfio0", MTTY, bad, [S.STOP])
    assert any("kernel took arc RUNNING->STOP, not an arc of the FSM" in p for p in problems)


def test_a_longer_than_shortest_walk_is_reported() -> None:
    # RUNNING -> RUNNING_P2P -> RUNNING -> RUNNING_P2P -> STOP for one STOP request: valid arcs, detour.
    path = [S.RUNNING, S.RUNNING_P2P, S.RUNNING, S.RUNNING_P2P]
    detour = [KernelCall(float(i), 7, 7, "d", s, S.STOP, 0) for i, s in enumerate(path)]
    problems = check_device("vm vfio0", MTTY, detour, [S.STOP])
    assert len(problems) == 1
    assert "kernel walked RUNNING->RUNNING_P2P->RUNNING->RUNNING_P2P->STOP" in problems[0]
    assert "shortest path is RUNNING->RUNNING_P2P->STOP" in problems[0]


def test_a_refused_step_is_not_counted_as_reached() -> None:
    refused = [replace(calls_of(DEST)[0], ret=-22)]
    walked = requests(refused)
    assert [r.ok for r in walked] == [False]
    problems = check_device("destination vfio0", MTTY, refused, [S.RESUMING])
    assert "(refused)" in problems[0]


def test_a_failed_arc_then_reset_reads_as_qemu_saw_it() -> None:
    # qmigdev with fail_arc "PRE_COPY_P2P->STOP_COPY error": the driver fails the arc,
    # QEMU resets the device (RUNNING) and resumes the VM. The probe sees the request
    # but neither the driver's error nor the reset.
    trace = parse_trace((Path(__file__).parent / "data" / "qmigdev-failed-arc-reset.trace").read_text())
    source = [c for c in trace if c.device == "9cfaa4c6-638f-4630-9185-a5d2eea62e84"]
    walked = requests(source)
    assert [r.describe() for r in walked][-4:] == [
        "PRE_COPY_P2P", "reset->RUNNING", "RUNNING->RUNNING_P2P", "RUNNING_P2P->RUNNING"]
    assert not walked[-4].ok
    qemu = [S.RUNNING_P2P, S.RUNNING, S.PRE_COPY, S.PRE_COPY_P2P, S.RUNNING, S.RUNNING_P2P, S.RUNNING]
    assert check_device("source vfio0", MTTY, source, qemu) == []
    # A QEMU that never reported the reset disagrees with the kernel.
    problems = check_device("source vfio0", MTTY, source, [*qemu[:4], S.RUNNING_P2P, S.RUNNING])
    assert any("QEMU and the kernel disagree" in p for p in problems)


def test_tai_stamps_become_wall_clock_times() -> None:
    """A host whose kernel knows the leap seconds (TAI offset 37, set by NTP or PTP)
    stamps the trace 37 s ahead of UTC; the calls come out on the wall clock that
    QEMU's events use, so the two views line up."""
    text = (Path(__file__).parent / "data" / "mtty-migration.trace").read_text()
    ahead = parse_trace(text, tai_offset=37)
    assert [round(a.time - t.time, 6) for a, t in zip(ahead, TRACE)] == [-37.0] * len(TRACE)
    assert [(a.cur, a.new, a.device) for a in ahead] == [(t.cur, t.new, t.device) for t in TRACE]
