# SPDX-License-Identifier: GPL-2.0-or-later
"""Which devices conformance checks, how its results are told apart from known
issues, and how a run shows them (tables, one Avocado variant per device, the
detection table's conformance column)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from qmp_mig import host_vfio
from qmp_mig.config import load
from qmp_mig.conformance import DeviceReport, Result, Verdict
from qmp_mig.conformance_run import known_failures, select, targets
from qmp_mig.fsm import Flag
from qmp_mig.runner import SUITES, conformance_reports, conformance_tables, detection_table, device_variants

HOST = """
[host]
kind = "local"
[guest]
kernel = "/k"
initrd = "/i"
key = "/key"
[[device]]
kind = "mdev"
parent = "mtty"
type = "mtty-2"
known_issues = { "conform:close in" = "keeps its state", "reuse-after-failure" = "a scenario's" }
[[device]]
kind = "pci"
bdf = ["0000:01:00.0", "0000:02:00.0"]
bind = "qmigpci"
[[device]]
kind = "pci"
bdf = ["0000:3b:00.1", "0000:3b:00.2"]
bind = "mlx5_vfio_pci"
[[test_device]]
kind = "mdev"
parent = "qmigdev"
type = "qmigdev-full"
[[test_device]]
kind = "pci"
bdf = ["0000:01:00.0", "0000:02:00.0"]
bind = "qmigpci"
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "host.toml"
    path.write_text(HOST)
    return path


def test_every_device_and_every_flavour_of_ours_is_a_target(config_path: Path) -> None:
    found = {t.name: t for t in targets(load(config_path))}
    # The qmigpci [[device]] is the same pool as the PCI test device: checked once, as ours.
    assert list(found) == ["mtty-2", "mlx5_vfio_pci-0000:3b:00.1", "qmigdev-full", "qmigdev-p2p",
                           "qmigdev-precopy", "qmigdev-basic", "qmigpci-full", "qmigpci-p2p",
                           "qmigpci-precopy", "qmigpci-basic"]
    assert found["qmigdev-p2p"].spec.type == "qmigdev-p2p"
    assert found["qmigdev-p2p"].spec.expect_flags == Flag.STOP_COPY | Flag.P2P
    assert found["qmigpci-precopy"].spec.attributes == {"qmigpci/enable_p2p": "0",
                                                       "qmigpci/enable_precopy": "1"}
    assert found["qmigpci-precopy"].driver == "qmigpci" and found["mtty-2"].driver == ""


def test_device_selects_one_by_name_or_a_kind(config_path: Path) -> None:
    config = load(config_path)
    assert [t.name for t in select(config, "mtty-2")] == ["mtty-2"]
    assert len(select(config, "pci")) == 5
    with pytest.raises(ValueError, match=r"no device 'mtty-9' to check; the configuration has mtty-2, "):
        select(config, "mtty-9")


def _report(name: str, *failed: str) -> DeviceReport:
    results = [Result("flags", Verdict.PASS), Result("fsm paths", Verdict.SKIP, observed="no trace")]
    results += [Result(check, Verdict.FAIL, "VFIO_DEVICE_FEATURE GET MIG_DEVICE_STATE()", "RUNNING", "STOP")
                for check in failed]
    return DeviceReport(name, "STOP_COPY|P2P", 3.25, results, 1.5)


def test_known_issues_cover_failures_by_check_name_or_its_start(config_path: Path) -> None:
    mtty = select(load(config_path), "mtty-2")[0]
    unknown, reasons = known_failures(mtty, _report("mtty-2", "close in STOP", "close in RESUMING"))
    assert unknown == [] and reasons == ["keeps its state"]
    unknown, reasons = known_failures(mtty, _report("mtty-2", "close in STOP", "reset offered"))
    assert [r.check for r in unknown] == ["reset offered"]
    # A scenario's known issue is not a conformance one.
    unknown, _ = known_failures(mtty, _report("mtty-2", "reuse-after-failure"))
    assert len(unknown) == 1


def test_tables_give_counts_per_device_and_each_failure_with_its_call(tmp_path: Path) -> None:
    reports = [_report("qmigdev-full"), _report("mtty-2", "close in STOP")]
    devices, failures = conformance_tables(reports)
    rows = list(zip(*(column.cells for column in devices.columns), strict=True))
    assert rows[0] == ("qmigdev-full", "STOP_COPY P2P", "1", "0", "1", "3.2 s (1.5 s)", "-")
    assert rows[1][0] == "mtty-2" and rows[1][-1] == "close in STOP"
    assert [list(column.cells) for column in failures.columns] == [
        ["mtty-2"], ["close in STOP"], ["VFIO_DEVICE_FEATURE GET MIG_DEVICE_STATE()"], ["RUNNING"], ["STOP"]]
    assert conformance_tables([]) == []
    assert len(conformance_tables([_report("qmigdev-full")])) == 1  # no failure, no failure table


def test_a_run_reads_each_devices_report_back(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    logdir = tmp_path / "t1"
    (logdir / "artifacts").mkdir(parents=True)
    report = _report("mtty-2", "close in STOP")
    (logdir / "artifacts" / "conformance.json").write_text(json.dumps(report.as_json()))
    tests = [{"name": "1-test_conformance.py:Conformance.test_device;run-devices-mtty-2-24ec",
              "status": "CANCEL", "logdir": str(logdir)}]
    (job / "results.json").write_text(json.dumps({"tests": tests}))
    [back] = conformance_reports([job])
    assert back.device == "mtty-2" and back.results == report.results
    assert (back.seconds, back.checks_seconds) == (3.25, 1.5)


def test_one_avocado_variant_per_device(config_path: Path, tmp_path: Path) -> None:
    path = device_variants(config_path, tmp_path)
    text = path.read_text()
    assert text.startswith("devices: !mux\n")
    names = [line.split('"')[1] for line in text.splitlines() if "conformance_target" in line]
    assert names == [t.name for t in targets(load(config_path))]
    # A name with a colon stays one string for Avocado's YAML loader.
    loaded = yaml.load(text.replace("!mux", ""), Loader=yaml.SafeLoader)
    assert loaded["devices"]["mlx5_vfio_pci-0000:3b:00.1"] == {"conformance_target": "mlx5_vfio_pci-0000:3b:00.1"}
    part = SUITES["conformance"][0]
    assert part.per_device and part.tests == ("avocado_tests/test_conformance.py:Conformance.test_device",)


def test_detection_table_has_a_conformance_column(tmp_path: Path) -> None:
    """Conformance's findings for a fault sit beside the guest kinds' findings; a fault
    it cannot see shows the reason it gave, not a GAP."""
    job = tmp_path / "job"
    job.mkdir()
    runs = (
        ("1", "Detection.test_drop_state;run-mdev-micro-c0de", "PASS", "",
         {"fault": "drop_state", "caught": [{"check": "device memory", "message": "lost"}]}),
        ("2", "ConformanceDetection.test_drop_state;run-mdev-4568", "PASS", "",
         {"fault": "drop_state", "caught": [{"check": "conformance round-trip restored state",
                                             "message": "expected a; observed b"}]}),
        ("3", "ConformanceDetection.test_dma_after_stop;run-mdev-4568", "CANCEL",
         "not visible to conformance: dma_after_stop: only a guest's DMA shows it",
         {"fault": "dma_after_stop", "caught": []}),
    )
    tests = []
    for number, name, status, reason, report in runs:
        logdir = tmp_path / f"t{number}"
        (logdir / "artifacts").mkdir(parents=True)
        (logdir / "artifacts" / "detection.json").write_text(json.dumps(report))
        tests.append({"name": f"{number}-{name}", "status": status, "fail_reason": reason, "logdir": str(logdir)})
    (job / "results.json").write_text(json.dumps({"tests": tests}))
    table = detection_table([job])
    assert table is not None
    assert [column.header for column in table.columns] == ["fault", "device", "micro", "conformance"]
    rows = list(zip(*(column.cells for column in table.columns), strict=True))
    assert rows[0] == ("drop_state", "mdev", "device memory: lost",
                       "conformance round-trip restored state: expected a; observed b")
    assert rows[1] == ("dma_after_stop", "mdev", "not run",
                       "not visible to conformance: dma_after_stop: only a guest's DMA shows it")


def test_the_host_user_runs_on_a_bare_python_and_answers_every_request() -> None:
    """host_vfio.py needs nothing but the standard library (the host's python3, outside
    our venv), answers each request with one line, and turns a failure into an answer."""
    requests = [
        {"op": "open", "dev": "d", "path": "/nonexistent/device"},
        {"op": "get", "dev": "d", "feature": "migration"},
        {"op": "no_such_op"},
        {"op": "blob", "blob": "empty"},
        {"op": "bye"},
        {"op": "blob", "blob": "after bye: never answered"},
    ]
    done = subprocess.run(["/usr/bin/python3", "-I", host_vfio.__file__], input="".join(
        json.dumps(r) + "\n" for r in requests), capture_output=True, text=True, timeout=30, check=True)
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == 5, done.stdout
    opened, got, unknown, blob, bye = answers
    assert not opened["ok"] and opened["errno"] == 2 and opened["error"].startswith("ENOENT: ")
    assert not got["ok"] and "bad request get" in got["error"]
    assert not unknown["ok"] and "bad request no_such_op" in unknown["error"]
    assert blob == {**blob, "ok": True, "n": 0}
    assert bye["ok"] and all(a["t0"] <= a["t1"] for a in answers)
    assert done.stderr == ""
