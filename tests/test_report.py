# SPDX-License-Identifier: GPL-2.0-or-later
"""The job's HTML page: every link leads to a file, every test is there with its verdict."""

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from qmp_mig.conformance import DeviceReport, Result, Verdict
from qmp_mig.report import write_html_report
from qmp_mig.timeline import Mark, write_timeline


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(str(values["id"]))
        if tag == "a" and values.get("href"):
            self.links.append(str(values["href"]))
        if tag == "img" and values.get("src"):
            self.images.append(str(values["src"]))


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def job(tmp_path: Path) -> Path:
    job = tmp_path / "job-2026-11-22T22.30-6d45dfe"
    results = job / "test-results"
    passed = results / "1-_work_main_avocado_tests_test_vfio_migration.py_VfioMigration.test_migrate"
    for name in ("source.qmp.jsonl", "source.events.json", "destination.stderr.log", "source.cmdline",
                 "timeline.svg", "timeline.txt", "kernel/source.vfio-trace.txt"):
        touch(passed / "artifacts" / name)
    touch(passed / "artifacts" / "summary.txt", "both sides walked the expected states\n")
    touch(passed / "debug.log")
    failed = results / "2-weird:name;x"  # ':' and ';' must not break the links
    touch(failed / "artifacts" / "source.console.log")
    touch(failed / "debug.log")
    bare = results / "3-no-artifacts"
    touch(bare / "debug.log")
    (job / "results.json").write_text(json.dumps({
        "job_id": "6d45dfea6e7d2ce33d099b79cba6b3cc3f6fb746", "start": "2026-11-22 22:30:18.879975",
        "total": 4, "pass": 1, "failures": 1, "errors": 1, "skip": 1, "cancel": 0, "warn": 0, "interrupt": 0,
        "time": 123.9,
        "tests": [
            {"id": "1-/work/main/avocado_tests/test_vfio_migration.py:VfioMigration.test_migrate",
             "name": "/work/main/avocado_tests/test_vfio_migration.py:VfioMigration.test_migrate",
             "status": "PASS", "fail_reason": "<unknown>", "time_elapsed": 86.0,
             "whiteboard": "completed: total 4770 ms, downtime 170 ms\nsecond line",
             "logdir": str(passed), "tags": {"vfio": None, "migration": None, "speed": ["slow"]}},
            # Recorded where the job used to live: found again under this job's test-results/.
            {"id": "2-/x/t.py:VfioMigration.test_cancel", "name": "/x/t.py:VfioMigration.test_cancel",
             "status": "FAIL", "fail_reason": "source vfio0: walk differs at step 2 <script>\n  expected: stop",
             "time_elapsed": 37.9, "whiteboard": "", "logdir": "/old/place/test-results/2-weird:name;x"},
            {"id": "3-/x/t.py:VfioMigration.test_bare", "name": "/x/t.py:VfioMigration.test_bare",
             "status": "ERROR", "fail_reason": "QmpError: source: migrate failed: Device busy",
             "time_elapsed": 1.5, "whiteboard": "", "logdir": "test-results/3-no-artifacts"},
            {"id": "4-/x/t.py:VfioMigration.test_gone", "name": "/x/t.py:VfioMigration.test_gone",
             "status": "SKIP", "fail_reason": "<unknown>", "time_elapsed": -1, "whiteboard": "",
             "logdir": "/nowhere/4-gone"},
        ],
    }))
    return job


def test_links_lead_to_files(job: Path) -> None:
    report = write_html_report(job)
    assert report == (job / "report.html").resolve()
    page = Links()
    page.feed(report.read_text())
    files = [link for link in page.links if not link.startswith("#")]
    for link in files + page.images:
        assert "://" not in link and not link.startswith("/")
        assert (report.parent / unquote(link)).is_file(), link
    assert {link.removeprefix("#") for link in page.links if link.startswith("#")} <= page.ids
    assert page.images == ["test-results/1-_work_main_avocado_tests_test_vfio_migration.py_VfioMigration"
                           ".test_migrate/artifacts/timeline.svg"]
    names = {unquote(link).rsplit("/", 1)[-1] for link in files}
    assert {"timeline.txt", "source.qmp.jsonl", "source.vfio-trace.txt", "debug.log", "source.console.log"} <= names
    assert sum(unquote(link).endswith("/debug.log") for link in files) == 3


def test_statuses_and_reasons(job: Path) -> None:
    html = write_html_report(job).read_text()
    for status in ("PASS", "FAIL", "ERROR", "SKIP"):
        assert f'class="status s-{status}"' in html
    assert "VfioMigration.test_migrate" in html and "VfioMigration.test_gone" in html
    assert "completed: total 4770 ms, downtime 170 ms" in html  # a pass shows its whiteboard
    assert "source vfio0: walk differs at step 2 &lt;script&gt;" in html  # a failure its reason, escaped
    assert "<script>" not in html and "&lt;unknown&gt;" not in html
    assert "QmpError: source: migrate failed: Device busy" in html
    assert "both sides walked the expected states" in html  # summary.txt
    assert ">vfio<" in html and ">speed:slow<" in html  # tags
    assert "6d45dfe" in html and "no artifacts" in html and "directory is missing" in html


def test_a_timeline_written_without_its_picture_is_drawn_for_the_report(job: Path) -> None:
    """Scenarios write timeline.json and .txt only (drawing costs seconds per test); the
    report draws the picture once, for every test that has the marks."""
    artifacts = job / "test-results" / "2-weird:name;x" / "artifacts"
    write_timeline([Mark(0.0, "source", "event", "MIGRATION active"),
                    Mark(0.5, "destination", "event", "RESUME")], artifacts, svg=False)
    assert not (artifacts / "timeline.svg").exists()
    page = Links()
    page.feed(write_html_report(job).read_text())
    assert (artifacts / "timeline.svg").read_text().lstrip().startswith("<?xml")
    assert len(page.images) == 2


def test_a_conformance_test_shows_its_devices_failed_and_unrun_checks(job: Path) -> None:
    """A vendor reads, in the report, each check that failed or could not run: the call,
    its arguments, and the answers expected and observed."""
    device = DeviceReport("mtty-2", "STOP_COPY|P2P", 3.7, [
        Result("fsm STOP->RUNNING", Verdict.PASS, "VFIO_DEVICE_FEATURE SET MIG_DEVICE_STATE(device_state=RUNNING)"),
        Result("close in STOP", Verdict.FAIL, "VFIO_DEVICE_FEATURE GET MIG_DEVICE_STATE()",
               "RUNNING at the next open", "GET answers STOP <b>"),
        Result("round-trip restored state", Verdict.SKIP, observed="the device shows no view of its own state"),
    ], 0.7)
    failed = job / "test-results" / "2-weird:name;x" / "artifacts"
    (failed / "conformance.json").write_text(json.dumps(device.as_json()))
    html = write_html_report(job).read_text()
    assert "mtty-2 (STOP_COPY|P2P): 1 checks passed, 1 failed, 1 could not run; 3.7 s (the checks 0.7 s)" in html
    assert "<td>close in STOP</td>" in html and "GET answers STOP &lt;b&gt;" in html  # escaped
    assert "the device shows no view of its own state" in html
    assert "fsm STOP-&gt;RUNNING" not in html  # passes are counted, not listed
