# SPDX-License-Identifier: GPL-2.0-or-later
"""A host under test that stopped answering, said once for the whole run.

When the lab VM dies or a remote host drops off, every test after that point
would fail with its own socket error. Instead the first test that finds its
host gone records the loss in the run's directory (``host-lost.json``: which
host, when it last answered, which test, what it was doing), fails with that
sentence, and every later test of the run is cancelled with it: not run, and
why. ``qmp-mig run`` prints the sentence once under its summary.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .hosts import HostLost

MARKER = "host-lost.json"


class HostStoppedAnswering(RuntimeError):
    """A test's error when its host under test stopped answering: the loss's sentence."""


@dataclass(frozen=True)
class HostLoss:
    host: str
    cause: str
    last_answer: float | None  # wall clock; None: it never answered
    noticed: float
    test: str
    doing: str

    def sentence(self) -> str:
        def clock(t: float) -> str:
            return time.strftime("%H:%M:%S", time.localtime(t))

        since = f"since {clock(self.last_answer)}" if self.last_answer else "from the start"
        return (f"host under test {self.host} stopped answering ({since}; noticed at "
                f"{clock(self.noticed)}) while {self.test} was {self.doing}: {self.cause}")


def run_directory() -> Path | None:
    """The directory of the `qmp-mig run` this test belongs to, if any."""
    value = os.environ.get("QMP_MIG_RUN_DIR")
    return Path(value) if value else None


def record(lost: HostLost, test: str, doing: str) -> HostLoss:
    """The loss as this test saw it; written for the run unless an earlier test did."""
    loss = HostLoss(lost.host, lost.cause, lost.last_answer, lost.noticed, test, doing)
    directory = run_directory()
    if directory is not None:
        try:
            with (directory / MARKER).open("x") as out:  # the first test to see it says it
                json.dump(asdict(loss), out)
        except FileExistsError:
            pass
    return loss


def host_lost(directory: Path | None = None) -> HostLoss | None:
    """The loss recorded in the run's directory, if a test recorded one."""
    directory = directory if directory is not None else run_directory()
    if directory is None:
        return None
    try:
        return HostLoss(**json.loads((directory / MARKER).read_text()))
    except (OSError, ValueError, TypeError):
        return None
