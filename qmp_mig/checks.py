# SPDX-License-Identifier: GPL-2.0-or-later
"""The suite's verdicts. Each check raises :class:`CheckFailed` whose first line
says exactly what differed (expected vs observed step, the page or byte that
changed); details follow on later lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .fsm import State, first_difference, format_walk


class CheckFailed(AssertionError):
    """A verdict: the first line of the message is the one-line summary."""


# An optional check that could not run in a test (and was not required) is listed
# here, in the test's artifacts: check name -> why. Never a pass in disguise.
NOT_RUN_FILE = "checks-not-run.json"


def not_run(logdir: Path) -> dict[str, str]:
    """The checks a test could not run, from its log directory (empty if none)."""
    try:
        listed = json.loads((logdir / "artifacts" / NOT_RUN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in listed.items()} if isinstance(listed, dict) else {}


def describe_not_run(checks: dict[str, str]) -> str:
    return "not run: " + "; ".join(f"{name} ({why})" for name, why in checks.items()) if checks else ""


def check_walk(where: str, expected: Sequence[State], observed: Sequence[State]) -> None:
    """QEMU's VFIO_MIGRATION walk for one device equals the model's."""
    difference = first_difference(expected, observed)
    if difference:
        raise CheckFailed(
            f"{where}: VFIO walk differs at {difference}\n"
            f"  expected: {format_walk(expected)}\n"
            f"  observed: {format_walk(observed)}"
        )


def require_keys(where: str, report: dict[str, Any], *keys: str) -> None:
    """A report that lacks a count cannot vouch for it: an absent key is a failure,
    never zero (an agent of another version, a truncated answer)."""
    missing = [k for k in keys if k not in report]
    if missing:
        raise CheckFailed(f"{where}: the agent's report lacks {', '.join(missing)}, so nothing can be "
                          f"concluded from it\n  report: {report}")


def check_memory(where: str, report: dict[str, Any]) -> None:
    """The memory agent found every page as it left it."""
    require_keys(where, report, "pages", "bad_pages")
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


def _verdict(where: str, problems: list[str], report: dict[str, Any]) -> None:
    """Fail with every problem on the first line and the agent's report below."""
    if problems:
        raise CheckFailed(f"{where}: " + "; ".join(problems) + f"\n  report: {report}")


def _first(seqs: Sequence[object]) -> str:
    return ", ".join(str(s) for s in seqs[:8]) + (" ..." if len(seqs) > 8 else "")


def _ring_problems(report: dict[str, Any], future: str) -> list[str]:
    """What a DMA ring's verdict (lost, torn, future records) says is wrong."""
    problems = []
    if report.get("lost"):
        problems.append(f"{report['lost']} DMA record(s) lost after migration (seq {_first(report['lost_seqs'])})")
    if report.get("torn"):
        problems.append(f"{report['torn']} torn DMA record(s) (slot {_first(report['torn_slots'])})")
    if report.get("future"):
        problems.append(f"{report['future']} DMA record(s) {future} (seq {_first(report['future_seqs'])})")
    return problems


def check_records(where: str, report: dict[str, Any]) -> None:
    """Every DMA record the device says it wrote is in guest RAM, whole, in order,
    and none was written while the device was stopped."""
    require_keys(where, report, "expected", "lost", "torn", "future", "stopped")
    problems = []
    if not report.get("expected"):
        problems.append("no DMA records were written at all")
    problems += _ring_problems(report, "newer than the device's own sequence number: its state is older "
                               "than the guest RAM it wrote")
    if report.get("stopped"):
        problems.append(f"{report['stopped']} DMA record(s) written while the device was stopped "
                        f"(seq {_first(report['stopped_seqs'])})")
    _verdict(where, problems, report)


def check_device_memory(where: str, report: dict[str, Any]) -> None:
    """Device memory written before migration reads back the same after it."""
    require_keys(where, report, "bytes", "dma_result", "mmap_bytes_differing", "dma_bytes_differing")
    bad = max(int(report.get("mmap_bytes_differing", 0)), int(report.get("dma_bytes_differing", 0)))
    if bad or report.get("dma_result"):
        raise CheckFailed(
            f"{where}: device memory lost after migration: {bad} of {report.get('bytes')} bytes differ "
            f"(4 KiB chunks {_first(report.get('chunks_differing', []))}; DMA result {report.get('dma_result')})"
            f"\n  report: {report}")


def check_p2p(where: str, report: dict[str, Any]) -> None:
    """Every P2P write the sender issued arrived, whole, and none was sent while quiesced."""
    require_keys(where, report, "sent", "received", "errors", "lost_in_flight", "lost", "torn",
                 "quiesced", "stopped")
    problems = []
    if not report.get("sent"):
        problems.append("no P2P writes were sent at all")
    if report.get("errors"):
        problems.append(f"{report['errors']} P2P write(s) failed in the sender")
    if report.get("lost_in_flight"):
        problems.append(f"{report['lost_in_flight']} P2P write(s) lost: sent {report['sent']}, "
                        f"received {report['received']}")
    if report.get("lost") or report.get("torn"):
        problems.append(f"receive window: {report.get('lost', 0)} P2P record(s) missing, "
                        f"{report.get('torn', 0)} torn")
    if report.get("quiesced"):
        problems.append(f"{report['quiesced']} P2P record(s) sent while the sender was quiesced")
    if report.get("stopped"):
        problems.append(f"{report['stopped']} P2P record(s) sent while the sender was stopped")
    _verdict(where, problems, report)


def check_edu(where: str, report: dict[str, Any]) -> None:
    """An edu function's DMA load survived: every record the guest saw the device copy
    back is in guest RAM, whole, in its slot; the device's DMA buffer holds what was
    copied into it; the registers set before migration read back the same."""
    require_keys(where, report, "done", "lost", "torn", "future", "foreign", "source", "liveness",
                 "factorial", "buffer", "dma_timeouts")
    problems = []
    if not report.get("done"):
        problems.append("the device copied no record at all")
    problems += _ring_problems(report, "the guest never issued")
    if report.get("foreign"):
        problems.append(f"{report['foreign']} DMA record(s) in the wrong slot")
    source = report.get("source") or {}
    if source.get("lost") or source.get("torn"):
        problems.append(f"the guest's own records: {source.get('lost', 0)} lost, {source.get('torn', 0)} torn "
                        "(guest RAM did not survive)")
    for register in ("liveness", "factorial"):
        value = report.get(register) or {}
        if value.get("expected") != value.get("read"):
            problems.append(f"register {register}: set to give {value.get('expected')} before migration, "
                            f"reads {value.get('read')} after it")
    buffer = report.get("buffer") or {}
    if buffer.get("mismatched"):
        problems.append(f"the device's DMA buffer lost what was copied into it: {buffer['mismatched']} of "
                        f"{buffer.get('compared')} chunks differ (chunk {_first(buffer.get('chunks', []))})")
    if report.get("dma_timeouts"):
        problems.append(f"{report['dma_timeouts']} DMA transfer(s) never finished")
    _verdict(where, problems, report)
