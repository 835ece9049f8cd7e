# SPDX-License-Identifier: GPL-2.0-or-later
"""Stopping on signals, with real signals, real child processes and a real Avocado job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from qmp_mig import host_loss, leftovers
from qmp_mig.hosts import HostLost
from qmp_mig.interrupts import (
    Interrupted,
    become_subreaper,
    descendants,
    end_descendants,
    handle_signals,
)
from qmp_mig.runner import _run_job


def _signal_soon(signum: int, delay: float = 0.2) -> None:
    threading.Timer(delay, os.kill, (os.getpid(), signum)).start()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_each_stopping_signal_becomes_interrupted(signum: int) -> None:
    with handle_signals(lambda _: None) as stop, pytest.raises(Interrupted) as caught:
        _signal_soon(signum)
        time.sleep(5)
    assert caught.value.signum == signum and stop.received is caught.value
    assert caught.value.exit_status == 128 + signum
    assert signal.getsignal(signum) is not stop.handler  # put back on the way out


def test_a_shielded_clean_up_finishes_and_keeps_the_signal() -> None:
    said: list[str] = []
    with handle_signals(said.append) as stop:
        with stop.shielded():
            _signal_soon(signal.SIGTERM, 0.05)
            time.sleep(0.5)  # not cut short
        assert stop.received is not None and stop.received.name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGHUP)  # a second signal is noted, never raised
        time.sleep(0.1)
    assert said == ["SIGTERM received: finishing the clean-up first",
                    "SIGHUP received while stopping after SIGTERM: the clean-up goes on (it is bounded)"]


def test_an_ignored_signal_stays_ignored() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with handle_signals(lambda _: None) as stop:
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.1)
            assert stop.received is None
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_orphaned_grandchildren_are_ours_to_end() -> None:
    """A process whose parent died comes back to a subreaper and is ended by it."""
    script = ("import subprocess as s; p = s.Popen(['sleep', '60'], stdout=s.DEVNULL, stderr=s.DEVNULL); "
              "print(p.pid, flush=True)")
    assert become_subreaper()
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    orphan = int(child.stdout)  # its parent has exited
    assert orphan in descendants()
    assert end_descendants(wait=0.2) == [orphan]
    assert orphan not in descendants()
    assert not Path(f"/proc/{orphan}").exists()  # reaped, not left a zombie


def test_an_interrupted_avocado_job_keeps_results_and_leaves_no_process(tmp_path: Path) -> None:
    """Avocado's own interrupt, driven by a SIGTERM to us: the running test is
    interrupted, the finished one keeps its result, the job writes results.json,
    and no process of the job outlives it."""
    test = tmp_path / "test_slow.py"
    test.write_text(textwrap.dedent(f"""
        import time
        from avocado import Test

        class Slow(Test):
            def test_first(self):
                pass

            def test_slow(self):
                open({str(tmp_path / 'started')!r}, 'w').close()
                time.sleep(120)
    """))
    argv = [sys.executable, "-m", "avocado", "run", "--job-results-dir", str(tmp_path / "results"),
            "--max-parallel-tasks", "1", f"{test}:Slow.test_first", f"{test}:Slow.test_slow"]

    def interrupt_when_started() -> None:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=interrupt_when_started, daemon=True).start()
    with handle_signals(lambda _: None), open(os.devnull, "w") as quiet:
        returncode, interrupted = _run_job(argv, dict(os.environ), Console(file=quiet))
    assert interrupted is not None and interrupted.name == "SIGTERM"
    assert returncode == 8  # Avocado's "job interrupted"
    (job,) = (tmp_path / "results").glob("job-*")
    results = json.loads((job / "results.json").read_text())
    statuses = {t["name"].rsplit(".", 1)[-1]: t["status"] for t in results["tests"]}
    assert statuses == {"test_first": "PASS", "test_slow": "INTERRUPTED"}, statuses
    assert end_descendants(wait=5.0) == []


def test_the_first_test_to_lose_the_host_says_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QMP_MIG_RUN_DIR", str(tmp_path))
    first = HostLost("lab", "its SSH connection closed", last_answer=time.time() - 5)
    loss = host_loss.record(first, "Failures.test_cancel_active", 'at "migration started"')
    host_loss.record(HostLost("lab", "SSH connection failed", None), "Topologies.test_two_devices", "setting up")
    recorded = host_loss.host_lost()
    assert recorded == loss
    assert recorded.sentence().startswith("host under test lab stopped answering (since ")
    assert recorded.sentence().endswith(
        'while Failures.test_cancel_active was at "migration started": its SSH connection closed')


def test_a_run_killed_before_its_clean_up_is_found_by_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QMP_MIG_CACHE", str(tmp_path))
    config = tmp_path / "host.toml"
    leftovers.record("mine-1", [config])
    assert leftovers.unfinished() == []  # its run (this process) is still running
    # The same record from a process that has ended.
    ended = subprocess.run([sys.executable, "-c", f"""if True:
        import os, sys; sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        os.environ["QMP_MIG_CACHE"] = {str(tmp_path)!r}
        from pathlib import Path
        from qmp_mig import leftovers
        leftovers.record("theirs-1", [Path({str(config)!r})])"""], check=True)
    assert ended.returncode == 0
    assert leftovers.unfinished() == [("theirs-1", config)]
    leftovers.finished("theirs-1")
    assert leftovers.unfinished() == []
    leftovers.finished("mine-1")
    assert leftovers.unfinished() == []
