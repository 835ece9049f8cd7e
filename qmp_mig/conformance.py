# SPDX-License-Identifier: GPL-2.0-or-later
"""Conformance: a device's migration uAPI v2 checked directly, call by call, with
no QEMU and no guest: the first answer a vendor wants about a new driver.

Every expected answer comes from the model (qmp_mig/fsm.py): which requests a
device with these flags must accept, along which arcs, with or without a new
data_fd, and which it must refuse with EINVAL. The checks, in order:

1. the state machine: every (current, requested) pair, each from a fresh RUNNING;
2. the data fd: STOP_COPY reads to end of stream, MIG_DATA_SIZE is not below what
   was read, VFIO_MIG_GET_PRECOPY_INFO answers only in the PRE_COPY states, its
   initial bytes never grow and reach zero, and a read with nothing pending fails
   with ENOMSG;
3. a round trip: one instance's state written into another is accepted and the
   device runs (for our test devices, with the same state); a truncated or
   corrupted stream is refused;
4. reset and close: VFIO_DEVICE_RESET brings the device to RUNNING from any state
   (ERROR included, where an arc left it there), and a device closed in any state
   is RUNNING when next opened.

Each check is one :class:`Result`: pass, fail, or skip (it could not run, and says
why; a skip is never a pass). A failure names the call, its arguments, and the
answer expected and observed. The arcs each request took are judged from the
kernel's own trace (qmp_mig/kernel_trace.py) where the host has one.
"""

from __future__ import annotations

import contextlib
import enum
import errno
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from . import fsm
from .fsm import Flag, State, as_state, state_text
from .kernel_trace import KernelCall
from .vfio_session import Call, DirectDevice, HostVfioError

S = State
# A value the uAPI does not define: the kernel must refuse it like ERROR.
UNDEFINED_STATE = 8
_PRECOPY_STEPS = 64  # reads in PRE_COPY before giving up on a temporary end of stream


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"  # the check could not run; ``observed`` says why


@dataclass
class Result:
    """One check: ``call`` is the uAPI call it judged, with its arguments."""

    check: str
    verdict: Verdict
    call: str = ""
    expected: str = ""
    observed: str = ""

    def line(self) -> str:
        text = f"{self.verdict.value.upper()} {self.check}"
        if self.verdict != Verdict.PASS:
            text += f": {self.call}: expected {self.expected}; observed {self.observed}"
        return text


class Stuck(RuntimeError):
    """The device cannot be brought back to RUNNING: the checks after this cannot run."""


class Unreachable(RuntimeError):
    """A check's starting state could not be reached (its own check says why)."""


@dataclass
class OwnView:
    """How a device shows its own state, for the round trip (our test devices do):
    ``prepare`` gives a device a state of its own (the subject's and the peer's
    differ) before the subject is saved; ``read``
    gives a device's state as text, ``"saved"`` for the subject after its save,
    ``"restored"`` for the peer after its resume."""

    what: str
    prepare: Callable[[DirectDevice], None]
    read: Callable[[DirectDevice, str], str]


@dataclass
class _Set:
    """A SET of the device state whose arcs the kernel trace will be asked about."""

    result: Result
    device: DirectDevice
    cur: State
    new: State
    t0: float
    t1: float


@dataclass
class _ErrorLeft:
    """A failure that left ``device`` in ERROR, and the calls that made it (from RUNNING),
    so the reset check can bring ERROR about again after the recovery cleared it."""

    how: str
    device: DirectDevice
    again: Callable[[], None]


@dataclass
class Conformance:
    """The checks of one device (the subject) with migration ``flags``; ``peer`` is a
    second instance of it for the round trip."""

    subject: DirectDevice
    flags: Flag
    peer: DirectDevice | None = None
    view: OwnView | None = None
    log: Callable[[str], None] = lambda _line: None
    results: list[Result] = field(default_factory=list)
    _sets: list[_Set] = field(default_factory=list)
    _fds: list[int] = field(default_factory=list)
    _blobs: dict[str, int] = field(default_factory=dict)  # saved stream -> its length
    _errors_left: list[_ErrorLeft] = field(default_factory=list)

    # --- running ------------------------------------------------------------------

    def run(self) -> list[Result]:
        """Every check, in order; a stuck device or a host user that stopped answering
        ends the run, and every check not reached is a skip with the reason."""
        steps: list[tuple[str, Callable[[], None]]] = [
            ("open", self.check_open),
            ("fsm", self.check_fsm),
            ("data-fd", self.check_stop_copy),
            ("precopy", self.check_precopy),
            ("round-trip", self.check_round_trip),
            ("reset", self.check_reset),
            ("close", self.check_close),
        ]
        for index, (name, step) in enumerate(steps):
            try:
                step()
            except (Stuck, HostVfioError) as exc:
                self.fail(f"{name} (run ended)", f"the {name} checks", "the device to answer and return to RUNNING",
                          str(exc))
                for later, _ in steps[index + 1:]:
                    self.skip(later, f"not run: {exc}")
                break
        return self.results

    def add(self, check: str, verdict: Verdict, call: Call | str = "", expected: str = "",
            observed: str = "") -> Result:
        text = call if isinstance(call, str) else f"{call.ioctl}({call.args})"
        result = Result(check, verdict, text, expected, observed)
        self.results.append(result)
        self.log(result.line())
        return result

    def passed(self, check: str, call: Call | str = "", expected: str = "", observed: str = "") -> Result:
        return self.add(check, Verdict.PASS, call, expected, observed)

    def fail(self, check: str, call: Call | str, expected: str, observed: str) -> Result:
        return self.add(check, Verdict.FAIL, call, expected, observed)

    def skip(self, check: str, why: str) -> Result:
        return self.add(check, Verdict.SKIP, "", "", why)

    def expect(self, check: str, call: Call, ok: bool, expected: str, observed: str | None = None) -> bool:
        self.add(check, Verdict.PASS if ok else Verdict.FAIL, call, expected,
                 call.outcome() if observed is None else observed)
        return ok

    # --- moving the device about ----------------------------------------------------

    def state_of(self, device: DirectDevice) -> State | int | None:
        call = device.state()
        return as_state(int(call.value)) if call.ok else None

    def close_fds(self, device: DirectDevice) -> None:
        while self._fds:
            device.close_fd(self._fds.pop())

    def recover(self, device: DirectDevice) -> None:
        """Back to RUNNING with no data fd open: SET RUNNING, else VFIO_DEVICE_RESET,
        else close and reopen the device. :class:`Stuck` if none of them does it."""
        self.close_fds(device)
        tried = []
        for how in ("SET RUNNING", "VFIO_DEVICE_RESET", "close and reopen"):
            if how == "SET RUNNING":
                device.set_state(S.RUNNING)
            elif how == "VFIO_DEVICE_RESET":
                device.reset()
            else:
                device.close()
                device.open()
            state = self.state_of(device)
            if state == S.RUNNING:
                return
            tried.append(f"after {how}: {state_text(state)}")
        raise Stuck(f"{device.name} does not return to RUNNING ({'; '.join(tried)})")

    def saved_stream(self, device: DirectDevice, blob: str) -> int:
        """Save ``device``'s state (RUNNING -> STOP_COPY, read to end, -> STOP) into
        ``blob`` on the host; its length. :class:`Unreachable` if the save fails."""
        if blob in self._blobs:
            return self._blobs[blob]
        enter = device.set_state(S.STOP_COPY)
        if not enter.ok or enter.data_fd < 0:
            self.recover(device)
            raise Unreachable(f"cannot save {device.name}: {enter.describe()}")
        read = device.read_all(enter.data_fd, blob)
        device.close_fd(enter.data_fd)
        if not read.ok or read.answer.get("end") != "eof":
            self.recover(device)
            raise Unreachable(f"cannot save {device.name}: {read.describe()}")
        self.recover(device)
        self._blobs[blob] = int(read.answer["n"])
        return self._blobs[blob]

    def prepare(self, device: DirectDevice, state: State) -> None:
        """Bring ``device`` from RUNNING to ``state``; any data fd is kept to be closed.
        Into RESUMING, its own saved state is written, so that RESUMING can be left."""
        if state == S.RESUMING:
            self.saved_stream(device, f"{device.name}.own")
        if state == S.RUNNING:
            return
        call = device.set_state(state)
        if call.data_fd >= 0:
            self._fds.append(call.data_fd)
        if not call.ok:
            raise Unreachable(call.describe())
        if state == S.RESUMING:
            write = device.write(call.data_fd, f"{device.name}.own")
            if not write.ok or "errno" in write.answer:
                raise Unreachable(f"writing its own saved state: {write.describe()}")
        now = self.state_of(device)
        if now != state:
            raise Unreachable(f"{call.describe()}, then GET answers {state_text(now)}")

    def reached(self, check: str, device: DirectDevice, state: State) -> bool:
        """:meth:`prepare`, or ``check`` skipped with the reason and the device recovered."""
        try:
            self.prepare(device, state)
        except Unreachable as exc:
            self.skip(check, f"could not reach {state.name}: {exc}")
            self.recover(device)
            return False
        return True

    def note_error(self, how: str, device: DirectDevice, again: Callable[[], None]) -> None:
        """Remember that ``how`` left ``device`` in ERROR (the reset check needs one)."""
        if self.state_of(device) == S.ERROR:
            self._errors_left.append(_ErrorLeft(how, device, again))

    # --- 0. opening -------------------------------------------------------------------

    def check_open(self) -> None:
        flags = self.subject.flags()
        self.expect("flags", flags, flags.ok and flags.value == int(self.flags),
                    f"ok, value {self.flags.describe()} (the flags the run was given)",
                    flags.outcome() if not flags.ok else Flag(flags.value).describe())
        state = self.subject.state()
        self.expect("state at open", state, state.ok and state.value == S.RUNNING, "ok, RUNNING")
        info = self.subject.info()
        # The uAPI's only way out of ERROR and out of a RESUMING session: a migration
        # device must offer it. The reset checks call it either way.
        self.expect("reset offered", info, bool(info.ok and info.answer.get("reset")),
                    "VFIO_DEVICE_FLAGS_RESET set", f"flags {info.answer.get('flags')}" if info.ok else None)
        if state.value != S.RUNNING:
            self.recover(self.subject)

    # --- 1. the state machine ---------------------------------------------------------

    def check_fsm(self) -> None:
        requests: list[State | int] = [*State, UNDEFINED_STATE]
        for cur in fsm.supported_states(self.flags):
            for new in requests:
                self.check_pair(cur, new)

    def check_pair(self, cur: State, new: State | int) -> None:
        device = self.subject
        check = f"fsm {cur.name}->{state_text(as_state(new))}"
        if not self.reached(check, device, cur):
            return
        call = device.set_state(new)
        if call.data_fd >= 0:
            self._fds.append(call.data_fd)
        after = self.state_of(device)
        try:
            if not isinstance(new, State):
                raise fsm.InvalidTransition("not a state of the uAPI")
            walk = fsm.kernel_walk(cur, new, self.flags)
        except fsm.InvalidTransition:
            self.judge_refusal(check, call, cur, after)
        else:
            assert isinstance(new, State)
            wants_fd = fsm.returns_data_fd(cur, new, self.flags)
            expected = f"ok, {'a new data_fd' if wants_fd else 'no data_fd'}, then GET {new.name}"
            observed = f"{call.outcome()}, then GET {state_text(after)}"
            right = call.ok and (call.data_fd >= 0) == wants_fd and after == new
            result = self.add(check, Verdict.PASS if right else Verdict.FAIL, call, expected, observed)
            if walk:
                self._sets.append(_Set(result, device, cur, new, call.answer.get("t0", 0.0),
                                       call.answer.get("t1", 0.0)))
            if not call.ok:
                def again() -> None:
                    self.prepare(device, cur)
                    device.set_state(new)

                self.note_error(check, device, again)
        self.recover(device)

    def judge_refusal(self, check: str, call: Call, cur: State, after: State | int | None) -> None:
        expected = f"EINVAL, then GET {cur.name}"
        observed = f"{call.outcome()}, then GET {state_text(after)}"
        right = call.errno == errno.EINVAL and after == cur
        self.add(check, Verdict.PASS if right else Verdict.FAIL, call, expected, observed)

    def judge_paths(self, calls: Sequence[KernelCall] | None, kernel_name: str, pid: int,
                    unavailable: str = "") -> None:
        """Hold each accepted request's arcs, as the kernel traced them, to the model's walk."""
        if calls is None:
            self.skip("fsm paths", f"the kernel's trace is not available: {unavailable}")
            return
        mine = [c for c in calls if c.tgid == pid and c.device == kernel_name]
        judged = 0
        for entry in self._sets:
            during = [c for c in mine if entry.t0 <= c.time <= entry.t1]
            expected = [entry.cur, *(b for _, b in fsm.kernel_walk(entry.cur, entry.new, self.flags))]
            if not during:
                continue  # a driver that does not ask vfio_mig_get_next_state: nothing to judge
            judged += 1
            observed = [as_state(c.cur) for c in during] + [entry.new]
            if observed != expected and entry.result.verdict == Verdict.PASS:
                entry.result.verdict = Verdict.FAIL
                entry.result.expected = "the arcs " + "->".join(s.name for s in expected)
                entry.result.observed = "the kernel walked " + "->".join(state_text(s) for s in observed)
                self.log(entry.result.line())
        if judged:
            self.passed("fsm paths", "kernel trace of vfio_mig_get_next_state",
                        f"{judged} requests judged by their arcs", "")
        else:
            self.skip("fsm paths", "the kernel trace shows no vfio_mig_get_next_state call of this "
                      "device: its driver does not walk the FSM through the kernel's helper")

    # --- 2. the data fd -----------------------------------------------------------------

    def check_stop_copy(self) -> None:
        device = self.subject
        enter = device.set_state(S.STOP_COPY)
        if not enter.ok or enter.data_fd < 0:
            self.skip("data-fd STOP_COPY", f"could not enter STOP_COPY: {enter.describe()}")
            self.recover(device)
            return
        self._fds.append(enter.data_fd)
        size = device.data_size()
        read = device.read_all(enter.data_fd, "stop-copy")
        end = read.answer.get("end")
        self.expect("data-fd STOP_COPY reads to end of stream", read, read.ok and end == "eof",
                    "read() returns data, then 0 (end of stream; never ENOMSG in STOP_COPY)",
                    f"{read.answer.get('n')} bytes, then {'0' if end == 'eof' else end}")
        again = device.read(enter.data_fd, 4096)
        if read.ok and end == "eof":
            self.expect("data-fd end of stream is permanent", again, again.ok and again.answer.get("n") == 0,
                        "read() after the end returns 0 again")
        if size.errno == errno.ENOTTY:
            self.skip("MIG_DATA_SIZE", "the device does not offer VFIO_DEVICE_FEATURE_MIG_DATA_SIZE (ENOTTY)")
        elif read.ok:
            n = int(read.answer["n"])
            self.expect("MIG_DATA_SIZE", size, size.ok and size.value >= n,
                        f"ok, stop_copy_length >= {n} (the bytes then read)")
        self.check_precopy_info_refused(f"in {S.STOP_COPY.name}", enter.data_fd)
        self.recover(device)
        resume = device.set_state(S.RESUMING)
        if resume.ok and resume.data_fd >= 0:
            self._fds.append(resume.data_fd)
            # The resuming fd is not a saving session: any error will do (ENOTTY where
            # its file has no ioctl at all).
            call = device.precopy_info(resume.data_fd)
            self.expect("precopy-info in RESUMING", call, not call.ok, "an error (not a saving session)")
        else:
            self.skip("precopy-info in RESUMING", f"could not enter RESUMING: {resume.describe()}")
        # RESUMING with nothing written cannot be left with STOP: recover() resets.
        self.recover(device)

    def check_precopy_info_refused(self, where: str, fd: int) -> None:
        call = self.subject.precopy_info(fd)
        if Flag.PRE_COPY in self.flags:
            self.expect(f"precopy-info {where}", call, call.errno == errno.EINVAL,
                        "EINVAL (valid only in the PRE_COPY states)")
        else:
            self.expect(f"precopy-info {where}", call, not call.ok,
                        "an error (the device has no PRE_COPY)")

    def check_precopy(self) -> None:
        if Flag.PRE_COPY not in self.flags:
            self.skip("precopy", "the device does not offer PRE_COPY")
            return
        device = self.subject
        enter = device.set_state(S.PRE_COPY)
        if not enter.ok or enter.data_fd < 0:
            self.skip("precopy", f"could not enter PRE_COPY: {enter.describe()}")
            self.recover(device)
            return
        fd = enter.data_fd
        self._fds.append(fd)
        info = device.precopy_info(fd)
        if not self.expect("precopy-info in PRE_COPY", info, info.ok, "ok"):
            self.recover(device)
            return
        self.read_precopy(fd, info)
        if Flag.P2P in self.flags:
            device.set_state(S.PRE_COPY_P2P)
            info = device.precopy_info(fd)
            self.expect("precopy-info in PRE_COPY_P2P", info, info.ok, "ok")
        stop_copy = device.set_state(S.STOP_COPY)
        if not stop_copy.ok:
            for check in ("precopy-info after PRE_COPY -> STOP_COPY", "data-fd saving session continues into STOP_COPY"):
                self.skip(check, f"PRE_COPY -> STOP_COPY failed: {stop_copy.outcome()}")
        else:
            self.check_precopy_info_refused("after PRE_COPY -> STOP_COPY", fd)
            rest = device.read_all(fd, "precopy-rest")
            self.expect("data-fd saving session continues into STOP_COPY", rest,
                        rest.ok and rest.answer.get("end") == "eof",
                        "the PRE_COPY data_fd reads on to end of stream")
        self.recover(device)

    def read_precopy(self, fd: int, first: Call) -> None:
        """Read in PRE_COPY, asking PRECOPY_INFO after every read: initial bytes never
        grow, are zero once that much was read, and with nothing pending read() fails
        with ENOMSG (a temporary end of stream)."""
        device = self.subject
        initial0 = int(first.answer["initial_bytes"])
        # "This field should have a non-zero initial value and decrease as migration
        # data is read": with none, the checks below would pass for nothing.
        entry_ok = self.expect("precopy-info initial bytes at PRE_COPY entry", first, initial0 > 0,
                               "initial_bytes > 0", f"initial_bytes {initial0}")
        if not entry_ok and int(first.answer["dirty_bytes"]) == 0:  # nothing pending at all
            empty = device.read(fd, 4096)
            self.expect("precopy read with nothing pending", empty, empty.errno == errno.ENOMSG,
                        "ENOMSG (a temporary end of stream)",
                        f"{empty.answer.get('n')} bytes" if empty.ok else empty.outcome())
            return
        info, total = first, 0
        chunk = max(1, min(initial0 // 3 or 4096, 1 << 20))
        grew = not_zero = None
        for _ in range(_PRECOPY_STEPS):
            pending = int(info.answer["initial_bytes"]) + int(info.answer["dirty_bytes"])
            if pending == 0:
                break
            read = device.read(fd, chunk, blob="precopy")
            if not read.ok or read.answer.get("n") == 0:
                self.fail("precopy read while data is pending", read,
                          f"data ({pending} bytes pending by PRECOPY_INFO)",
                          "0 (end of stream)" if read.ok else read.outcome())
                break
            total += int(read.answer["n"])
            before, info = info, device.precopy_info(fd)
            if not info.ok:
                self.fail("precopy-info in PRE_COPY", info, "ok", info.outcome())
                return
            if grew is None and info.answer["initial_bytes"] > before.answer["initial_bytes"]:
                grew = self.fail("precopy-info initial bytes never grow", info,
                                 f"initial_bytes <= {before.answer['initial_bytes']}",
                                 f"initial_bytes {info.answer['initial_bytes']}")
            if not_zero is None and total >= initial0 and info.answer["initial_bytes"] != 0:
                not_zero = self.fail("precopy-info initial bytes reach zero", info,
                                     f"initial_bytes 0 once {initial0} bytes were read",
                                     f"initial_bytes {info.answer['initial_bytes']} after {total} bytes")
        else:
            self.skip("precopy read with nothing pending", f"PRECOPY_INFO still reported data pending "
                      f"after {_PRECOPY_STEPS} reads ({total} bytes)")
            return
        if grew is None:
            self.passed("precopy-info initial bytes never grow", "VFIO_MIG_GET_PRECOPY_INFO")
        if not_zero is None and total >= initial0:
            self.passed("precopy-info initial bytes reach zero", "VFIO_MIG_GET_PRECOPY_INFO")
        elif not_zero is None:
            self.fail("precopy-info initial bytes reach zero", info,
                      f"{initial0} initial bytes to read before nothing is pending",
                      f"nothing pending after {total} bytes")
        if info.ok and int(info.answer["initial_bytes"]) + int(info.answer["dirty_bytes"]) == 0:
            empty = device.read(fd, 4096)
            self.expect("precopy read with nothing pending", empty, empty.errno == errno.ENOMSG,
                        "ENOMSG (a temporary end of stream)",
                        f"{empty.answer.get('n')} bytes" if empty.ok else empty.outcome())

    # --- 3. a round trip --------------------------------------------------------------

    def check_round_trip(self) -> None:
        if self.peer is None:
            for check in ("round-trip", "round-trip truncated", "round-trip corrupted"):
                self.skip(check, "needs a second instance of the device")
            return
        source, target = self.subject, self.peer
        if self.view is not None:  # each its own content, so a state left behind shows
            self.view.prepare(source)
            self.view.prepare(target)
        try:
            length = self.saved_stream(source, "round-trip")
        except Unreachable as exc:
            self.fail("round-trip save", "VFIO_DEVICE_FEATURE SET MIG_DEVICE_STATE(device_state=STOP_COPY)",
                      "the subject's state saved to end of stream", str(exc))
            return
        saved_view = self.view.read(source, "saved") if self.view is not None else ""
        write = self.resume(target, "round-trip")
        if write is None:
            return
        accepted = write.ok and "errno" not in write.answer and write.answer.get("written") == length
        self.expect("round-trip stream accepted", write, accepted, f"all {length} bytes taken")
        leave = target.set_state(S.RUNNING)
        after = self.state_of(target)
        self.expect("round-trip device runs", leave, leave.ok and after == S.RUNNING,
                    "ok (RESUMING -> STOP -> ... -> RUNNING), then GET RUNNING",
                    f"{leave.outcome()}, then GET {state_text(after)}")
        if not leave.ok:
            self.note_error("the round trip's resume", target, lambda: self.resume_quietly(target, S.RUNNING))
        if self.view is None:
            self.skip("round-trip restored state", "the device shows no view of its own state")
        elif not leave.ok:
            self.skip("round-trip restored state", "the peer did not run after its resume")
        else:
            restored = self.view.read(target, "restored")
            self.add("round-trip restored state", Verdict.PASS if restored == saved_view else Verdict.FAIL,
                     f"{self.view.what} of the peer", saved_view, restored)
        self.recover(target)
        if length < 3:
            for check in ("round-trip truncated", "round-trip corrupted"):
                self.skip(check, f"the saved stream is {length} bytes")
            return
        self.check_refused("round-trip truncated stream refused", target, end=length // 2)
        # Apart: a driver that checks only its header must not pass for one that checks
        # the state it loads ("incomplete, inconsistent, or otherwise invalid").
        self.check_refused("round-trip corrupted header refused", target, flip=[0])
        self.check_refused("round-trip corrupted payload refused", target, flip=payload_flips(length))

    def resume(self, device: DirectDevice, blob: str, end: int | None = None,
               flip: Sequence[int] = ()) -> Call | None:
        enter = device.set_state(S.RESUMING)
        if not enter.ok or enter.data_fd < 0:
            self.fail("round-trip enter RESUMING", enter, "ok, a new data_fd", enter.outcome())
            self.recover(device)
            return None
        self._fds.append(enter.data_fd)
        return device.write(enter.data_fd, blob, end=end, flip=flip)

    def resume_quietly(self, device: DirectDevice, then: State, end: int | None = None,
                       flip: Sequence[int] = ()) -> None:
        """RESUMING, the round trip's stream written, then a request of ``then``,
        judging nothing: the way to re-create a failure into ERROR."""
        enter = device.set_state(S.RESUMING)
        if enter.data_fd >= 0:
            self._fds.append(enter.data_fd)
            device.write(enter.data_fd, "round-trip", end=end, flip=flip)
        device.set_state(then)

    def check_refused(self, check: str, device: DirectDevice, end: int | None = None,
                      flip: Sequence[int] = ()) -> None:
        write = self.resume(device, "round-trip", end=end, flip=flip)
        if write is None:
            return
        if not write.ok or "errno" in write.answer:
            self.passed(check, write, "write() or RESUMING -> STOP fails", write.outcome())
        else:
            leave = device.set_state(S.STOP)
            self.expect(check, leave, not leave.ok, "write() or RESUMING -> STOP fails",
                        f"write {write.outcome()}; SET STOP {leave.outcome()}")
            if not leave.ok:
                self.note_error(check, device, lambda: self.resume_quietly(device, S.STOP, end, flip))
        self.recover(device)

    # --- 4. reset and close -----------------------------------------------------------

    def check_reset(self) -> None:
        for left in self._errors_left[:1]:
            self.reset_from(f"reset from ERROR (left by {left.how})", left.device, None)
        if not self._errors_left:
            self.skip("reset from ERROR", "no failed arc left the device in ERROR")
        for state in (S.STOP, S.STOP_COPY, S.RESUMING, S.PRE_COPY):
            if fsm.supports(self.flags, state):
                self.reset_from(f"reset in {state.name}", self.subject, state)

    def reset_from(self, check: str, device: DirectDevice, state: State | None) -> None:
        if state is not None:
            if not self.reached(check, device, state):
                return
        elif not self.recreate_error(self._errors_left[0]):  # the earlier recovery cleared it
            self.skip(check, "the failure that left ERROR did not happen again")
            return
        reset = device.reset()
        after = self.state_of(device)
        self.expect(check, reset, reset.ok and after == S.RUNNING, "ok, then GET RUNNING",
                    f"{reset.outcome()}, then GET {state_text(after)}")
        self.recover(device)

    def recreate_error(self, left: _ErrorLeft) -> bool:
        with contextlib.suppress(Unreachable):
            left.again()
        if self.state_of(left.device) == S.ERROR:
            return True
        self.recover(left.device)
        return False

    def check_close(self) -> None:
        # RESUMING last: a driver that keeps a stale RESUMING may not survive being
        # asked to leave it (the kernel's mtty sample dereferences its freed resume file).
        order = sorted(fsm.supported_states(self.flags), key=lambda s: s == S.RESUMING)
        for index, state in enumerate(order):
            if state == S.RUNNING:
                continue
            check = f"close in {state.name}"
            device = self.subject
            if not self.reached(check, device, state):
                continue
            self.close_fds(device)
            device.close()
            device.open()
            call = device.state()
            self.expect(check, call, call.ok and call.value == S.RUNNING,
                        "RUNNING at the next open (a closed device forgets its migration state)",
                        f"GET answers {state_text(as_state(call.value))}" if call.ok else call.outcome())
            if call.ok and call.value == S.RUNNING:
                continue
            # A stale state is not driven any further: only a reset may clear it.
            device.reset()
            if self.state_of(device) != S.RUNNING:
                for later in order[index + 1:]:
                    if later != S.RUNNING:
                        self.skip(f"close in {later.name}", f"the device kept {state.name} across a close "
                                  "and VFIO_DEVICE_RESET did not clear it")
                return


def payload_flips(length: int) -> list[int]:
    """Where a stream is corrupted past its header: its middle and its last byte."""
    return sorted({length // 2, length - 1})


# --- results as data ------------------------------------------------------------------


@dataclass
class DeviceReport:
    """The checks of one device, as written to ``conformance.json``."""

    device: str
    flags: str
    seconds: float  # the whole run: the testbed, the devices (binding them), the checks
    results: list[Result]
    checks_seconds: float = 0.0  # the calls of the checks alone

    def counts(self) -> dict[Verdict, int]:
        return {v: sum(1 for r in self.results if r.verdict == v) for v in Verdict}

    def failures(self) -> list[Result]:
        return [r for r in self.results if r.verdict == Verdict.FAIL]

    def as_json(self) -> dict[str, Any]:
        return {"device": self.device, "flags": self.flags, "seconds": round(self.seconds, 2),
                "checks_seconds": round(self.checks_seconds, 2),
                "results": [{**asdict(r), "verdict": r.verdict.value} for r in self.results]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceReport:
        results = [Result(**{**r, "verdict": Verdict(r["verdict"])}) for r in data["results"]]
        return cls(data["device"], data["flags"], float(data["seconds"]), results,
                   float(data.get("checks_seconds", 0.0)))


def failed_checks(results: Iterable[Result]) -> list[str]:
    return [r.check for r in results if r.verdict == Verdict.FAIL]
