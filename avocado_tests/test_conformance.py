# SPDX-License-Identifier: GPL-2.0-or-later
"""Conformance: each device's migration uAPI checked directly, with no QEMU and
no guest (qmp_mig/conformance.py says what is checked).

``Conformance.test_device`` checks one device of the host configuration: ``qmp-mig
run --suite conformance`` gives it one variant per device (``conformance_target``),
written from the configuration when the suite starts. It passes when no check
fails; a device whose failures are all known issues of its configuration entry
(``known_issues = { "conform:<check>" = "why" }``, a check name or its start) is
an expected failure; a check that could not run is listed, never passed.

``ConformanceDetection`` arms each fault of our test devices (qmigdev, qmigpci) on
the subject and passes only if a named check fails: conformance's column of the
detection table. A fault that only a running guest or QEMU can reveal (DMA after
stop, a slow save) is cancelled with the reason when conformance sees nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from avocado import Test

from qmp_mig import config as configuration
from qmp_mig.conformance import DeviceReport, Verdict
from qmp_mig.conformance_run import Target, check_device, known_failures, select
from qmp_mig.device_scenario import write_detection
from qmp_mig.host_loss import host_lost, record
from qmp_mig.hosts import HostLost
from qmp_mig.qmigdev import Qmigdev
from qmp_mig.scenario import Finding


class _ConformanceTest(Test):
    def setUp(self) -> None:
        lost = host_lost()
        if lost is not None:
            self.cancel(f"not run: {lost.sentence()}")
        path = self.params.get("host_config", default=os.environ.get("QMP_MIG_HOST_CONFIG"))
        if not path:
            self.cancel("no host configuration: pass --qmp-mig-config FILE to avocado run")
        self.config = configuration.load(path)
        self.artifacts = Path(self.logdir) / "artifacts"

    def check(self, target: Target, fault: tuple[str, str] | None = None) -> DeviceReport:
        """Every check on ``target``; ``fault`` (knob, value) armed on the subject first."""
        arm: Callable[[Qmigdev], None] | None = None
        if fault is not None:
            def arm(device: Qmigdev) -> None:
                device.arm(*fault)

        try:
            report = check_device(self.config, target, self.artifacts, arm=arm, log=self.log.info)
        except HostLost as exc:
            self.fail(record(exc, self.name.name, f"checking {target.name}").sentence())
        counts = report.counts()
        self.log.info("%s: %d passed, %d failed, %d could not run, in %.1f s", target.name,
                      counts[Verdict.PASS], counts[Verdict.FAIL], counts[Verdict.SKIP], report.seconds)
        return report


class Conformance(_ConformanceTest):
    """:avocado: enable
    :avocado: tags=conformance,instances:1
    """

    def test_device(self) -> None:
        """Every check on one device (variant ``conformance_target``)."""
        name = self.params.get("conformance_target", default=None)
        if not name:
            self.cancel("not run: no conformance_target parameter (qmp-mig run --suite conformance "
                        "gives one variant per device of the configuration)")
        target = select(self.config, str(name))[0]
        report = self.check(target)
        skipped = [r for r in report.results if r.verdict == Verdict.SKIP]
        if "fsm paths" in {r.check for r in skipped} and self.config.require is not None \
                and "kernel_cross_check" in self.config.require:
            reason = next(r.observed for r in skipped if r.check == "fsm paths")
            self.fail(f"fsm paths could not be judged and [checks] require the kernel's view: {reason}")
        failures = report.failures()
        self.whiteboard = f"{len(report.results)} checks, {len(failures)} failed, {len(skipped)} could not run"
        if not failures:
            return
        lines = [f"{r.check}: {r.call}: expected {r.expected}; observed {r.observed}" for r in failures]
        unknown, reasons = known_failures(target, report)
        if unknown:
            self.fail(f"{len(failures)} check(s) failed on {target.name}: " + " | ".join(lines))
        self.cancel(f"expected failure: {target.name}: {'; '.join(reasons)} ({len(failures)} checks: "
                    + ", ".join(r.check for r in failures) + ")")


# Fault -> (knob, value, the checks that must catch it; or None: conformance cannot
# see it, and why). Fault names are the detection suite's, so the rows line up.
FAULTS: dict[str, tuple[str, str, str | None, str]] = {
    "fail_arc RUNNING->PRE_COPY stay": ("fail_arc", "RUNNING->PRE_COPY stay", "fsm RUNNING->PRE_COPY", ""),
    "fail_arc PRE_COPY_P2P->STOP_COPY error": ("fail_arc", "PRE_COPY_P2P->STOP_COPY error",
                                               "fsm PRE_COPY_P2P->STOP_COPY", ""),
    "corrupt_stream": ("corrupt_stream", "1", "round-trip", ""),
    "truncate_stream": ("truncate_stream", "1", "round-trip", ""),
    "drop_state": ("drop_state", "1", "round-trip restored state", ""),
    "lie_precopy_info stuck": ("lie_precopy_info", "stuck", "precopy", ""),
    "lie_precopy_info zero": ("lie_precopy_info", "zero", "precopy", ""),
    "stale_state_on_close": ("stale_state_on_close", "1", "close in", ""),
    "refuse_reset fail": ("refuse_reset", "fail", "reset ", ""),
    "refuse_reset ignore": ("refuse_reset", "ignore", "reset ", ""),
    "lie_data_size 1 TiB": ("lie_data_size", str(1 << 40), None,
                            "MIG_DATA_SIZE is an estimate: the uAPI allows one above what is read"),
    "dma_after_stop": ("dma_after_stop", "1", None, "only a guest's DMA shows it"),
    "p2p_in_running_p2p": ("p2p_in_running_p2p", "1", None, "only a guest's P2P traffic shows it"),
    "delay_save_ms (downtime limit + 5 s)": ("delay_save_ms", "500", None,
                           "a slow save breaks only a downtime promise, which QEMU makes"),
}


# Faults conformance cannot see on one kind of device only, and why.
BLIND: dict[tuple[str, str], str] = {
    ("stale_state_on_close", "pci"): "vfio-pci resets a function that has a reset method each time it "
                                     "is opened, which clears the state the driver kept: the next user "
                                     "finds RUNNING (the scenario suite sees the stale state in sysfs)",
}


class ConformanceDetection(_ConformanceTest):
    """:avocado: enable
    :avocado: tags=conformance,detection,faults,device
    """

    def detect(self, fault: str) -> None:
        knob, value, catcher, invisible = FAULTS[fault]
        kind = self.params.get("device_kind", default="mdev")
        if (fault, kind) in BLIND:
            catcher, invisible = None, BLIND[fault, kind]
        mine = [t for t in self.config.test_devices if t.kind == kind]
        if not mine:
            self.cancel(f"not run: the host configuration has no {kind} [[test_device]] (qmigdev, qmigpci)")
        target = next(t for t in select(self.config, kind) if t.name.endswith("-full"))
        report = self.check(target, (knob, value))
        failures = report.failures()
        findings = [Finding(f"conformance {r.check}", f"{r.call}: expected {r.expected}; observed {r.observed}")
                    for r in failures]
        write_detection(self.artifacts / "detection.json", fault, findings)
        if catcher is None:
            if not failures:
                self.cancel(f"not visible to conformance: {fault}: {invisible}")
            self.whiteboard = f"{fault} -> {failures[0].check}"
            return
        if not failures:
            self.fail(f"GAP: {fault}: no conformance check failed")
        if not any(r.check.startswith(catcher) for r in failures):
            self.fail(f"{fault}: checks failed, but none is {catcher!r}: "
                      + " | ".join(f.check for f in findings))
        self.whiteboard = f"{fault} -> " + ", ".join(r.check for r in failures if r.check.startswith(catcher))

    def test_fail_arc_stay(self) -> None:
        self.detect("fail_arc RUNNING->PRE_COPY stay")

    def test_fail_arc_error(self) -> None:
        self.detect("fail_arc PRE_COPY_P2P->STOP_COPY error")

    def test_corrupt_stream(self) -> None:
        self.detect("corrupt_stream")

    def test_truncate_stream(self) -> None:
        self.detect("truncate_stream")

    def test_drop_state(self) -> None:
        self.detect("drop_state")

    def test_lie_precopy_info_stuck(self) -> None:
        self.detect("lie_precopy_info stuck")

    def test_lie_precopy_info_zero(self) -> None:
        self.detect("lie_precopy_info zero")

    def test_stale_state_on_close(self) -> None:
        self.detect("stale_state_on_close")

    def test_refuse_reset_fail(self) -> None:
        self.detect("refuse_reset fail")

    def test_refuse_reset_ignore(self) -> None:
        self.detect("refuse_reset ignore")

    def test_lie_data_size(self) -> None:
        self.detect("lie_data_size 1 TiB")

    def test_dma_after_stop(self) -> None:
        self.detect("dma_after_stop")

    def test_p2p_in_running_p2p(self) -> None:
        self.detect("p2p_in_running_p2p")

    def test_delay_save(self) -> None:
        self.detect("delay_save_ms (downtime limit + 5 s)")
