# SPDX-License-Identifier: GPL-2.0-or-later
"""qmp_mig/conformance.py against in-process device models (tests/fake_vfio.py):
an honest driver passes every check; each class of driver bug fails a named check;
the kernel's trace judges the arcs; a host user that stops answering ends the run
with skips, never passes."""

from __future__ import annotations

import errno
import hashlib
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from fake_vfio import MEMORY_REGION, FakeDevice, FakeHostVfio, Stream

from qmp_mig import fsm, host_vfio
from qmp_mig.conformance import Conformance, OwnView, Result, Verdict, payload_flips
from qmp_mig.fsm import Flag, State
from qmp_mig.kernel_trace import KernelCall
from qmp_mig.vfio_session import DirectDevice

S = State
SUBJECT, PEER = "/sys/bus/mdev/devices/5ub7ec7", "/sys/bus/mdev/devices/9ee7"
BASIC = Flag.STOP_COPY
P2P = Flag.STOP_COPY | Flag.P2P
PRECOPY = Flag.STOP_COPY | Flag.PRE_COPY
FULL = Flag.STOP_COPY | Flag.P2P | Flag.PRE_COPY
# One fsm check per supported state (ERROR is not one) x every State and the undefined value 8.
FSM_CHECKS = {BASIC: 4 * 9, P2P: 5 * 9, PRECOPY: 5 * 9, FULL: 7 * 9}
STEPS = ["open", "fsm", "data-fd", "precopy", "round-trip", "reset", "close"]
STEP_METHODS = ["check_open", "check_fsm", "check_stop_copy", "check_precopy", "check_round_trip",
                "check_reset", "check_close"]


def bench(flags: Flag, view: OwnView | None = None, **bugs: Any) -> tuple[FakeHostVfio, Conformance]:
    """Two instances of one driver (both with ``bugs``), opened, and the checks of the first."""
    fake = FakeHostVfio({SUBJECT: FakeDevice(flags, **bugs), PEER: FakeDevice(flags, **bugs)})
    subject, peer = fake.device("subject", SUBJECT), fake.device("peer", PEER)
    assert subject.open().ok and peer.open().ok
    return fake, Conformance(subject, flags, peer=peer, view=view)


def by_name(results: list[Result]) -> dict[str, Result]:
    named = {r.check: r for r in results}
    assert len(named) == len(results), "a check name appears twice"
    return named


def failures(results: list[Result]) -> list[str]:
    return [r.line() for r in results if r.verdict == Verdict.FAIL]


def digest_view() -> OwnView:
    """What qmigdev's view does: fill the device memory, each device with a pattern
    of its own (so a peer that keeps its own state shows), compare their digests."""
    def prepare(device: DirectDevice) -> None:
        assert device.fill_region(MEMORY_REGION, seed=zlib.crc32(device.name.encode())).ok

    def read(device: DirectDevice, _when: str) -> str:
        digest = device.region_digest(MEMORY_REGION)
        return f"sha256 {digest.answer.get('sha256', digest.outcome())}"

    return OwnView("device memory", prepare, read)


FLAG_SETS = pytest.mark.parametrize("flags", [BASIC, P2P, PRECOPY, FULL], ids=lambda f: f.describe())


# --- the fake itself -------------------------------------------------------------------


def test_fake_answers_every_op_of_the_host_user() -> None:
    ops = {name for name in vars(host_vfio.Server) if name.startswith("op_")}
    assert ops <= set(dir(FakeHostVfio))


def model_answer(cur: State, new: int, flags: Flag) -> bool | None:
    """None if the request must be refused, else whether it returns a new data_fd."""
    if new not in {int(s) for s in State} or new == S.ERROR:
        return None
    try:
        return fsm.returns_data_fd(cur, State(new), flags)
    except fsm.InvalidTransition:
        return None


@FLAG_SETS
def test_fake_follows_the_model_for_every_request(flags: Flag) -> None:
    """Independent of conformance.py: each (state, request) straight on the fake."""
    device = FakeDevice(flags)
    stream = device.header() + device.rest_of_stream()
    for cur in fsm.supported_states(flags):
        for new in [*State, 8]:
            device.reset()
            device.set_state(S.STOP if cur == S.RESUMING else cur)
            if cur == S.RESUMING:
                session = device.set_state(S.RESUMING)
                assert session is not None
                device.write(session, stream)
            wants_fd = model_answer(cur, new, flags)
            if wants_fd is None:
                with pytest.raises(OSError) as refused:
                    device.set_state(new)
                assert refused.value.errno == errno.EINVAL and device.state == cur
                continue
            session = device.set_state(new)
            assert device.state == new
            assert (session is not None) == wants_fd, (cur, new)


def test_fake_saving_group_shares_one_session_and_leaving_it_ends_it() -> None:
    fake, _ = bench(FULL)
    device = fake.device("subject", SUBJECT)
    enter = device.set_state(S.PRE_COPY)
    assert enter.data_fd >= 0
    assert device.set_state(S.PRE_COPY_P2P).data_fd == -1
    assert device.set_state(S.STOP_COPY).data_fd == -1
    read = device.read_all(enter.data_fd, "all")
    assert read.answer["end"] == "eof" and read.answer["n"] == fake.devices[SUBJECT].stream_length()
    assert device.set_state(S.STOP).ok
    assert device.read(enter.data_fd, 1).outcome() == "ENODEV"


def test_fake_refuses_a_bad_stream_and_stays_in_resuming() -> None:
    fake, _ = bench(BASIC)
    subject, peer = fake.device("subject", SUBJECT), fake.device("peer", PEER)
    save = subject.set_state(S.STOP_COPY)
    length = subject.read_all(save.data_fd, "saved").answer["n"]
    for end, flip in [(length - 1, ()), (None, [length // 2]), (None, [length - 1])]:
        resume = peer.set_state(S.RESUMING)
        assert peer.write(resume.data_fd, "saved", end=end, flip=flip).ok
        assert peer.set_state(S.STOP).outcome() == "EINVAL"
        assert peer.state().value == S.RESUMING
        assert peer.reset().ok
    resume = peer.set_state(S.RESUMING)
    peer.write(resume.data_fd, "saved")
    assert peer.set_state(S.RUNNING).ok


def test_fake_answers_region_and_dma_ops_as_the_host_user() -> None:
    fake = FakeHostVfio({SUBJECT: FakeDevice(BASIC)})
    assert fake.call("map_dma", iova=0x1000, size=16)["errno"] == errno.ENODEV  # no device open yet
    device = fake.device("subject", SUBJECT)
    assert device.open().ok
    assert device.region_write(MEMORY_REGION, 8, 4, 0xDEADBEEF).ok
    assert device.region_read(MEMORY_REGION, 8, 4).value == 0xDEADBEEF
    assert fake.devices[SUBJECT].memory[8:12] == bytes.fromhex("efbeadde")
    assert device.region_read(MEMORY_REGION, 62, 4).outcome() == "EINVAL"
    assert device.region_read(0, 0, 4).outcome() == "EINVAL"
    assert fake.call("map_dma", iova=0x1000, size=16)["ok"]
    filled = fake.call("dma_fill", iova=0x1000, seed=7)
    assert filled["sha256"] == fake.call("dma_digest", iova=0x1000)["sha256"]
    assert fake.call("dma_fill", iova=0x1000, seed=0)["sha256"] == hashlib.sha256(bytes(16)).hexdigest()


def test_fake_accept_corrupt_takes_a_stream_corrupted_past_its_header() -> None:
    """The knob is a real bug: a payload byte flipped goes unnoticed (the header is
    still checked, as mtty checks its magic on write())."""
    fake, _ = bench(BASIC, accept_corrupt=True)
    subject, peer = fake.device("subject", SUBJECT), fake.device("peer", PEER)
    save = subject.set_state(S.STOP_COPY)
    length = subject.read_all(save.data_fd, "saved").answer["n"]
    resume = peer.set_state(S.RESUMING)
    peer.write(resume.data_fd, "saved", flip=[length // 2])
    assert peer.set_state(S.STOP).ok
    resume = peer.set_state(S.RESUMING)
    peer.write(resume.data_fd, "saved", flip=[0])
    assert peer.set_state(S.STOP).outcome() == "EINVAL"


# --- an honest device ------------------------------------------------------------------


@FLAG_SETS
def test_honest_device_passes_every_check(flags: Flag) -> None:
    fake, checks = bench(flags)
    results = checks.run()
    assert failures(results) == []
    named = by_name(results)
    fsm_checks = [r for r in results if r.check.startswith("fsm ")]
    assert len(fsm_checks) == FSM_CHECKS[flags] == len(fsm.supported_states(flags)) * (len(State) + 1)
    assert all(r.verdict == Verdict.PASS for r in fsm_checks)
    must_pass = ["flags", "state at open", "reset offered", "data-fd STOP_COPY reads to end of stream",
                 "data-fd end of stream is permanent", "MIG_DATA_SIZE", "precopy-info in STOP_COPY",
                 "precopy-info in RESUMING", "round-trip stream accepted", "round-trip device runs",
                 "round-trip truncated stream refused", "round-trip corrupted header refused",
                 "round-trip corrupted payload refused", "reset in STOP", "reset in STOP_COPY",
                 "reset in RESUMING", "close in STOP", "close in STOP_COPY", "close in RESUMING"]
    if Flag.PRE_COPY in flags:
        must_pass += ["precopy-info in PRE_COPY", "precopy-info initial bytes at PRE_COPY entry",
                      "precopy-info initial bytes never grow", "precopy-info initial bytes reach zero",
                      "precopy read with nothing pending", "precopy-info after PRE_COPY -> STOP_COPY",
                      "data-fd saving session continues into STOP_COPY", "reset in PRE_COPY",
                      "close in PRE_COPY"]
    if flags == FULL:
        must_pass += ["precopy-info in PRE_COPY_P2P"]
    assert [c for c in must_pass if named[c].verdict != Verdict.PASS] == []
    # What an honest device cannot show is a skip that says why, never a pass.
    skipped = {r.check for r in results if r.verdict == Verdict.SKIP}
    assert skipped == {"reset from ERROR", "round-trip restored state"} | (
        set() if Flag.PRE_COPY in flags else {"precopy"})
    assert fake.running


@FLAG_SETS
def test_honest_round_trip_restores_the_device_memory(flags: Flag) -> None:
    fake, checks = bench(flags, view=digest_view())
    result = by_name(checks.run())["round-trip restored state"]
    assert result.verdict == Verdict.PASS
    # Each device was given a state of its own first: the peer's was overwritten by the subject's.
    fills = {e["request"]["dev"]: e["request"]["seed"] for e in fake.transcript
             if e["request"]["op"] == "region_fill"}
    assert set(fills) == {"subject", "peer"} and fills["subject"] != fills["peer"]
    assert result.expected == result.observed != f"sha256 {'0' * 64}"
    assert fake.devices[PEER].memory == fake.devices[SUBJECT].memory != bytearray(64)


# --- each bug fails a named check ------------------------------------------------------


@pytest.mark.parametrize(("flags", "bugs", "check"), [
    pytest.param(BASIC, {"stale_state_on_close": True}, "close in STOP", id="stale_state_on_close"),
    pytest.param(PRECOPY, {"fail_arc": (S.RUNNING, S.PRE_COPY, "stay")}, "fsm RUNNING->PRE_COPY",
                 id="fail_arc-stay"),
    pytest.param(PRECOPY, {"fail_arc": (S.RUNNING, S.PRE_COPY, "error")}, "fsm RUNNING->PRE_COPY",
                 id="fail_arc-error"),
    pytest.param(P2P, {"fail_arc": (S.RUNNING_P2P, S.STOP, "stay")}, "fsm RUNNING->STOP",
                 id="fail_arc-second-arc"),
    pytest.param(BASIC, {"accept_corrupt": True}, "round-trip corrupted payload refused",
                 id="accept_corrupt"),
    pytest.param(BASIC, {"lie_data_size": 1}, "MIG_DATA_SIZE", id="lie_data_size"),
    pytest.param(PRECOPY, {"precopy_info_stuck": True}, "precopy-info initial bytes reach zero",
                 id="precopy_info_stuck"),
    pytest.param(PRECOPY, {"precopy_info_zero": True}, "precopy-info initial bytes at PRE_COPY entry",
                 id="precopy_info_zero"),
    pytest.param(PRECOPY, {"initial_as_dirty": True}, "precopy-info initial bytes at PRE_COPY entry",
                 id="initial_as_dirty"),
    pytest.param(PRECOPY, {"eof_in_precopy": True}, "precopy read with nothing pending",
                 id="eof_in_precopy"),
    pytest.param(FULL, {"refuse_reset": "fail"}, "reset in STOP", id="refuse_reset-fail"),
    pytest.param(FULL, {"refuse_reset": "ignore"}, "reset in STOP", id="refuse_reset-ignore"),
    pytest.param(BASIC, {"wrong_fd": True}, "fsm STOP->STOP_COPY", id="wrong_fd"),
    pytest.param(BASIC, {"no_reset_flag": True}, "reset offered", id="no_reset_flag"),
    pytest.param(BASIC, {"no_reset_flag": True, "refuse_reset": "fail"}, "reset in STOP",
                 id="no_reset_flag-refuse_reset"),
])
def test_each_bug_fails_its_check(flags: Flag, bugs: dict[str, Any], check: str) -> None:
    _, honest = bench(flags)
    assert by_name(honest.run())[check].verdict == Verdict.PASS  # the check passes without the bug
    _, checks = bench(flags, **bugs)
    result = by_name(checks.run())[check]
    assert result.verdict == Verdict.FAIL, result.line()
    assert result.call and result.expected and result.observed


def test_fail_arc_into_error_is_reset() -> None:
    """The arc that left ERROR is made again, and VFIO_DEVICE_RESET brings the device back."""
    _, checks = bench(PRECOPY, fail_arc=(S.RUNNING, S.PRE_COPY, "error"))
    named = by_name(checks.run())
    assert "GET ERROR" in named["fsm RUNNING->PRE_COPY"].observed
    # STOP comes first among the states: STOP -> PRE_COPY walks the failing arc first.
    assert named["reset from ERROR (left by fsm STOP->PRE_COPY)"].verdict == Verdict.PASS


def test_precopy_info_stuck_also_shows_data_that_never_comes() -> None:
    _, checks = bench(PRECOPY, precopy_info_stuck=True)
    result = by_name(checks.run())["precopy read while data is pending"]
    assert result.verdict == Verdict.FAIL and result.observed == "ENOMSG"


def test_stale_state_on_close_fails_every_state_and_is_reset() -> None:
    _, checks = bench(FULL, stale_state_on_close=True)
    results = checks.run()
    stale = {r.check for r in results if r.verdict == Verdict.FAIL}
    assert stale == {f"close in {s.name}" for s in fsm.supported_states(FULL) if s != S.RUNNING}


RESET_CHECKS = {BASIC: ["reset in STOP", "reset in STOP_COPY", "reset in RESUMING"],
                FULL: ["reset in STOP", "reset in STOP_COPY", "reset in RESUMING", "reset in PRE_COPY"]}


@pytest.mark.parametrize("flags", [BASIC, FULL], ids=lambda f: f.describe())
def test_a_reset_flag_missing_fails_only_reset_offered(flags: Flag) -> None:
    """The reset ioctl still works: the reset checks call it anyway, and pass."""
    fake, checks = bench(flags, no_reset_flag=True)
    results = checks.run()
    assert [r.check for r in results if r.verdict == Verdict.FAIL] == ["reset offered"]
    named = by_name(results)
    offered = named["reset offered"]
    assert offered.call == "VFIO_DEVICE_GET_INFO()"
    assert offered.expected == "VFIO_DEVICE_FLAGS_RESET set" and offered.observed == "flags 2"
    assert [c for c in RESET_CHECKS[flags] if named[c].verdict != Verdict.PASS] == []
    assert all(named[c].call == "VFIO_DEVICE_RESET()" for c in RESET_CHECKS[flags])
    resets = [e for e in fake.transcript if e["request"] == {"op": "reset", "dev": "subject"}]
    assert len(resets) >= len(RESET_CHECKS[flags])


@pytest.mark.parametrize("flags", [BASIC, FULL], ids=lambda f: f.describe())
def test_a_reset_that_fails_fails_the_reset_checks_too(flags: Flag) -> None:
    _, checks = bench(flags, no_reset_flag=True, refuse_reset="fail")
    named = by_name(checks.run())
    assert named["reset offered"].verdict == Verdict.FAIL
    for check in RESET_CHECKS[flags]:
        result = named[check]
        assert result.verdict == Verdict.FAIL, result.line()
        assert result.call == "VFIO_DEVICE_RESET()" and result.expected == "ok, then GET RUNNING"
        assert result.observed.startswith("EIO, then GET ")


def test_a_reset_flag_offered_with_a_reset_that_fails_passes_reset_offered() -> None:
    named = by_name(bench(BASIC, refuse_reset="fail")[1].run())
    assert named["reset offered"].verdict == Verdict.PASS
    assert named["reset in STOP"].verdict == Verdict.FAIL


def test_payload_flips_are_past_the_header() -> None:
    assert payload_flips(92) == [46, 91]
    assert payload_flips(3) == [1, 2]
    assert payload_flips(2) == [1]


def writes_of(fake: FakeHostVfio, dev_fds: set[int]) -> list[tuple[int | None, list[int]]]:
    """(end, flip) of every write() into one of ``dev_fds``."""
    return [(e["request"]["end"], e["request"]["flip"]) for e in fake.transcript
            if e["request"]["op"] == "write" and e["request"]["fd"] in dev_fds]


def resuming_fds(fake: FakeHostVfio, dev: str) -> set[int]:
    return {e["answer"]["data_fd"] for e in fake.transcript
            if e["request"] == {"op": "set_state", "dev": dev, "state": int(S.RESUMING)}
            and e["answer"].get("ok")}


@pytest.mark.parametrize(("bugs", "header", "payload"), [
    pytest.param({}, Verdict.PASS, Verdict.PASS, id="honest"),
    pytest.param({"accept_corrupt": True}, Verdict.PASS, Verdict.FAIL, id="accept_corrupt"),
])
def test_corrupted_header_and_payload_are_judged_apart(bugs: dict[str, Any], header: Verdict,
                                                       payload: Verdict) -> None:
    """A driver that checks its header but never the state it loads passes the first only."""
    fake, checks = bench(BASIC, **bugs)
    named = by_name(checks.run())
    length = fake.devices[SUBJECT].stream_length()
    assert length == 92 and len(fake.blobs["round-trip"]) == length
    assert named["round-trip truncated stream refused"].verdict == Verdict.PASS
    assert named["round-trip corrupted header refused"].verdict == header
    assert named["round-trip corrupted payload refused"].verdict == payload
    # The peer got the whole stream, then half of it, then byte 0 inverted, then its middle and last.
    assert writes_of(fake, resuming_fds(fake, "peer")) == [
        (None, []), (length // 2, []), (None, [0]), (None, payload_flips(length))]
    if payload == Verdict.FAIL:
        result = named["round-trip corrupted payload refused"]
        assert result.expected == "write() or RESUMING -> STOP fails"
        assert result.observed == f"write ok, written {length}; SET STOP ok, data_fd none"


def test_precopy_info_zero_fails_the_entry_and_the_read_only() -> None:
    """With no initial bytes, only the read with nothing pending is checked: it finds the header."""
    _, checks = bench(PRECOPY, precopy_info_zero=True)
    results = checks.run()
    named = by_name(results)
    entry = named["precopy-info initial bytes at PRE_COPY entry"]
    assert entry.call.startswith("VFIO_MIG_GET_PRECOPY_INFO(data_fd ")
    assert entry.expected == "initial_bytes > 0" and entry.observed == "initial_bytes 0"
    read = named["precopy read with nothing pending"]
    assert read.verdict == Verdict.FAIL and read.observed == f"{len(Stream.header(bytes(64)))} bytes"
    assert [r.check for r in results if r.verdict == Verdict.FAIL] == [
        "precopy-info initial bytes at PRE_COPY entry", "precopy read with nothing pending"]
    for unjudged in ("precopy-info initial bytes never grow", "precopy-info initial bytes reach zero",
                     "precopy read while data is pending"):
        assert unjudged not in named
    assert named["data-fd saving session continues into STOP_COPY"].verdict == Verdict.PASS


def test_initial_bytes_counted_as_dirty_fails_the_entry() -> None:
    _, checks = bench(PRECOPY, initial_as_dirty=True)
    result = by_name(checks.run())["precopy-info initial bytes at PRE_COPY entry"]
    assert result.verdict == Verdict.FAIL and result.observed == "initial_bytes 0"


def test_initial_bytes_counted_as_dirty_fails_nothing_else() -> None:
    _, checks = bench(PRECOPY, initial_as_dirty=True)
    results = checks.run()
    assert [r.check for r in results if r.verdict == Verdict.FAIL] == [
        "precopy-info initial bytes at PRE_COPY entry"]


@pytest.mark.parametrize(("flags", "arc"), [
    pytest.param(PRECOPY, (S.PRE_COPY, S.STOP_COPY), id="PRE_COPY"),
    pytest.param(FULL, (S.PRE_COPY_P2P, S.STOP_COPY), id="PRE_COPY_P2P"),
])
@pytest.mark.parametrize("leave", ["stay", "error"])
def test_precopy_to_stop_copy_failing_skips_what_follows_it(flags: Flag, arc: tuple[State, State],
                                                           leave: str) -> None:
    after = ["precopy-info after PRE_COPY -> STOP_COPY", "data-fd saving session continues into STOP_COPY"]
    honest = by_name(bench(flags)[1].run())
    assert [c for c in after if honest[c].verdict != Verdict.PASS] == []
    _, checks = bench(flags, fail_arc=(*arc, leave))
    named = by_name(checks.run())
    assert named[f"fsm {arc[0].name}->STOP_COPY"].verdict == Verdict.FAIL
    for check in after:
        result = named[check]
        assert result.verdict == Verdict.SKIP
        assert result.observed == "PRE_COPY -> STOP_COPY failed: EIO"
    assert named["precopy read with nothing pending"].verdict == Verdict.PASS


def test_a_peer_that_does_not_run_after_its_resume_skips_the_restored_state() -> None:
    _, checks = bench(BASIC, view=digest_view(), fail_arc=(S.RESUMING, S.STOP, "stay"))
    named = by_name(checks.run())
    assert named["round-trip stream accepted"].verdict == Verdict.PASS
    runs = named["round-trip device runs"]
    assert runs.verdict == Verdict.FAIL and runs.observed == "EIO, then GET RESUMING"
    restored = named["round-trip restored state"]
    assert restored.verdict == Verdict.SKIP and restored.observed == "the peer did not run after its resume"


def test_device_that_leaves_its_memory_out_fails_the_restored_state() -> None:
    _, checks = bench(BASIC, view=digest_view(), drop_state=True)
    named = by_name(checks.run())
    assert named["round-trip stream accepted"].verdict == Verdict.PASS  # the stream itself is fine
    result = named["round-trip restored state"]
    assert result.verdict == Verdict.FAIL
    assert result.call and result.expected and result.observed and result.expected != result.observed


def test_without_a_view_the_restored_state_is_a_skip() -> None:
    _, checks = bench(BASIC, drop_state=True)
    assert by_name(checks.run())["round-trip restored state"].verdict == Verdict.SKIP


# --- the arcs, by the kernel's trace ----------------------------------------------------


def set_state_times(fake: FakeHostVfio, since: int) -> tuple[float, float]:
    """t0, t1 of the first SET of the device state after transcript entry ``since``."""
    entry = next(e for e in fake.transcript[since:] if e["request"]["op"] == "set_state")
    return entry["answer"]["t0"], entry["answer"]["t1"]


def one_pair(flags: Flag, cur: State, new: State) -> tuple[FakeHostVfio, Conformance, float, float]:
    fake, checks = bench(flags)
    since = len(fake.transcript)
    checks.check_pair(cur, new)
    assert checks.results[-1].verdict == Verdict.PASS
    t0, t1 = set_state_times(fake, since)
    return fake, checks, t0, t1


def calls(fake: FakeHostVfio, t0: float, t1: float, path: list[State], new: State,
          pid: int | None = None, device: str = "5ub7ec7") -> list[KernelCall]:
    """vfio_mig_get_next_state() once per arc of ``path``, inside t0..t1."""
    step = (t1 - t0) / (len(path) + 1)
    return [KernelCall(t0 + step * (i + 1), pid or fake.pid, pid or fake.pid, device, int(s), int(new), 0)
            for i, s in enumerate(path)]


def test_paths_along_the_model_pass() -> None:
    fake, checks, t0, t1 = one_pair(P2P, S.RUNNING, S.STOP)
    checks.judge_paths(calls(fake, t0, t1, [S.RUNNING, S.RUNNING_P2P], S.STOP), "5ub7ec7", fake.pid)
    named = by_name(checks.results)
    assert named["fsm RUNNING->STOP"].verdict == Verdict.PASS
    assert named["fsm paths"].verdict == Verdict.PASS
    assert named["fsm paths"].expected.startswith("1 requests judged")


def test_a_path_off_the_model_fails_that_pair() -> None:
    fake, checks, t0, t1 = one_pair(P2P, S.RUNNING, S.STOP)
    # RUNNING -> STOP in one arc: an arc a P2P device's FSM does not have.
    checks.judge_paths(calls(fake, t0, t1, [S.RUNNING], S.STOP), "5ub7ec7", fake.pid)
    result = by_name(checks.results)["fsm RUNNING->STOP"]
    assert result.verdict == Verdict.FAIL
    assert result.expected == "the arcs RUNNING->RUNNING_P2P->STOP"
    assert result.observed == "the kernel walked RUNNING->STOP"
    assert result.call


def test_calls_of_other_processes_and_devices_are_not_judged() -> None:
    fake, checks, t0, t1 = one_pair(P2P, S.RUNNING, S.STOP)
    others = (calls(fake, t0, t1, [S.RUNNING], S.STOP, pid=1)
              + calls(fake, t0, t1, [S.RUNNING], S.STOP, device="another"))
    checks.judge_paths(others, "5ub7ec7", fake.pid)
    named = by_name(checks.results)
    assert named["fsm RUNNING->STOP"].verdict == Verdict.PASS
    assert named["fsm paths"].verdict == Verdict.SKIP


def test_no_kernel_trace_is_a_skip() -> None:
    fake, checks, _, _ = one_pair(P2P, S.RUNNING, S.STOP)
    checks.judge_paths(None, "5ub7ec7", fake.pid, "no tracefs at /sys/kernel/tracing")
    result = by_name(checks.results)["fsm paths"]
    assert result.verdict == Verdict.SKIP and "no tracefs" in result.observed


@FLAG_SETS
def test_whole_run_judged_by_the_drivers_own_trace(flags: Flag) -> None:
    """The fake's driver asks the kernel's helper before each arc, as mtty does."""
    fake, checks = bench(flags)
    checks.run()
    checks.judge_paths(fake.kernel_calls, "5ub7ec7", fake.pid)
    assert failures(checks.results) == []
    judged = by_name(checks.results)["fsm paths"]
    assert judged.verdict == Verdict.PASS
    # Every accepted request that moves the device is judged; a refused one or cur == new is not.
    moving = [r for r in checks.results if r.check.startswith("fsm ") and r.expected.startswith("ok")
              and len(set(r.check[4:].split("->"))) == 2]
    assert judged.expected == f"{len(moving)} requests judged by their arcs"


def test_whole_run_with_one_arc_skipped_fails_only_that_pair() -> None:
    fake, checks = bench(P2P)
    checks.run()
    trace = fake.kernel_calls
    # Drop the RUNNING_P2P step of every RUNNING -> STOP request: a driver that jumps.
    doctored = [c for i, c in enumerate(trace)
                if not (i and (c.cur, c.new) == (S.RUNNING_P2P, S.STOP)
                        and (trace[i - 1].cur, trace[i - 1].new) == (S.RUNNING, S.STOP))]
    assert len(doctored) < len(trace)
    checks.judge_paths(doctored, "5ub7ec7", fake.pid)
    assert [r.check for r in checks.results if r.verdict == Verdict.FAIL] == ["fsm RUNNING->STOP"]


# --- a host user that stops answering ---------------------------------------------------


def step_starts(flags: Flag) -> tuple[dict[str, int], int]:
    """How many calls the checks make before each step, and in all, on an honest device."""
    fake, checks = bench(flags)
    armed = len(fake.transcript)
    starts: dict[str, int] = {}
    for step, method in zip(STEPS, STEP_METHODS):
        original: Callable[[], None] = getattr(checks, method)

        def wrapped(step: str = step, original: Callable[[], None] = original) -> None:
            starts[step] = len(fake.transcript) - armed
            original()

        setattr(checks, method, wrapped)  # run() looks its steps up on the instance
    checks.run()
    assert list(starts) == STEPS
    return starts, len(fake.transcript) - armed


def test_a_host_user_that_stops_answering_ends_the_run() -> None:
    starts, total = step_starts(FULL)
    ends = [*list(starts.values())[1:], total]
    for (step, first), end in zip(starts.items(), ends):
        assert end > first, f"step {step} makes no call"
        for answers in sorted({first, (first + end) // 2, end - 1}):  # its first, middle and last call
            fake, checks = bench(FULL)
            fake.answers = answers
            results = checks.run()
            ended = [i for i, r in enumerate(results) if r.check.endswith("(run ended)")]
            assert len(ended) == 1, (step, answers)
            last = results[ended[0]]
            assert last.verdict == Verdict.FAIL and last.check == f"{step} (run ended)", (step, answers)
            assert last.call == f"the {step} checks"
            assert "stopped answering" in last.observed and last.expected
            assert failures(results[:ended[0]]) == []
            later = results[ended[0] + 1:]  # never a pass after it: every later step is a skip
            assert [r.check for r in later] == STEPS[STEPS.index(step) + 1:]
            assert all(r.verdict == Verdict.SKIP and r.observed.startswith("not run:") for r in later)
            assert not fake.running
