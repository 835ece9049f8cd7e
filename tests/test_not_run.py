# SPDX-License-Identifier: GPL-2.0-or-later
"""A check that could not run is never a pass: required, it fails the test; optional,
it is listed in the summary table, the HTML report and results.json (whiteboard)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from qmp_mig.checks import NOT_RUN_FILE, CheckFailed
from qmp_mig.report import write_run_report
from qmp_mig.runner import summary_table
from qmp_mig.scenario import MigrationTest


def a_test(require: tuple[str, ...] | None) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(require=require), not_run={},
                           log=logging.getLogger("test"))


def test_a_required_check_that_cannot_run_fails_the_test() -> None:
    lab = a_test(("kernel_cross_check", "precopy_info"))
    with pytest.raises(CheckFailed, match=r"^kernel_cross_check could not run: no kernel probes: no BTF "
                                          r"\(\[checks\] require names it\)"):
        MigrationTest.could_not_run(lab, "kernel_cross_check", "no kernel probes: no BTF")  # type: ignore[arg-type]


@pytest.mark.parametrize("require", [None, ("precopy_info",)])
def test_an_optional_check_that_cannot_run_is_listed(require: tuple[str, ...] | None) -> None:
    host = a_test(require)
    MigrationTest.could_not_run(host, "kernel_cross_check", "no BTF")  # type: ignore[arg-type]
    MigrationTest.could_not_run(host, "kernel_cross_check", "said twice")  # type: ignore[arg-type]
    assert host.not_run == {"kernel_cross_check": "no BTF"}


def test_the_summary_and_the_report_say_what_did_not_run(tmp_path: Path) -> None:
    job, logdir = tmp_path / "job", tmp_path / "job" / "test-results" / "1-t"
    (logdir / "artifacts").mkdir(parents=True)
    (logdir / "artifacts" / NOT_RUN_FILE).write_text(json.dumps({"kernel_cross_check": "no BTF"}))
    (job / "results.json").write_text(json.dumps({"tests": [
        {"name": "1-t.py:T.test_migrate", "id": "1-t.py:T.test_migrate", "status": "PASS", "logdir": str(logdir),
         "time_elapsed": 1.0, "whiteboard": "completed: total 1500 ms\nnot run: kernel_cross_check (no BTF)"}]}))
    console = Console(width=200, record=True)
    console.print(summary_table([job]))
    assert "[not run: kernel_cross_check (no BTF)]" in console.export_text()
    report = write_run_report(tmp_path, [job], title="t").read_text()
    assert "not run: kernel_cross_check (no BTF)" in report
