# SPDX-License-Identifier: GPL-2.0-or-later
"""The runner: which Avocado command each part of a suite becomes, and the run's exit
status as Avocado's statuses OR-ed (with a fake `avocado`, a tiny script)."""

from __future__ import annotations

import io
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from qmp_mig import runner
from qmp_mig.benchmark import last_suite_time
from qmp_mig.images import REPO
from qmp_mig.runner import SUITES, Part, RunError, avocado_command, run_suite, unresolved

AVOCADO_RUN = [sys.executable, "-m", "avocado", "run"]


def _options(command: list[str]) -> list[str]:
    """What comes before the first test (Avocado's options)."""
    tests = str(REPO / "avocado_tests") + "/"
    return command[:next(i for i, word in enumerate(command) if i >= 4 and word.startswith(tests))]


def _check_options(command: list[str], results: Path, config: Path) -> None:
    options = _options(command)
    assert options[:4] == AVOCADO_RUN
    assert options[options.index("--job-results-dir") + 1] == str(results)
    assert options[options.index("--max-parallel-tasks") + 1] == "1"  # one QEMU pair at a time
    assert str(config) in options  # the host configuration reaches the tests


def test_the_suites_are_the_documented_ones() -> None:
    assert {"default", "full", "nightly", "detection"} <= set(SUITES)
    assert all(SUITES[name] for name in SUITES)


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_test_and_variants_file_a_suite_names_exists(suite: str) -> None:
    """A typo in SUITES would make Avocado skip the test silently: every name resolves."""
    assert unresolved(suite) == []


def test_a_suite_naming_a_missing_test_is_refused_before_anything_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SUITES, "typo", (Part(("avocado_tests/test_failures.py:Failures.test_cancel_activ",
                                               "avocado_tests/test_nothing.py")),))
    with pytest.raises(RunError, match=r"suite 'typo' names tests that do not exist: "
                                       r"avocado_tests/test_failures.py:Failures.test_cancel_activ: no test "
                                       r"Failures.test_cancel_activ in avocado_tests/test_failures.py; "
                                       r"avocado_tests/test_nothing.py: no file avocado_tests/test_nothing.py"):
        run_suite("typo", tmp_path / "host.toml", tmp_path / "results", Console(file=io.StringIO()), "r")
    assert not (tmp_path / "results").exists()


def test_command_for_a_part_with_variants(tmp_path: Path) -> None:
    config = tmp_path / "host.toml"
    part = Part(("avocado_tests/test_vfio_migration.py",), ("avocado_tests/variants/default.yaml",))
    command = avocado_command(part, tmp_path, config)
    _check_options(command, tmp_path, config)
    assert command[len(_options(command)):] == [
        str(REPO / "avocado_tests/test_vfio_migration.py"),
        "-m", str(REPO / "avocado_tests/variants/default.yaml"),  # last: -m takes every argument after it
    ]


def test_a_kind_file_goes_after_the_matrix_and_every_suite_names_real_files(tmp_path: Path) -> None:
    part = Part(("avocado_tests/test_vfio_migration.py",),
                ("avocado_tests/variants/default.yaml", "avocado_tests/variants/pci.yaml"))
    command = avocado_command(part, tmp_path, tmp_path / "host.toml")
    assert command[-3:] == ["-m", str(REPO / "avocado_tests/variants/default.yaml"),
                            str(REPO / "avocado_tests/variants/pci.yaml")]
    for suite in SUITES:
        assert unresolved(suite) == [], suite
    # Each scenario of `full` runs on both device kinds and both guest kinds; each fault
    # of `detection` on both device kinds and the micro guest, and of `detection-all` on both.
    def kinds(part: Part) -> tuple[str, str]:
        device = next(v for v in part.variants if v.endswith(("mdev.yaml", "pci.yaml")))
        return Path(device).stem, "micro" if any(v.endswith("micro.yaml") for v in part.variants) else "linux"

    for suite, test, guests in (("full", "avocado_tests/test_device.py", ("linux", "micro")),
                                ("detection", "avocado_tests/test_detection.py", ("micro",)),
                                ("detection-all", "avocado_tests/test_detection.py", ("linux", "micro"))):
        for device in ("mdev", "pci"):
            for guest in guests:
                tests = {t for part in SUITES[suite] if kinds(part) == (device, guest) for t in part.tests}
                assert test in tests, (suite, device, guest)


def test_command_for_a_part_without_variants(tmp_path: Path) -> None:
    config = tmp_path / "host.toml"
    tests = ("avocado_tests/test_failures.py:Failures.test_cancel_active", "avocado_tests/test_reset.py")
    command = avocado_command(Part(tests), tmp_path, config)
    _check_options(command, tmp_path, config)
    assert command[len(_options(command)):] == [str(REPO / t) for t in tests]
    assert "-m" not in command[4:]


def test_an_unknown_suite_is_refused_before_anything_runs(tmp_path: Path) -> None:
    results = tmp_path / "results"
    with pytest.raises(RunError, match=r"unknown suite 'weekly'; available: default"):
        run_suite("weekly", tmp_path / "host.toml", results, Console(file=io.StringIO()), "r1")
    assert not results.exists()


# A stand-in for `python -m avocado run`, given the runner's own arguments for it: makes a
# job directory under --job-results-dir with a results.json (unless the outcome says not
# to), keeping its arguments and environment there, and exits with the outcome's status.
FAKE_AVOCADO = textwrap.dedent("""
    import json, os, pathlib, sys
    outcomes, arguments = json.loads(pathlib.Path(sys.argv[1]).read_text()), sys.argv[2:]
    results = pathlib.Path(arguments[arguments.index("--job-results-dir") + 1])
    index = len(list(results.glob("job-*")))
    status, write = outcomes[index]
    job = results / f"job-{index:02d}"
    job.mkdir()
    env = {k: os.environ.get(k) for k in ("QMP_MIG_RUN_ID", "QMP_MIG_RUN_DIR")}
    if write:
        (job / "results.json").write_text(json.dumps({"tests": [], "env": env, "arguments": arguments}))
    print(f"JOB ID : {job.name}")
    sys.exit(status)
""")


def _fake_suite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *outcomes: tuple[int, bool]) -> None:
    """Suite 'fake': one part per (exit status, writes results.json), each run by the
    runner's own command with FAKE_AVOCADO in place of Avocado."""
    monkeypatch.setitem(SUITES, "fake", tuple(
        Part(("avocado_tests/test_reset.py",), () if i % 2 else ("avocado_tests/variants/default.yaml",))
        for i in range(len(outcomes))))
    control = tmp_path / "outcomes.json"
    control.write_text(json.dumps(outcomes))
    real = runner.avocado_command

    def command(*args: Any, **kwargs: Any) -> list[str]:
        argv = real(*args, **kwargs)
        assert argv[:4] == AVOCADO_RUN
        return [sys.executable, "-c", FAKE_AVOCADO, str(control), *argv[4:]]

    monkeypatch.setattr(runner, "avocado_command", command)


@pytest.mark.parametrize(("statuses", "expected"), [
    ((0, 0), 0),
    ((1, 0), 1),  # tests failed in the first job
    ((0, 2), 2),  # the second job failed
    ((1, 2), 3),
    ((1, 1), 1),
    ((4, 8, 1), 13),  # Avocado failed, a job interrupted, tests failed
])
def test_the_exit_status_is_avocados_statuses_ored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, statuses: tuple[int, ...], expected: int,
) -> None:
    _fake_suite(monkeypatch, tmp_path, *((s, True) for s in statuses))
    out = io.StringIO()
    results, config = tmp_path / "results", tmp_path / "host.toml"
    run = run_suite("fake", config, results, Console(file=out, width=200), "run-7")
    assert run.status == expected and run.interrupted is None
    assert [job.name for job in run.jobs] == [f"job-{i:02d}" for i in range(len(statuses))]
    # Every part runs, whatever the one before it returned, with the run's environment.
    for job in run.jobs:
        recorded = json.loads((job / "results.json").read_text())
        assert recorded["env"] == {"QMP_MIG_RUN_ID": "run-7", "QMP_MIG_RUN_DIR": str(results)}
        assert str(config) in recorded["arguments"]
    assert "avocado JOB ID : job-00" in out.getvalue()


def test_a_job_without_results_is_a_run_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_suite(monkeypatch, tmp_path, (0, True), (2, False), (0, True))
    with pytest.raises(RunError, match=r"avocado exited 2 without a job's results in "):
        run_suite("fake", tmp_path / "host.toml", tmp_path / "results", Console(file=io.StringIO()), "r")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["job-00", "job-01"]  # no third part


def test_bench_reports_the_last_run_s_wall_time(tmp_path: Path) -> None:
    """`qmp-mig bench` prints the newest suite run's wall time as `qmp-mig run` recorded
    it (lab boot included), and only without that record its Avocado jobs' time."""
    old, new = tmp_path / "run-2026-12-01T00.00.00-default", tmp_path / "run-2026-12-02T00.00.00-default"
    for run, seconds in ((old, 10), (new, 20)):
        (run / "job-1").mkdir(parents=True)
        (run / "job-1" / "results.json").write_text(json.dumps({"time": seconds}))
    os.utime(old, (1, 1))
    assert last_suite_time(tmp_path) == (new.name, 20.0, "the Avocado jobs' time")
    (new / "run.json").write_text(json.dumps({"suite": "default", "wall_seconds": 431.5, "tests": 30}))
    assert last_suite_time(tmp_path) == (new.name, 431.5, "wall time, 30 tests")
