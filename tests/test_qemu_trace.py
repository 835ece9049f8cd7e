# SPDX-License-Identifier: GPL-2.0-or-later
"""PRECOPY_INFO against the reads that followed, from QEMU's vfio trace."""

from __future__ import annotations

from pathlib import Path

from qmp_mig.qemu_trace import SaveSession, parse, save_sessions

DEV = "4f1d0d5c-0b8e-4d2c-9a51-3c1b2f0e7a10"


def trace(*lines: str) -> str:
    return "\n".join(line.replace("DEV", DEV) for line in lines)


def state(name: str) -> str:
    return f"vfio_migration_set_device_state  (DEV) state {name}"


def estimate(initial: int, dirty: int) -> str:
    return (f"vfio_state_pending_estimate  (DEV) precopy {initial + dirty} postcopy 0 "
            f"precopy initial size {initial} precopy dirty size {dirty}")


def exact(initial: int, dirty: int) -> str:
    return (f"vfio_state_pending_exact  (DEV) precopy {initial + dirty} postcopy 0 stopcopy size 66920 "
            f"precopy initial size {initial} precopy dirty size {dirty}")


def block(size: int) -> str:
    return f"vfio_save_block  (DEV) data_size {size}"


def iterate(initial: int, dirty: int) -> str:
    return f"vfio_save_iterate  (DEV) precopy initial size {initial} precopy dirty size {dirty}"


SETUP = (state("PRE_COPY"), "vfio_save_setup  (DEV) data buffer size 66920")  # in QEMU's order
STOP_COPY = (state("PRE_COPY_P2P"), state("STOP_COPY"), block(66920), "vfio_save_complete_precopy  (DEV) ret 0",
             state("STOP"), "vfio_save_cleanup  (DEV)")


def test_parse_reads_events_devices_and_values() -> None:
    records = parse(trace("some other line", *SETUP, estimate(4096, 0), "12@1795.000001:" + block(4096)))
    assert [r.event for r in records] == ["vfio_migration_set_device_state", "vfio_save_setup",
                                          "vfio_state_pending_estimate", "vfio_save_block"]
    assert {r.device for r in records} == {DEV}
    assert records[0].state == "PRE_COPY"
    assert records[2].values["precopy initial size"] == 4096 and records[2].pending() == 4096
    assert records[3].values == {"data_size": 4096}


def test_an_honest_device_has_no_problem_and_its_bytes_are_counted() -> None:
    (session,) = save_sessions(parse(trace(
        *SETUP, estimate(66920, 0), block(66920), iterate(0, 0),
        estimate(0, 0), exact(0, 4096), block(4096), iterate(0, 0),
        estimate(0, 0), exact(0, 0), iterate(0, 0),  # the end of stream: ENOMSG
        *STOP_COPY)))
    assert session.problems == []
    assert (session.entry_announced, session.entry_first_read) == (66920, 66920)
    assert (session.precopy_bytes, session.stop_copy_bytes) == (66920 + 4096, 66920)
    assert (session.queries, session.empty_reads) == (2, 1)


def test_nothing_announced_at_entry_but_data_read_is_an_under_report() -> None:
    (session,) = save_sessions(parse(trace(
        *SETUP, estimate(0, 0), block(66920), iterate(0, 0), *STOP_COPY)))
    assert len(session.problems) == 1
    assert "announced nothing pending when PRE_COPY began" in session.problems[0]
    assert "66920 bytes" in session.problems[0]


def test_initial_bytes_after_the_end_of_stream_is_a_stuck_report() -> None:
    (session,) = save_sessions(parse(trace(
        *SETUP, estimate(66920, 0), block(66920), iterate(0, 0),
        exact(66920, 0), iterate(0, 0),  # the fd is empty ...
        exact(66920, 0), iterate(0, 0),  # ... yet initial bytes stay announced
        *STOP_COPY)))
    assert len(session.problems) == 1
    assert "66920 initial bytes right after" in session.problems[0]


def test_dirty_data_after_the_end_of_stream_is_allowed() -> None:
    (session,) = save_sessions(parse(trace(
        *SETUP, estimate(66920, 0), block(66920), iterate(0, 0),
        exact(0, 0), iterate(0, 0), exact(0, 8192), block(8192), iterate(0, 0), *STOP_COPY)))
    assert session.problems == []


def test_each_migration_attempt_is_its_own_session() -> None:
    sessions = save_sessions(parse(trace(
        *SETUP, estimate(0, 0), block(100), state("RUNNING"), "vfio_save_cleanup  (DEV)",
        *SETUP, estimate(66920, 0), block(66920), iterate(0, 0), *STOP_COPY)))
    assert [len(s.problems) for s in sessions] == [1, 0]


def lab_trace(name: str) -> list[SaveSession]:
    """A QEMU trace from the lab: one qmigdev-full migrated with switchover-ack."""
    return save_sessions(parse((Path(__file__).parent / "data" / name).read_text()))


def test_lab_trace_of_an_honest_qmigdev() -> None:
    (session,) = lab_trace("qmigdev-precopy-honest.trace")
    assert session.problems == []
    assert (session.entry_announced, session.precopy_bytes, session.stop_copy_bytes) == (65968, 65968, 952)


def test_lab_trace_of_qmigdev_lying_zero() -> None:
    (session,) = lab_trace("qmigdev-precopy-lie-zero.trace")
    assert [p.split(":")[0] for p in session.problems] == [
        "PRECOPY_INFO announced nothing pending when PRE_COPY began, then the first pre-copy read returned "
        "65968 bytes"]


def test_lab_trace_of_qmigdev_stuck_on_its_initial_bytes() -> None:
    (session,) = lab_trace("qmigdev-precopy-lie-stuck.trace")
    assert len(session.problems) == 1 and "65968 initial bytes right after" in session.problems[0]
