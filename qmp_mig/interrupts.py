# SPDX-License-Identifier: GPL-2.0-or-later
"""One way to stop, whatever stopped us: Ctrl-C, SIGTERM or SIGHUP.

A CI system cancels a job with SIGTERM and sends SIGKILL a few seconds later
(:data:`GRACE`); a closed terminal sends SIGHUP. Each of them becomes an
:class:`Interrupted` exception in the main thread, so the command unwinds
through the same ``finally`` blocks as Ctrl-C: the Avocado job is interrupted,
testbeds are swept, a lab the command booted goes down.

The first signal interrupts; later ones are noted and ignored, so a second
Ctrl-C cannot cut the clean-up short (every step of it is bounded).

A command that starts test processes also becomes a *subreaper*: a process of
ours that loses its parent (a test process whose Avocado runner was killed)
is handed to us instead of init, and :func:`end_descendants` ends it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable, Iterator
from types import FrameType

# CI's usual time between SIGTERM and SIGKILL (GitLab, Jenkins, systemd's default is 90).
GRACE = 10.0
STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


class Interrupted(KeyboardInterrupt):
    """The command was told to stop by ``signum``; ``at`` is when (monotonic)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.at = time.monotonic()
        super().__init__(self.name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        """What a shell reports for a command that a signal ended: 128 + its number."""
        return 128 + self.signum

    def remaining(self, budget: float) -> float:
        """Seconds left of ``budget`` counted from the signal."""
        return max(0.0, self.at + budget - time.monotonic())


class Stop:
    """What stopped the command, if anything, and whether a stop may interrupt now."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.received: Interrupted | None = None
        self._shielded = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            self.say(f"{signal.Signals(signum).name} received while stopping after "
                     f"{self.received.name}: the clean-up goes on (it is bounded)")
            return
        self.received = Interrupted(signum)
        if self._shielded:
            self.say(f"{self.received.name} received: finishing the clean-up first")
            return
        raise self.received

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """A clean-up step that a signal must not cut in half (it is bounded itself);
        the signal is kept in :attr:`received`."""
        self._shielded = True
        try:
            yield
        finally:
            self._shielded = False


@contextlib.contextmanager
def handle_signals(say: Callable[[str], None]) -> Iterator[Stop]:
    """Turn SIGINT, SIGTERM and SIGHUP into :class:`Interrupted` while inside.

    A signal that was ignored when we started stays ignored: ``nohup`` means
    SIGHUP must not stop us, and a background job of a shell without job
    control is meant to ignore Ctrl-C."""
    stop = Stop(say)
    previous = {s: signal.getsignal(s) for s in STOPPING_SIGNALS}
    for signum, old in previous.items():
        if old is not signal.SIG_IGN:
            signal.signal(signum, stop.handler)
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def interruptible_child() -> None:
    """``preexec_fn`` of a child we stop with SIGINT (Avocado): SIGINT at its default
    even if we were started with it ignored, and SIGTERM when we die (even by
    SIGKILL), so it never outlives us."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to us rather than to init (Linux)."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _parents() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process we can see."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry.name}/stat").read()  # noqa: SIM115 - one read
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def descendants(root: int | None = None) -> list[int]:
    """Living (non-zombie) descendants of ``root`` (default: this process)."""
    root = os.getpid() if root is None else root
    table = _parents()
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, state) in table.items():
            if ppid == parent:
                frontier.append(pid)
                if state != "Z":
                    found.append(pid)
    return found


def _reap() -> None:
    """Collect the exit status of children that ended (orphans handed to us included)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def end_descendants(wait: float, keep: tuple[int, ...] = ()) -> list[int]:
    """Give our remaining descendants ``wait`` seconds to finish (an orphaned test
    process may still be cleaning up), then SIGKILL them. Returns those killed.

    It reaps any child that ended, so call it last, once every child we started
    through ``subprocess`` has been waited for."""
    deadline = time.monotonic() + wait
    while True:
        _reap()
        left = [p for p in descendants() if p not in keep]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.05 if left else 0)
    _reap()
    return left
