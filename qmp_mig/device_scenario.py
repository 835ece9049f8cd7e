# SPDX-License-Identifier: GPL-2.0-or-later
"""Scenarios with our own test devices: qmigdev (an mdev with DMA and P2P engines)
and qmigpci (our variant driver on the lab's edu functions). The guest puts DMA
load on them and verifies it record by record; the device's own account (state,
arcs, counters, the same sysfs layout for both) is read from the host.

A scenario here is a list of named checks. A normal test stops at the first
that fails; a detection test (a fault armed) runs them all and reports which
ones caught the fault, so the detection table can say fault -> check -> message.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import fsm
from .agents import EduAgent, QmigdevAgent
from .checks import CheckFailed, check_device_memory, check_equal, check_p2p, check_records, check_walk
from .config import Config, DeviceConfig
from .fsm import Flag, State
from .migration import Migration, MigrationResult
from .qemu import QemuInstance
from .qmigdev import Qmigdev, flag_attributes, fresh_account
from .scenario import Finding, MigrationTest
from .testbed import RunningVm

FULL = Flag.STOP_COPY | Flag.P2P | Flag.PRE_COPY
SEEDS = (0x51AD, 0x7E57)  # device-memory patterns, one per function
# Emulated guests stop for 100-200 ms with the default 300 ms limit; a device that
# takes seconds to save its state shows up far above this.
DOWNTIME_SLACK_MS = 1000


@dataclass
class DeviceLoad:
    """What the guest started on its test-device functions before the migration."""

    functions: list[str]
    seeds: dict[str, int] = field(default_factory=dict)
    p2p: tuple[str, str] | None = None
    edu: bool = False  # edu functions (qmigpci): the edu agent's load, verified as a whole


class DeviceTest(MigrationTest):
    """Base of the tests that need one of the host's ``[test_device]`` entries: the
    one of the variant's device kind (qmigdev for mdev, qmigpci for pci)."""

    def missing(self, config: Config) -> str | None:
        if not config.test_devices:
            if self.device_kind:
                return (f"the host configuration names no [test_device] of kind {self.device_kind!r} "
                        f"({'devices/qmigpci' if self.device_kind == 'pci' else 'devices/qmigdev'})")
            return "the host configuration names no [test_device] (devices/qmigdev or devices/qmigpci)"
        return None

    @property
    def test_spec(self) -> DeviceConfig:
        """The test device this test runs on: the variant's kind, else the first named."""
        return self.config.test_devices[0]

    # --- devices ----------------------------------------------------------------

    def device_specs(self, flags: Flag = FULL, count: int = 2) -> list[DeviceConfig]:
        """``count`` test-device instances that offer exactly ``flags``."""
        base = self.test_spec
        attributes = {**base.attributes, **flag_attributes(flags, base.kind), **fresh_account(base.kind)}
        spec = dataclasses.replace(base, attributes=attributes, expect_flags=flags)
        return [spec] * count

    def device_views(self, qemu: QemuInstance) -> list[Qmigdev]:
        return [Qmigdev(self.bed.host, a.device.sysfs_path, self.test_spec.kind) for a in qemu.devices]

    # --- load ------------------------------------------------------------------------

    def start_device_load(self, vm: RunningVm, p2p: bool = True, restart: bool = False) -> DeviceLoad:
        """qmigdev: DMA rings on every function, known device memory, and P2P from the
        first function into the second. edu: the edu agent's load on every function
        (``restart``: stopped and started again, as after a reset)."""
        if self.test_spec.kind == "pci":
            return self._start_edu_load(vm, restart)
        agent = QmigdevAgent(vm.guest)
        functions = agent.functions()
        check_equal(vm.qemu.name, "qmigdev functions in the guest", len(vm.qemu.devices), len(functions))
        load = DeviceLoad(functions)
        for bdf, seed in zip(functions, SEEDS):
            agent.mem_fill(bdf, seed)
            load.seeds[bdf] = seed
            agent.dma_start(bdf)
        if p2p and len(functions) > 1 and Flag.P2P in self.device_flags(vm):
            agent.p2p_start(functions[0], functions[1])
            load.p2p = (functions[0], functions[1])
        self.mark(vm.qemu.name, f"device load: DMA rings on {', '.join(functions)}"
                  + (f", P2P {load.p2p[0]} -> {load.p2p[1]}" if load.p2p else ""))
        return load

    def _start_edu_load(self, vm: RunningVm, restart: bool) -> DeviceLoad:
        """load_guest starts the edu load on every function; start it where it has not
        been, and again everywhere on ``restart``."""
        agent = EduAgent(vm.guest)
        functions = agent.functions()
        check_equal(vm.qemu.name, "edu functions in the guest", len(vm.qemu.devices), len(functions))
        for seed, bdf in enumerate(functions, start=1):
            if bdf in self.edu_loaded and not restart:
                continue
            if bdf in self.edu_loaded:
                agent.stop(bdf)
            agent.start(bdf, seed)
            if bdf not in self.edu_loaded:
                self.edu_loaded.append(bdf)
        self.mark(vm.qemu.name, f"device load: edu DMA load {'restarted' if restart else 'running'} "
                  f"on {', '.join(functions)}")
        return DeviceLoad(functions, edu=True)

    def device_flags(self, vm: RunningVm) -> Flag:
        return next(iter(vm.flags.values()))

    def verify_device_load(self, vm: RunningVm, load: DeviceLoad, where: str) -> None:
        """The guest's view: every DMA record, device memory, every P2P write (for the
        edu: records, registers and its DMA buffer)."""
        if load.edu:
            for verdict in self.verified_edu(vm):
                self.step("edu DMA, registers and buffer", verdict.check, where)
            return
        agent = QmigdevAgent(vm.guest)
        if load.p2p:
            sender, receiver = load.p2p
            report = agent.p2p_verify(sender, receiver)
            self._save(f"{where}-p2p.json", report)
            self.step("P2P records", check_p2p, f"{where}: P2P {sender} -> {receiver}", report)
        for bdf in load.functions:
            records = agent.dma_verify(bdf)
            self._save(f"{where}-dma-{bdf}.json", records)
            self.step("DMA records", check_records, f"{where}: {bdf}", records)
            memory = agent.mem_check(bdf, load.seeds[bdf])
            self._save(f"{where}-memory-{bdf}.json", memory)
            self.step("device memory", check_device_memory, f"{where}: {bdf}", memory)

    def check_device_view(self, qemu: QemuInstance, flags_of: dict[str, Flag]) -> None:
        """The device's own account (sysfs): only FSM arcs, the state QEMU last asked
        for, and nothing done while stopped or quiesced."""
        for attachment, device in zip(qemu.devices, self.device_views(qemu)):
            where = f"{qemu.name} {attachment.device_id} (device's view)"
            flags = flags_of[attachment.device_id]
            allowed = fsm.arcs(flags)
            arcs = device.arcs()
            bad = [a.describe() for a in arcs if not a.failed and (a.cur, a.new) not in allowed]
            failed = [a.describe() for a in arcs if a.failed]
            state = device.state()
            walk = qemu.vfio_walk(attachment.device_id)
            problems = device.misbehaviour()
            if bad:
                problems.append(f"arcs outside the FSM for {flags.describe()}: {', '.join(bad)}")
            if failed:
                problems.append(f"arcs that failed: {', '.join(failed)}")
            if walk and state != walk[-1]:
                problems.append(f"device is in {state.name}, QEMU's last request was {walk[-1].name}")
            if problems:
                self.step("device counters and arcs", _raise, f"{where}: " + "; ".join(problems))
            self._save(f"{qemu.name}-{attachment.device_id}.device.json",
                       {"state": state.name, "arcs": [a.describe() for a in arcs], "counters": device.counters()})

    def _save(self, name: str, report: object) -> None:
        """A report as JSON in the artifacts, under a name safe to type in a shell."""
        self.artifacts.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^\w.:-]+", "-", name)
        (self.artifacts / safe).write_text(json.dumps(report, indent=1))

    # --- the normal scenario -----------------------------------------------------------

    def migrate_loaded(self, *, flags: Flag = FULL,
                       arm: Callable[[RunningVm, Sequence[Qmigdev]], None] | None = None,
                       timeout: float = 600) -> RunningVm | None:
        """Boot, load the devices, migrate, and run every check on both sides.
        ``arm`` is called with the source and its devices just before the migration.
        Returns the destination, or None if the migration did not complete."""
        # QEMU migrates several VFIO devices only if all of them support P2P.
        specs = self.device_specs(flags, count=2 if flags & Flag.P2P else 1)
        source = self.bed.boot("source", specs=specs)
        self.load_guest(source)
        load = self.start_device_load(source)
        if arm is not None:
            arm(source, self.device_views(source.qemu))
        migration = self.start_migration(source, specs=specs)
        result = self._wait(migration, timeout)
        if not self.step("migration", _check_completed, result):
            self.step("PRECOPY_INFO", self.check_precopy_info, source)
            self.check_device_view(source.qemu, source.flags)
            return None
        assert isinstance(result, MigrationResult)
        destination, _ = self.finish_migration(source, migration, timeout=timeout, result=result)
        self.step("downtime", check_downtime, result, self.parameters)
        self.step("VFIO walks", self.check_migrated_walks, source, destination)
        self.verify_device_load(destination, load, "destination")
        self.step("guest RAM", self.verify_guest, destination, {}, "destination", False)
        self.check_device_view(source.qemu, source.flags)
        self.check_device_view(destination.qemu, destination.flags)
        self.step("kernel cross-check", self.check_kernel)
        return destination

    def recover_from_error(self, arm: Callable[[Qmigdev], None] | None = None) -> RunningVm | None:
        """The first device fails the arc into STOP_COPY and enters ERROR; QEMU must reset
        it to RUNNING, fail the migration and run on; DMA restarts and a second
        migration passes every check. ``arm`` adds a fault to that device first."""
        specs = self.device_specs(FULL)
        source = self.bed.boot("source", specs=specs)
        boot_walk = {d: source.qemu.vfio_walk(d) for d in source.flags}
        self.load_guest(source)
        self.start_device_load(source)
        first = self.device_views(source.qemu)[0]
        first.arm("fail_arc", "PRE_COPY_P2P->STOP_COPY error once")
        if arm is not None:
            arm(first)
        migration = self.start_migration(source, specs=specs)
        result = migration.wait(timeout=300)
        self.mark(source.qemu.name, f"migration ended {result.status}: {result.error}", kind="note")
        check_equal("migration with the failing device", "status", "failed", result.status)
        # The failed destination waits for another stream: end it, so its devices go
        # back to the pool for the recovery migration (a PCI pool may have only 4).
        migration.destination.shutdown()
        device_id = source.qemu.devices[0].device_id
        # QEMU reports the reset as a request of RUNNING, then resumes the VM.
        expected = [State.PRE_COPY, State.PRE_COPY_P2P, State.RUNNING, State.RUNNING_P2P, State.RUNNING]
        booted = len(boot_walk[device_id])
        self.step("VFIO walks", check_walk, f"{source.qemu.name} {device_id} (failed arc, reset)", expected,
                  source.qemu.settled_vfio_walk(device_id, booted + len(expected))[booted:])
        state, counters = first.state(), first.counters()
        if not self.step("device state after reset", _expect_state, f"{source.qemu.name} {device_id}",
                         State.RUNNING, state, f"after VFIO_DEVICE_RESET ({counters['resets']} reset(s), "
                         f"{counters['resets_refused']} refused)"):
            return None
        check_equal(source.qemu.name, "run state after the failed migration", "running", source.qemu.status())
        first.write("arcs", "clear")  # the failed arc was wanted; judge what follows
        self.step("kernel cross-check", self.check_kernel)
        # The reset turned the engines off and cleared their registers: start again.
        restarted = RunningVm(source.qemu, source.guest, source.flags,
                              {d: source.qemu.vfio_walk(d) for d in source.flags})
        load = self.start_device_load(restarted, restart=True)
        destination, _ = self.migrate(restarted, name="recovery-destination", specs=specs)
        self.step("VFIO walks", self.check_migrated_walks, restarted, destination)
        self.verify_device_load(destination, load, "after reset + migration")
        self.check_device_view(destination.qemu, destination.flags)
        self.step("kernel cross-check", self.check_kernel)
        return destination

    def reuse_after_failed_destination(self, arm: Callable[[Qmigdev], None] | None = None) -> None:
        """Kill the destination while it loads (held at pre-switchover, its devices in
        RESUMING); closing them must bring them back to RUNNING; then a new destination
        on the very same devices must take the migration."""
        specs = self.device_specs(FULL)
        source = self.bed.boot("source", specs=specs)
        self.load_guest(source)
        load = self.start_device_load(source)
        migration = self.paused_at_switchover(source, "destination", specs=specs)
        failed = migration.destination
        devices = self.device_views(failed)
        if arm is not None:
            for device in devices:
                arm(device)
        reuse = ([a.device for a in failed.devices], list(source.flags.values()))
        failed.kill()
        self.mark(failed.name, "destination killed while loading", kind="note")
        migration.cancel()
        for attachment, device in zip(failed.devices, devices):
            self.step("device state after close", _expect_state, f"{failed.name} {attachment.device_id}",
                      State.RUNNING, device.state(), "after its QEMU closed it")
        source.qemu.monitor.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "pause-before-switchover", "state": False}]})
        second, _ = self.bed.launch("second-destination", incoming=True, reuse=reuse)
        retry = Migration(source.qemu, second, uri=self.bed.migration_uri(),
                          capabilities=self.capabilities, parameters=self.parameters)
        retry.start()
        result = self._wait(retry, 300)
        if not self.step("migration into reused devices", _check_completed, result):
            return
        destination = RunningVm(second, self.bed.guest(second), source.flags,
                                {d: fsm.destination_events(f) for d, f in source.flags.items()})
        self.verify_device_load(destination, load, "reused destination")
        self.check_device_view(second, source.flags)

    def _wait(self, migration: Migration, timeout: float) -> MigrationResult | str:
        """The result, or why the migration never ended (it is cancelled then)."""
        try:
            return migration.wait(timeout=timeout)
        except TimeoutError:
            try:
                info = migration.source.monitor.execute("query-migrate", timeout=15)
            except TimeoutError as exc:
                # Seen with a device that reports a huge stop-copy size: QEMU keeps
                # iterating and its monitor starves. Killed now, it cannot flood the
                # rest of the test with events.
                migration.source.kill()
                return (f"migration did not converge in {timeout:.0f} s, and QEMU stopped answering "
                        f"({exc}); source killed")
            migration.cancel()
            ram = info.get("ram", {})
            return (f"migration did not converge in {timeout:.0f} s: still {info.get('status')} after "
                    f"{ram.get('dirty-sync-count', '?')} dirty syncs with {ram.get('remaining', '?')} bytes "
                    f"of RAM left; cancelled")


def _check_completed(result: MigrationResult | str) -> None:
    if isinstance(result, str):
        raise CheckFailed(result)
    if result.status != "completed":
        raise CheckFailed(f"migration {result.status}: {result.error}")


def check_downtime(result: MigrationResult, parameters: dict[str, Any]) -> None:
    """The VM was stopped about as long as the downtime limit allows. QEMU's limit is a
    target, not a promise: the check allows DOWNTIME_SLACK_MS on top of it."""
    limit = int(parameters.get("downtime-limit", 300))
    downtime = result.downtime_ms
    if downtime is None:
        raise CheckFailed("downtime unknown: QEMU reported none for a completed migration")
    if downtime > limit + DOWNTIME_SLACK_MS:
        raise CheckFailed(f"downtime {downtime} ms, over the {limit} ms limit by "
                          f"{downtime - limit} ms (allowed: {DOWNTIME_SLACK_MS} ms)")


def _expect_state(where: str, expected: State, observed: State, when: str) -> None:
    if observed != expected:
        raise CheckFailed(f"{where}: device still in {observed.name} {when}, expected {expected.name}")


def _raise(message: str) -> None:
    raise CheckFailed(message)


def write_detection(path: Path, fault: str, findings: Sequence[Finding]) -> None:
    path.write_text(json.dumps({"fault": fault, "caught": [dataclasses.asdict(f) for f in findings]},
                               indent=1))

