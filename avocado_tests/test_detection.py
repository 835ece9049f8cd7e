# SPDX-License-Identifier: GPL-2.0-or-later
"""The detection suite: each test arms one fault of our test device (a real driver
bug class; qmigdev and qmigpci have the same knobs), runs the normal scenario with
every check, and passes only if the suite's own checks fail with a message naming
the symptom. A fault no check catches fails its test as a GAP: it is reported,
never passed. The device kind variant picks the driver (mdev: qmigdev, pci: qmigpci).

Each test leaves ``detection.json`` (fault, then every check that failed and its
message) in its artifacts; ``qmp-mig run --suite detection`` prints them as a table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from qmp_mig.checks import CheckFailed
from qmp_mig.device_scenario import FULL, DeviceTest, Finding, write_detection
from qmp_mig.fsm import Flag
from qmp_mig.guest import GuestError
from qmp_mig.qmigdev import Qmigdev
from qmp_mig.qmp import QmpError
from qmp_mig.testbed import RunningVm


def on_source(knob: str, value: str) -> Callable[[RunningVm, Sequence[Qmigdev]], None]:
    """Arm ``knob`` on the source's first device just before the migration."""
    return lambda _vm, devices: devices[0].arm(knob, value)


class Detection(DeviceTest):
    """:avocado: enable
    :avocado: tags=detection,device,faults,instances:4
    """

    def detect(self, fault: str, symptom: str, scenario: Callable[[], object]) -> None:
        """Run ``scenario`` collecting every failed check; pass iff one names ``symptom``."""
        self.collect = True
        try:
            scenario()
        except (CheckFailed, QmpError, GuestError, TimeoutError) as exc:
            # A step that cannot go on (a guest that no longer answers, a QEMU that
            # died) is a finding too: the scenario could not complete.
            self.findings.append(Finding("scenario", str(exc).splitlines()[0]))
            # A QEMU that died on its own says why on stderr.
            for qemu, _ in self.bed.vms:
                if qemu.died():
                    self.findings.append(Finding("QEMU alive", f"{qemu.name} died: {qemu.last_error()}"))
        write_detection(self.artifacts / "detection.json", fault, self.findings)
        for finding in self.findings:
            self.log.info("caught by %s: %s", finding.check, finding.message)
        if not self.findings:
            self.fail(f"GAP: {fault}: no check failed")
        if not any(re.search(symptom, f.message) for f in self.findings):
            self.fail(f"{fault}: checks failed, but none names the symptom /{symptom}/: "
                      + " | ".join(f"{f.check}: {f.message}" for f in self.findings))
        self.whiteboard = f"{fault} -> {self.findings[0].check}: {self.findings[0].message}"

    def test_fail_arc_stay(self) -> None:
        """Fails RUNNING -> PRE_COPY and stays put (a driver that cannot start pre-copy)."""
        self.detect("fail_arc RUNNING->PRE_COPY stay", r"migration failed",
                    lambda: self.migrate_loaded(arm=on_source("fail_arc", "RUNNING->PRE_COPY stay")))

    def test_fail_arc_error(self) -> None:
        """Fails PRE_COPY_P2P -> STOP_COPY into ERROR (a driver that cannot save)."""
        self.detect("fail_arc PRE_COPY_P2P->STOP_COPY error", r"migration failed",
                    lambda: self.migrate_loaded(arm=on_source("fail_arc", "PRE_COPY_P2P->STOP_COPY error")))

    def test_dma_after_stop(self) -> None:
        """Keeps DMA-ing into guest RAM after STOP (a driver that does not quiesce DMA).
        qmigpci offers only STOP_COPY here: the edu has one DMA engine, so its P2P
        quiesce already drains all DMA and a pre-copy save needs the engine idle; only
        the arc RUNNING -> STOP lets a transfer run on into the stopped state."""
        flags = FULL if self.test_spec.kind == "mdev" else Flag.STOP_COPY
        self.detect("dma_after_stop", r"while stopped",
                    lambda: self.migrate_loaded(flags=flags, arm=on_source("dma_after_stop", "1")))

    def test_p2p_in_running_p2p(self) -> None:
        """Keeps issuing P2P writes in RUNNING_P2P (a driver that ignores the P2P quiesce)."""
        self.detect("p2p_in_running_p2p", r"while quiesced",
                    lambda: self.migrate_loaded(arm=on_source("p2p_in_running_p2p", "1")))

    def test_corrupt_stream(self) -> None:
        """Flips a byte of the saved state after its checksum (corruption in flight)."""
        self.detect("corrupt_stream", r"migration failed",
                    lambda: self.migrate_loaded(arm=on_source("corrupt_stream", "1")))

    def test_truncate_stream(self) -> None:
        """Ends the stream halfway through the device section (a short save). The
        destination device refuses to leave RESUMING; QEMU 10.0 resets it and runs
        the VM anyway, so the migration "completes" with the device state gone."""
        self.detect("truncate_stream", r"Resetting device",
                    lambda: self.migrate_loaded(arm=on_source("truncate_stream", "1")))

    def test_drop_state(self) -> None:
        """Leaves device memory (qmigpci: the edu's DMA buffer) out of the stream; the
        destination accepts it (silent loss)."""
        self.detect("drop_state", r"device memory lost|DMA buffer lost",
                    lambda: self.migrate_loaded(arm=on_source("drop_state", "1")))

    def test_lie_data_size(self) -> None:
        """Reports 1 TiB as its stop-copy size (MIG_DATA_SIZE far from the truth)."""
        self.detect("lie_data_size 1 TiB", r"did not converge",
                    lambda: self.migrate_loaded(arm=on_source("lie_data_size", str(1 << 40)),
                                                        timeout=self.converge_timeout))

    def test_lie_precopy_info_stuck(self) -> None:
        """PRECOPY_INFO's initial_bytes never drops, with switchover-ack. QEMU 10.0
        counts the initial bytes down from what it read, so it switches over anyway:
        only its trace shows the device still announcing them."""
        self.capabilities["switchover-ack"] = True
        self.capabilities["return-path"] = True
        self.detect("lie_precopy_info stuck", r"initial bytes right after",
                    lambda: self.migrate_loaded(arm=on_source("lie_precopy_info", "stuck"),
                                                        timeout=self.converge_timeout))

    def test_lie_precopy_info_zero(self) -> None:
        """PRECOPY_INFO reports nothing pending while data is pending."""
        self.capabilities["switchover-ack"] = True
        self.capabilities["return-path"] = True
        self.detect("lie_precopy_info zero", r"under-reported",
                    lambda: self.migrate_loaded(arm=on_source("lie_precopy_info", "zero")))

    def test_delay_save(self) -> None:
        """Sleeps in the arc into STOP_COPY, 5 s longer than the downtime limit (a save
        too slow for the downtime the VM was promised)."""
        delay = min(int(self.parameters.get("downtime-limit", 300)) + 5000, 60000)
        self.log.info("delay_save_ms %d", delay)
        self.detect("delay_save_ms (downtime limit + 5 s)", r"downtime",
                    lambda: self.migrate_loaded(arm=on_source("delay_save_ms", str(delay))))

    def test_stale_state_on_close(self) -> None:
        """Keeps its migration state when closed (the bug of the kernel's mtty sample)."""
        self.detect("stale_state_on_close", r"still in RESUMING",
                    lambda: self.reuse_after_failed_destination(
                        arm=lambda device: device.arm("stale_state_on_close", "1")))

    def test_refuse_reset_fail(self) -> None:
        """VFIO_DEVICE_RESET fails, so ERROR cannot be left. QEMU 10.0 takes a failed
        reset for a hardware error and aborts: the VM is gone."""
        self.detect("refuse_reset fail", r"Failed resetting device",
                    lambda: self.recover_from_error(arm=lambda device: device.arm("refuse_reset", "fail")))

    def test_refuse_reset_ignore(self) -> None:
        """VFIO_DEVICE_RESET claims success and does nothing."""
        self.detect("refuse_reset ignore", r"still in ERROR",
                    lambda: self.recover_from_error(arm=lambda device: device.arm("refuse_reset", "ignore")))
