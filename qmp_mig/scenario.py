# SPDX-License-Identifier: GPL-2.0-or-later
"""The base of every Avocado scenario: a testbed, the variant's QEMU options,
the steps scenarios share, and what every test leaves behind.

Parameters (``-p key=value`` or a variants YAML):
  host_config      the host TOML (``qmp-mig run`` passes the lab's)
  device_kind      "mdev" or "pci": only the [[device]] entries of that kind (default: all)
  guest            "linux" (default: the Linux guest over SSH) or "micro" (our micro
                   guest over its serial port; the same agents, the same verdicts)
  memory_mb, dirty_mb, dirty_rate_mb   override the configuration's [workload]
  capabilities     table of migration capabilities for both sides
  parameters       table of migrate-set-parameters for both sides
  device_options   table of vfio-pci properties added to every device
(the tables come from a variants YAML: a mapping with that name under a variant)

At the end of each test, pass or fail, the test's artifacts directory gets
``timeline.txt``/``.svg``/``.json`` (QMP commands and replies, events, the
kernel's arcs and guest-agent marks, source and destination side by side)
next to each QEMU's transcript, stderr and console.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avocado import Test

from . import config as configuration
from . import fsm
from .agents import MTTY_PATTERN, EduAgent, MemoryAgent, MttyAgent
from .checks import (
    NOT_RUN_FILE,
    CheckFailed,
    check_bytes,
    check_edu,
    check_equal,
    check_memory,
    check_walk,
    describe_not_run,
)
from .config import GUEST_KINDS, DeviceConfig
from .fsm import Flag, State, as_state, state_text
from .host_loss import HostStoppedAnswering, host_lost
from .host_loss import record as record_host_loss
from .hosts import HostLost
from .migration import Migration, MigrationResult
from .qemu import QemuInstance
from .qemu_trace import save_sessions
from .testbed import KernelCheck, RunningVm, Testbed
from .timeline import Mark, marks_from_events, marks_from_transcript, write_timeline


@dataclass(frozen=True)
class EduVerdict:
    """What the guest read back from one edu function after a migration."""

    bdf: str
    report: dict[str, Any]

    def check(self, where: str) -> None:
        check_edu(f"{where}: edu {self.bdf}", self.report)


@dataclass
class Finding:
    """A check that failed in collecting mode, and its message."""

    check: str
    message: str


class MigrationTest(Test):
    """Shared set-up and steps; scenario classes add ``test_*`` methods."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, method in list(vars(cls).items()):
            if name.startswith("test") and callable(method):
                setattr(cls, name, _host_loss_named(method))

    def setUp(self) -> None:
        self.not_run: dict[str, str] = {}  # optional checks that could not run -> why
        self.edu_loaded: list[str] = []  # edu functions (guest BDFs) given a DMA load
        lost = host_lost()
        if lost is not None:
            self.cancel(f"not run: {lost.sentence()}")
        # A host_config parameter (-p or a variant), else what our Avocado plugin exports
        # from --qmp-mig-config (qmp_mig/avocado_plugin.py); the plugin refuses a job that
        # has neither, so this cancel is only seen where the plugin is not loaded.
        path = self.params.get("host_config", default=os.environ.get("QMP_MIG_HOST_CONFIG"))
        if not path:
            self.cancel("no host configuration: pass --qmp-mig-config FILE to avocado run "
                        "(qmp-mig run passes the lab's)")
        config = configuration.load(path)
        self.device_kind: str | None = self.params.get("device_kind", default=None)
        self.guest_kind = str(self.params.get("guest", default="linux"))
        # How long a migration that should converge may take before it is called stuck:
        # the micro guest's take under 2 s in the lab, the Linux guest's up to 20 s.
        self.converge_timeout = 30.0 if self.guest_kind == "micro" else 120.0
        if self.device_kind:  # the variant picks one kind of the configuration's device entries
            config = config.of_kind(self.device_kind)
        options = {k: str(v) for k, v in _table(self.params, "device_options").items()}
        if options:
            config = dataclasses.replace(config, devices=tuple(
                dataclasses.replace(d, options={**d.options, **options}) for d in config.devices))
        self.config = config
        absent = self.missing_guest(config) or self.missing(config)
        if absent:  # before anything is made on the host, so nothing can turn it into a pass
            self.cancel(absent)
        self.artifacts = Path(self.logdir) / "artifacts"
        self.marks: list[Mark] = []
        self.kernel_check: KernelCheck | None = None
        self.findings: list[Finding] = []
        self.collect = False  # detection tests run every check and keep what failed
        try:
            self.bed = Testbed(config, self.artifacts, guest=self.guest_kind)
        except HostLost as lost:
            raise self.host_loss(lost) from lost
        workload = config.workload
        self.memory_mb = int(self.params.get("memory_mb", default=workload.memory_mb))
        self.dirty_mb = int(self.params.get("dirty_mb", default=workload.dirty_mb))
        self.dirty_rate_mb = int(self.params.get("dirty_rate_mb", default=workload.dirty_rate_mb))
        self.agent_timeout = float(workload.agent_timeout)
        self.capabilities = {k: bool(v) for k, v in _table(self.params, "capabilities").items()}
        self.parameters: dict[str, Any] = _table(self.params, "parameters")
        if self.capabilities or self.parameters or options:
            self.log.info("variant: capabilities %s, parameters %s, device options %s",
                          self.capabilities, self.parameters, options)
        if not self.bed.kernel.available:
            self.could_not_run("kernel_cross_check", f"no kernel probes: {self.bed.kernel.reason}")

    def missing(self, config: configuration.Config) -> str | None:
        """Why this test cannot run with ``config`` (it is then cancelled), or None."""
        if self.device_kind and not config.devices:
            return (f"not run: the host configuration names no [[device]] of kind {self.device_kind!r} "
                    f"(this variant runs the scenario on that kind)")
        return None

    def missing_guest(self, config: configuration.Config) -> str | None:
        """Why the variant's guest kind cannot run with ``config``, or None."""
        if self.guest_kind not in GUEST_KINDS:
            raise ValueError(f"parameter guest: {self.guest_kind!r}; expected one of {', '.join(GUEST_KINDS)}")
        if self.guest_kind == "micro" and not config.guest.micro:
            return ("not run: the host configuration's [guest] has no micro (the micro guest's ELF); "
                    "this variant runs the scenario on the micro guest")
        return None

    def could_not_run(self, check: str, why: str) -> None:
        """An optional check that could not run fails the test when the configuration
        requires it ([checks] require; the lab requires all); otherwise it is listed
        (summary table, report, results.json) and never counted as a pass."""
        if self.config.require is not None and check in self.config.require:
            raise CheckFailed(f"{check} could not run: {why} ([checks] require names it)")
        if check not in self.not_run:
            self.log.info("check not run: %s: %s", check, why)
            self.not_run[check] = why

    def tearDown(self) -> None:
        if self.not_run:
            self.artifacts.mkdir(parents=True, exist_ok=True)
            (self.artifacts / NOT_RUN_FILE).write_text(json.dumps(self.not_run, indent=1))
            listed = describe_not_run(self.not_run)
            before = str(getattr(self, "whiteboard", "") or "")
            self.whiteboard = f"{before}\n{listed}" if before else listed
        if not hasattr(self, "bed"):
            return
        try:
            if self.kernel_check is None and self.bed.kernel.available:
                self.kernel_check = self.bed.check_kernel()  # for the timeline only
        except HostLost:
            pass  # the test itself said so (or the close below will)
        finally:
            vms = [qemu.name for qemu, _ in self.bed.vms]
            try:
                self.bed.close()  # QEMUs quit here and their transcripts land in artifacts
            except HostLost as lost:
                if not self.host_loss_reported:
                    raise self.host_loss(lost) from lost
            finally:
                self.write_timeline(vms)

    # --- a host that stopped answering --------------------------------------------

    host_loss_reported = False

    def host_loss(self, lost: HostLost) -> HostStoppedAnswering:
        """The loss in one sentence naming this test and its last step, recorded for
        the run (later tests are cancelled with it)."""
        doing = f"running (last step: \"{self.marks[-1].text}\")" if self.marks else "setting up"
        loss = record_host_loss(lost, f"{type(self).__name__}.{self._testMethodName}", doing)
        self.host_loss_reported = True
        return HostStoppedAnswering(loss.sentence())

    def lost_host(self, error: Exception) -> HostLost | None:
        """If ``error`` happened because the host under test stopped answering, that loss."""
        if isinstance(error, HostLost):
            return error
        bed = getattr(self, "bed", None)
        if bed is None:
            return None
        try:
            bed.host.check_answering()
        except HostLost as lost:
            return lost  # the test's own error follows from it (its traceback keeps both)
        return None

    # --- marks and the timeline -------------------------------------------------

    def mark(self, vm: str, text: str, kind: str = "guest", failed: bool = False) -> None:
        self.marks.append(Mark(time.time(), vm, kind, text, failed))
        self.log.info("%s: %s", vm, text)

    def step(self, check: str, action: Callable[..., None], *args: Any) -> bool:
        """Run one named check. It raises, unless the test collects (a detection
        test): then the failure is kept as a finding and the result is False."""
        try:
            action(*args)
            return True
        except CheckFailed as exc:
            if not self.collect:
                raise
            self.findings.append(Finding(check, str(exc).splitlines()[0]))
            self.mark("suite", f"{check}: {str(exc).splitlines()[0]}", kind="note", failed=True)
            return False

    def write_timeline(self, vms: list[str]) -> None:
        marks = list(self.marks)
        for name in vms:
            transcript = self.artifacts / f"{name}.qmp.jsonl"
            events = self.artifacts / f"{name}.events.json"
            if transcript.exists():
                marks += [m for m in marks_from_transcript(transcript) if m.kind != "event"]
            if events.exists():
                marks += marks_from_events(events, offset=self.bed.clock_offset)
        if self.kernel_check is not None:
            marks += self._kernel_marks(self.kernel_check)
        if marks:
            # The picture is drawn with the report (qmp_mig/report.py), once per run.
            write_timeline(marks, self.artifacts, svg=False)

    def _kernel_marks(self, check: KernelCheck) -> list[Mark]:
        names = {a.device.kernel_name: a.device_id for qemu, _ in self.bed.vms for a in qemu.devices}
        marks = []
        for vm, calls in check.calls.items():
            for call in calls:
                cur, new = state_text(as_state(call.cur)), state_text(as_state(call.new))
                failed = call.ret is not None and call.ret < 0
                marks.append(Mark(self.bed.to_controller_clock(call.time), vm, "kernel",
                                  f"{names.get(call.device, call.device)} {cur} (to {new})"
                                  + (f" refused {call.ret}" if failed else ""), failed))
        return marks

    # --- steps ----------------------------------------------------------------------

    def memory(self, vm: RunningVm) -> MemoryAgent:
        return MemoryAgent(vm.guest, timeout=self.agent_timeout)

    def load_guest(self, vm: RunningVm) -> dict[str, bytes]:
        """Start the memory agent, put known bytes into every mtty FIFO and start the
        DMA load on every edu function (the PCI test function of the lab)."""
        started = self.memory(vm).start(self.memory_mb, self.dirty_mb, self.dirty_rate_mb)
        pace = f" at {self.dirty_rate_mb} MB/s" if self.dirty_rate_mb else ""
        self.mark(vm.qemu.name, f"memory agent started: {started['pages']} pages, "
                  f"{started['dirty_pages']} rewritten continuously{pace}")
        fifo = {}
        mtty = MttyAgent(vm.guest)
        for port in mtty.ports():
            mtty.write(port, MTTY_PATTERN)
            fifo[f"{port.bdf}/{port.index}"] = MTTY_PATTERN
        if fifo:
            self.mark(vm.qemu.name, f"mtty FIFOs loaded: {', '.join(sorted(fifo))}")
        edu = EduAgent(vm.guest)
        for seed, bdf in enumerate(edu.functions(), start=1):
            started = edu.start(bdf, seed)
            self.edu_loaded.append(bdf)
            self.mark(vm.qemu.name, f"edu {bdf}: DMA load started, registers set (liveness "
                      f"{started.get('liveness')}, factorial {started.get('factorial')})")
        return fifo

    def loaded_source(self) -> tuple[RunningVm, dict[str, bytes], dict[str, list[State]]]:
        """A ready source with the guest loaded, and each device's walk so far
        (for scenarios that then check only what the migration attempt added)."""
        source = self.bed.boot("source")
        fifo = self.load_guest(source)
        return source, fifo, {d: source.qemu.vfio_walk(d) for d in source.flags}

    def verify_guest(self, vm: RunningVm, fifo: dict[str, bytes], where: str, edu: bool = True) -> None:
        """The memory agent's pages, every mtty FIFO and (``edu``) every edu load."""
        report = self.memory(vm).verify()
        self.mark(vm.qemu.name, f"memory verified: {report['pages']} pages, {report['rewrites']} "
                  f"rewrites during the run, {report['bad_pages']} bad", failed=report["bad_pages"] > 0)
        check_memory(where, report)
        agent = MttyAgent(vm.guest)
        for port in agent.ports():
            key = f"{port.bdf}/{port.index}"
            observed = agent.read(port)
            self.mark(vm.qemu.name, f"mtty {key} read back {len(observed)} bytes",
                      failed=observed != fifo.get(key))
            check_bytes(f"{where}: mtty {key}", fifo[key], observed)
        if edu:
            for verdict in self.verified_edu(vm):
                verdict.check(where)

    def verified_edu(self, vm: RunningVm) -> list[EduVerdict]:
        """Stop the DMA load on every edu function it was started on, and read back
        what survived (the verdict is the caller's to check)."""
        edu = EduAgent(vm.guest)
        seen = edu.functions()
        verdicts = []
        for bdf in self.edu_loaded:
            if bdf not in seen:
                raise CheckFailed(f"{vm.qemu.name}: edu {bdf} loaded before migration is gone from the guest")
            report = edu.verify(bdf)
            (self.artifacts / f"{vm.qemu.name}-edu-{bdf}.json").write_text(json.dumps(report, indent=1))
            self.mark(vm.qemu.name, f"edu {bdf}: {report.get('done')} records copied, {report.get('lost')} lost, "
                      f"{report.get('torn')} torn", failed=bool(report.get("lost") or report.get("torn")))
            verdicts.append(EduVerdict(bdf, report))
        return verdicts

    def start_migration(self, source: RunningVm, name: str = "destination", *,
                        specs: Sequence[DeviceConfig] | None = None, **overrides: Any) -> Migration:
        """Launch a destination (fresh devices from ``specs``, default the configuration's)
        and start migrating into it with the variant's options plus ``overrides``."""
        destination, _ = self.bed.launch(name, incoming=True, specs=specs)
        migration = Migration(
            source.qemu, destination, uri=self.bed.migration_uri(),
            capabilities={**self.capabilities, **overrides.get("capabilities", {})},
            parameters={**self.parameters, **overrides.get("parameters", {})},
        )
        migration.start()
        return migration

    def finish_migration(self, source: RunningVm, migration: Migration, timeout: float = 600,
                         result: MigrationResult | None = None) -> tuple[RunningVm, MigrationResult]:
        """Wait for the end (unless the caller has its ``result``), check it completed,
        and log into the destination."""
        result = result or migration.wait(timeout=timeout)
        self.log.info("migration %s", result.summary())
        self.whiteboard = result.summary()
        check_equal("migration", "status", "completed", f"{result.status} {result.error}".strip())
        self.step("PRECOPY_INFO", self.check_precopy_info, source)
        destination = migration.destination
        guest = self.bed.guest(destination)
        start = {d: fsm.destination_events(f) for d, f in source.flags.items()}
        return RunningVm(destination, guest, source.flags, start), result

    def migrate(self, source: RunningVm, name: str = "destination",
                **overrides: Any) -> tuple[RunningVm, MigrationResult]:
        return self.finish_migration(source, self.start_migration(source, name, **overrides))

    def throttled(self, source: RunningVm, name: str) -> Migration:
        """A migration slowed to 1 MiB/s, so that whatever we do to it lands while
        RAM is still being copied; waits until it is active."""
        migration = self.start_migration(source, name, parameters={"max-bandwidth": 1 << 20})
        migration.wait_for_status("active", timeout=120)
        return migration

    def paused_at_switchover(self, source: RunningVm, name: str, *,
                             specs: Sequence[DeviceConfig] | None = None) -> Migration:
        """A migration held at pre-switchover (pause-before-switchover): the source VM
        is stopped and its devices are on the stop-copy side, waiting for us."""
        migration = self.start_migration(source, name, specs=specs,
                                         capabilities={"pause-before-switchover": True})
        reached = migration.wait_for_status("pre-switchover", timeout=600).data["status"]
        if reached != "pre-switchover":
            error = source.qemu.monitor.execute("query-migrate").get("error-desc", "")
            raise CheckFailed(f"migration {reached} before it reached pre-switchover: {error}")
        self.mark(source.qemu.name, "paused before switchover", kind="note")
        for device_id, flags in source.flags.items():
            stopped = fsm.source_events(flags)[:-1]
            walk = source.qemu.vfio_walk(device_id)
            check_walk(f"{source.qemu.name} {device_id} (at pre-switchover)", stopped, walk[-len(stopped):])
        return migration

    def check_recovered(self, source: RunningVm, migration: Migration | None, status: str,
                        fifo: dict[str, bytes], boot_walk: dict[str, list[State]],
                        outcome: str = "cancelled") -> RunningVm:
        """After a migration that did not complete: it ended ``status``, the source
        devices walked back to running as the model's ``outcome`` says and the guest
        runs on; then a migration with the variant's own options succeeds and the
        guest is whole. ``migration`` None: the caller has already seen it end."""
        if migration is not None:
            result = migration.wait(timeout=120)
            self.mark(source.qemu.name, f"migration ended {result.status}: {result.error}", kind="note")
            check_equal("failed migration", "status", status, result.status)
        for device_id, flags in source.flags.items():
            expected = fsm.source_events(flags, outcome) if outcome else []
            booted = len(boot_walk[device_id])
            walk = source.qemu.settled_vfio_walk(device_id, booted + len(expected))[booted:]
            check_walk(f"{source.qemu.name} {device_id} (after {status})", expected, walk)
        check_equal(f"{source.qemu.name} after {status}", "run state", "running", source.qemu.status())
        agent = self.memory(source).status()
        check_equal(f"{source.qemu.name} after {status}", "memory agent alive", True, agent.get("alive"))
        self.check_kernel()
        # The failed attempt's own settings stay on the source: put the variant's back.
        destination, _ = self.migrate(source, name="recovery-destination",
                                      capabilities={"pause-before-switchover": False},
                                      parameters={"max-bandwidth": self.bandwidth()})
        check_equal("recovery destination", "run state", "running", destination.qemu.status())
        self.verify_guest(destination, fifo, f"after {status} + recovery migration")
        self.check_kernel()
        return destination

    def bandwidth(self) -> int:
        """The variant's bandwidth, else QEMU's default (a throttled attempt changed it)."""
        return int(self.parameters.get("max-bandwidth", 128 << 20))

    def check_migrated_walks(self, source: RunningVm, destination: RunningVm) -> None:
        """Both sides of a completed migration walked as the model says."""
        for device_id, flags in source.flags.items():
            check_device_walk(source.qemu, device_id,
                              source.expected_walk(device_id, fsm.source_events(flags)),
                              source.qemu.vfio_walk(device_id))
            check_device_walk(destination.qemu, device_id, fsm.destination_events(flags),
                              destination.qemu.vfio_walk(device_id))

    def check_precopy_info(self, source: RunningVm) -> None:
        """Each pre-copy device announced through PRECOPY_INFO what its data fd then
        gave (QEMU's trace of the source; see qemu_trace)."""
        names = {source.qemu.device_name(d): d for d, f in source.flags.items() if f & Flag.PRE_COPY}
        problems = []
        seen = set()
        for session in save_sessions(source.qemu.vfio_trace()):
            if session.device not in names:
                continue
            seen.add(session.device)
            where = f"{source.qemu.name} {names[session.device]}"
            self.log.info("pre-copy data of %s: %s", where, session.summary())
            problems += [f"{where}: {p}" for p in session.problems]
        unseen = [names[d] for d in names if d not in seen]
        if unseen:
            self.could_not_run("precopy_info", f"QEMU's vfio trace of {source.qemu.name} shows no pre-copy "
                               f"data for {', '.join(unseen)}")
        if problems:
            raise CheckFailed("\n".join(problems))

    def check_kernel(self) -> None:
        """The kernel's arcs for every VM so far agree with the FSM and with QEMU."""
        check = self.bed.check_kernel()
        self.kernel_check = check
        if not check.available:
            self.could_not_run("kernel_cross_check", f"no kernel probes: {check.reason}")
            return
        calls = sum(len(c) for c in check.calls.values())
        self.log.info("kernel cross-check: %d calls of vfio_mig_get_next_state", calls)
        if check.problems:
            raise CheckFailed("\n".join(check.problems))

    def known_issue(self, scenario: str) -> str | None:
        """Why this scenario is expected to fail with the configured devices, if it is."""
        reasons = [d.known_issues[scenario] for d in self.config.devices if scenario in d.known_issues]
        return "; ".join(reasons) or None


def _host_loss_named(method: Callable[..., Any]) -> Callable[..., Any]:
    """A test method whose failure, when the host under test stopped answering, is
    reported as that loss (once for the run) instead of the socket error it caused."""
    @functools.wraps(method)
    def run(self: MigrationTest, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as error:
            lost = self.lost_host(error)
            if lost is None:
                raise
            raise self.host_loss(lost) from error
    return run


def check_device_walk(qemu: QemuInstance, device_id: str, expected: Sequence[State],
                      observed: Sequence[State]) -> None:
    """check_walk, and when the walk differs, the error QEMU gave for that device
    (such as a failed arc it recovered from by a reset) on the first line."""
    try:
        check_walk(f"{qemu.name} {device_id}", expected, observed)
    except CheckFailed as exc:
        errors = qemu.device_errors(device_id)
        if not errors:
            raise
        first, _, details = str(exc).partition("\n")
        raise CheckFailed(f"{first} (QEMU: {errors[-1]})\n{details}") from None


def _table(params: Any, name: str) -> dict[str, Any]:
    """A variant's table: the keys of every parameter node named ``name``
    (a YAML mapping under a variant becomes such a node)."""
    table: dict[str, Any] = {}
    for path, key, value in params.iteritems():
        if str(path).rstrip("/").rsplit("/", 1)[-1] == name:
            table[str(key)] = value
    return table
