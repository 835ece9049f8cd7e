# SPDX-License-Identifier: GPL-2.0-or-later
"""The suite's verdicts. Each check raises :class:`CheckFailed` whose first line
says exactly what differed (expected vs observed step, the page or byte that
changed); details follow on later lines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .fsm import State, first_difference, format_walk


class CheckFailed(AssertionError):
    """A verdict: the first line of the message is the one-line summary."""


def check_walk(where: str, expected: Sequence[State], observed: Sequence[State]) -> None:
    """QEMU's VFIO_MIGRATION walk for one device equals the model's."""
    difference = first_difference(expected, observed)
    if difference:
        raise CheckFailed(
            f"{where}: VFIO walk differs at {difference}\n"
            f"  expected: {format_walk(expected)}\n"
            f"  observed: {format_walk(observed)}"
        )


def check_memory(where: str, report: dict[str, Any]) -> None:
    """The memory agent found every page as it left it."""
    bad = report.get("bad", [])
    if report.get("bad_pages", 0) == 0:
        return
    first = bad[0] if bad else {}
    lines = [
        f"{where}: {report['bad_pages']} of {report['pages']} guest pages corrupted; first: "
        f"page {first.get('page')} (gpa {first.get('gpa')}) offset {first.get('offset')}: "
        f"expected {first.get('expected')}, found {first.get('actual')}"
    ]
    lines += [
        f"  page {b['page']} gpa {b['gpa']} offset {b['offset']}: expected {b['expected']}, "
        f"found {b['actual']} ({b['bad_words']} bad words)"
        for b in bad
    ]
    raise CheckFailed("\n".join(lines))


def _lost(expected: bytes, observed: bytes) -> str | None:
    """If observed is expected with one contiguous run of bytes missing, say which."""
    missing = len(expected) - len(observed)
    if missing <= 0:
        return None
    prefix = next((i for i, (a, b) in enumerate(zip(expected, observed)) if a != b), len(observed))
    if expected[prefix + missing:] != observed[prefix:]:
        return None
    return f"{missing} byte(s) lost at byte {prefix} ({expected[prefix:prefix + missing].hex(' ')})"


def check_bytes(where: str, expected: bytes, observed: bytes) -> None:
    """Bytes put into a device before migration come back unchanged after it."""
    if expected == observed:
        return
    what = _lost(expected, observed)
    if what is None:
        index = next(
            (i for i, (a, b) in enumerate(zip(expected, observed)) if a != b),
            min(len(expected), len(observed)),
        )
        if index >= len(expected):
            what = f"{len(observed) - len(expected)} unexpected byte(s) from byte {index}"
        else:
            what = f"byte {index} is {observed[index]:#04x}, expected {expected[index]:#04x}"
    raise CheckFailed(
        f"{where}: {what}\n  expected: {expected.hex(' ')}\n  observed: {observed.hex(' ')}"
    )


def check_ordering(
    where: str, walks: dict[str, list[tuple[float, State]]], first: set[State], then: set[State]
) -> None:
    """Every device entered a state of ``first`` before any device entered one of
    ``then`` (e.g. all quiesced peer-to-peer before any stopped)."""
    reached = {d: next((t for t, s in w if s in first), None) for d, w in walks.items()}
    moved = {d: next((t for t, s in w if s in then), None) for d, w in walks.items()}
    names = "/".join(sorted(s.name for s in first))
    for device, when in reached.items():
        if when is None:
            raise CheckFailed(f"{where}: {device} never reached {names}")
    last_device = max(reached, key=lambda d: reached[d] or 0.0)
    movers = {d: t for d, t in moved.items() if t is not None}
    if not movers:
        return
    first_mover = min(movers, key=lambda d: movers[d])
    last = reached[last_device] or 0.0
    if last > movers[first_mover]:
        state = next(s for t, s in walks[first_mover] if t == movers[first_mover])
        raise CheckFailed(
            f"{where}: {last_device} reached {names} {1000 * (last - movers[first_mover]):.1f} ms after "
            f"{first_mover} had already moved on to {state.name}"
        )


def check_equal(where: str, what: str, expected: object, observed: object) -> None:
    if expected != observed:
        raise CheckFailed(f"{where}: {what} is {observed!r}, expected {expected!r}")
