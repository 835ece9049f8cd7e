# SPDX-License-Identifier: GPL-2.0-or-later
"""Verdict messages: the first line names exactly what differed."""

import pytest

from qmp_mig.checks import CheckFailed, check_bytes, check_memory, check_ordering, check_walk
from qmp_mig.fsm import State


def first_line(exc: pytest.ExceptionInfo[CheckFailed]) -> str:
    return str(exc.value).splitlines()[0]


def test_walk_mismatch() -> None:
    with pytest.raises(CheckFailed) as exc:
        check_walk("source vfio0", [State.PRE_COPY, State.STOP], [State.PRE_COPY, State.RUNNING])
    assert first_line(exc) == "source vfio0: VFIO walk differs at step 2: expected stop, observed running"


def test_memory_report() -> None:
    check_memory("dst", {"pages": 10, "bad_pages": 0, "bad": []})
    bad = {"page": 7, "gpa": "0x1234000", "offset": 16, "expected": "0x1", "actual": "0x2", "bad_words": 1}
    with pytest.raises(CheckFailed) as exc:
        check_memory("dst", {"pages": 10, "bad_pages": 1, "bad": [bad]})
    assert first_line(exc) == (
        "dst: 1 of 10 guest pages corrupted; first: page 7 (gpa 0x1234000) offset 16: expected 0x1, found 0x2")


@pytest.mark.parametrize(
    ("observed", "message"),
    [
        (b"\x01\x02", "1 byte(s) lost at byte 2 (03)"),
        (b"\x02\x03", "1 byte(s) lost at byte 0 (01)"),
        (b"\x01\x03", "1 byte(s) lost at byte 1 (02)"),
        (b"\x03\x01", "byte 0 is 0x03, expected 0x01"),
        (b"\x01\x09\x03", "byte 1 is 0x09, expected 0x02"),
        (b"\x01\x02\x03\x04", "1 unexpected byte(s) from byte 3"),
    ],
)
def test_bytes(observed: bytes, message: str) -> None:
    check_bytes("mtty", b"\x01\x02\x03", b"\x01\x02\x03")
    with pytest.raises(CheckFailed) as exc:
        check_bytes("mtty", b"\x01\x02\x03", observed)
    assert first_line(exc) == f"mtty: {message}"


def test_ordering_passes_when_every_device_quiesces_before_any_stops() -> None:
    walks = {"vfio0": [(1.0, State.PRE_COPY), (2.0, State.PRE_COPY_P2P), (4.0, State.STOP_COPY)],
             "vfio1": [(1.1, State.PRE_COPY), (3.0, State.PRE_COPY_P2P), (4.1, State.STOP_COPY)]}
    check_ordering("source", walks, {State.PRE_COPY_P2P, State.RUNNING_P2P}, {State.STOP, State.STOP_COPY})


def test_ordering_names_the_late_device_and_the_early_mover() -> None:
    walks = {"vfio0": [(1.0, State.PRE_COPY_P2P), (2.0, State.STOP_COPY)],
             "vfio1": [(2.5, State.PRE_COPY_P2P), (3.0, State.STOP_COPY)]}
    with pytest.raises(CheckFailed, match=r"^source: vfio1 reached PRE_COPY_P2P/RUNNING_P2P 500.0 ms "
                                          r"after vfio0 had already moved on to STOP_COPY"):
        check_ordering("source", walks, {State.PRE_COPY_P2P, State.RUNNING_P2P}, {State.STOP, State.STOP_COPY})
