# SPDX-License-Identifier: GPL-2.0-or-later
"""The host's view of a qmigdev instance, read from (here: a copy of) its sysfs
directory, and the verdicts on the guest agent's reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qmp_mig.checks import CheckFailed, check_device_memory, check_memory, check_p2p, check_records
from qmp_mig.device_scenario import check_downtime
from qmp_mig.fsm import Flag, State
from qmp_mig.hosts import LocalHost
from qmp_mig.migration import MigrationResult
from qmp_mig.qmigdev import Qmigdev, QmigdevError, flag_attributes, fresh_account
from qmp_mig.runner import detection_table, variant_axes


@pytest.fixture
def device(tmp_path: Path) -> Qmigdev:
    sysfs = tmp_path / "0c8b6d1e-0000-4000-8000-000000000001"
    (sysfs / "qmigdev").mkdir(parents=True)
    (sysfs / "qmigdev" / "state").write_text("RUNNING\n")
    (sysfs / "qmigdev" / "arcs").write_text("RUNNING->PRE_COPY\nPRE_COPY->PRE_COPY_P2P\n"
                                            "PRE_COPY_P2P->STOP_COPY FAILED\n")
    (sysfs / "qmigdev" / "counters").write_text("dma_records 120\nwrites_while_stopped 3\n"
                                                "p2p_while_quiesced 0\n")
    (sysfs / "qmigdev" / "fail_arc").write_text("none\n")
    return Qmigdev(LocalHost(), str(sysfs))


def test_state_arcs_and_counters_are_parsed(device: Qmigdev) -> None:
    assert device.uuid == "0c8b6d1e-0000-4000-8000-000000000001"
    assert device.state() == State.RUNNING
    arcs = device.arcs()
    assert [a.describe() for a in arcs][-1] == "PRE_COPY_P2P->STOP_COPY FAILED"
    assert arcs[-1].failed and not arcs[0].failed
    assert device.counters()["dma_records"] == 120


def test_misbehaviour_names_what_the_device_did(device: Qmigdev) -> None:
    assert device.misbehaviour() == ["device wrote guest memory 3 time(s) while stopped"]


def test_faults_are_armed_by_name_and_unknown_ones_refused(device: Qmigdev) -> None:
    device.arm("fail_arc", "RUNNING->PRE_COPY stay")
    assert device.read("fail_arc") == "RUNNING->PRE_COPY stay"
    with pytest.raises(QmigdevError, match="unknown qmigdev fault 'fail_ark'"):
        device.arm("fail_ark", "x")


def test_flag_attributes_switch_p2p_and_precopy() -> None:
    assert flag_attributes(Flag.STOP_COPY) == {"qmigdev/enable_p2p": "0", "qmigdev/enable_precopy": "0"}
    assert flag_attributes(Flag.STOP_COPY | Flag.PRE_COPY)["qmigdev/enable_precopy"] == "1"
    # qmigpci: the same switches in the PCI function's own directory.
    assert flag_attributes(Flag.STOP_COPY | Flag.P2P, "pci") == {"qmigpci/enable_p2p": "1",
                                                                "qmigpci/enable_precopy": "0"}


def test_each_vm_starts_the_device_account_afresh() -> None:
    """A PCI function lent to several VMs of one test keeps its arc log and counters:
    both are cleared before each VM opens it."""
    assert fresh_account("pci") == {"qmigpci/arcs": "clear", "qmigpci/clear_counters": "1"}


def test_record_report_verdicts_name_the_symptom() -> None:
    good = {"expected": 500, "lost": 0, "torn": 0, "future": 0, "stopped": 0}
    check_records("destination", good)
    with pytest.raises(CheckFailed, match=r"^destination: 3 DMA record\(s\) lost after migration \(seq 7, 8, 9\)"):
        check_records("destination", {**good, "lost": 3, "lost_seqs": [7, 8, 9]})
    with pytest.raises(CheckFailed, match="written while the device was stopped"):
        check_records("destination", {**good, "stopped": 1, "stopped_seqs": [400]})
    with pytest.raises(CheckFailed, match="no DMA records were written"):
        check_records("destination", {**good, "expected": 0})


def test_device_memory_and_p2p_verdicts() -> None:
    with pytest.raises(CheckFailed, match="device memory lost after migration: 61440 of 61440 bytes differ"):
        check_device_memory("d", {"bytes": 61440, "mmap_bytes_differing": 61440, "dma_bytes_differing": 0,
                                  "chunks_differing": list(range(15)), "dma_result": 0})
    clean = {"sent": 40, "received": 40, "errors": 0, "lost_in_flight": 0, "lost": 0, "torn": 0,
             "quiesced": 0, "stopped": 0}
    check_p2p("d", clean)
    with pytest.raises(CheckFailed, match=r"2 P2P write\(s\) lost: sent 40, received 38"):
        check_p2p("d", {**clean, "received": 38, "lost_in_flight": 2})


@pytest.mark.parametrize(("check", "report", "missing"), [
    (check_memory, {"pages": 2048}, "bad_pages"),
    (check_records, {"expected": 10, "lost": 0, "torn": 0, "future": 0}, "stopped"),
    (check_device_memory, {"bytes": 61440, "dma_result": 0, "mmap_bytes_differing": 0}, "dma_bytes_differing"),
    (check_p2p, {"sent": 40, "received": 40}, "errors, lost_in_flight, lost, torn, quiesced, stopped"),
])
def test_a_report_without_its_counts_is_no_pass(check: Any, report: dict[str, Any], missing: str) -> None:
    """An agent report that lacks a count (another agent version, a cut answer) fails
    naming what it lacks; it is never read as zero."""
    with pytest.raises(CheckFailed, match=f"^d: the agent's report lacks {missing}, so nothing can be"):
        check("d", report)


def test_downtime_unknown_is_no_pass() -> None:
    result = MigrationResult("completed", stats={"status": "completed", "total-time": 1500})
    assert result.downtime_ms is None
    with pytest.raises(CheckFailed, match=r"^downtime unknown"):
        check_downtime(result, {})


def test_detection_table_has_a_column_per_guest_kind(tmp_path: Path) -> None:
    """One row per fault and device kind; each guest kind it ran on is a column holding the
    checks that caught it (or the GAP), so a fault caught on one guest and missed on the
    other stands out."""
    job = tmp_path / "job"
    job.mkdir()
    runs = (
        ("1", "Detection.test_dma_after_stop;run-mdev-c0de", "PASS",
         {"fault": "dma_after_stop", "caught": [
             {"check": "device counters and arcs", "message": "wrote guest memory 3 time(s) while stopped"}]}),
        ("2", "Detection.test_dma_after_stop;run-mdev-micro-c0de", "PASS",
         {"fault": "dma_after_stop", "caught": [
             {"check": "device counters and arcs", "message": "wrote guest memory 5 time(s) while stopped"},
             {"check": "device walk", "message": "RUNNING -> STOP"}]}),
        ("3", "Detection.test_lie_precopy_info_zero;run-pci-micro-c0de", "FAIL",
         {"fault": "lie_precopy_info zero", "caught": []}),
    )
    tests = []
    for number, name, status, report in runs:
        logdir = tmp_path / f"t{number}"
        (logdir / "artifacts").mkdir(parents=True)
        (logdir / "artifacts" / "detection.json").write_text(json.dumps(report))
        tests.append({"name": f"{number}-test_detection.py:{name}", "status": status, "logdir": str(logdir)})
    (job / "results.json").write_text(json.dumps({"tests": tests}))
    table = detection_table([job])
    assert table is not None
    assert [column.header for column in table.columns] == ["fault", "device", "linux", "micro"]
    rows = list(zip(*(column.cells for column in table.columns), strict=True))
    assert rows[0] == ("dma_after_stop", "mdev", "device counters and arcs: wrote guest memory 3 time(s) "
                       "while stopped", "device counters and arcs: wrote guest memory 5 time(s) while "
                       "stopped\ndevice walk: RUNNING -> STOP")
    assert rows[1] == ("lie_precopy_info zero", "pci", "not run", "GAP: nothing caught it\n[FAIL]")


def test_variant_axes_name_the_device_and_guest_kind() -> None:
    assert variant_axes("x.py:VfioMigration.test_migrate;run-mdev-micro-options-defaults-1373") == ("mdev", "micro")
    assert variant_axes("x.py:Failures.test_cancel_active;run-pci-5f3a") == ("pci", "linux")
    assert variant_axes("x.py:Refusals.test_postcopy_refused") == ("", "linux")
