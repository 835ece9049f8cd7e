# SPDX-License-Identifier: GPL-2.0-or-later
"""Drive one live migration between two QEMU instances over QMP.

The destination waits with ``-incoming defer``; both sides get the same
capabilities and parameters; ``migrate`` starts it; the end is awaited through
``MIGRATION`` status events (never by polling), and ``query-migrate``'s
statistics are kept for the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .qemu import QemuInstance
from .qmp import Event

FINAL_STATES = {"completed", "failed", "cancelled"}


@dataclass
class MigrationResult:
    status: str
    error: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    harness_seconds: float = 0.0

    @property
    def total_ms(self) -> int | None:
        return self.stats.get("total-time")

    @property
    def downtime_ms(self) -> int | None:
        return self.stats.get("downtime")

    def summary(self) -> str:
        ram = self.stats.get("ram", {})
        vfio = self.stats.get("vfio", {})
        return (
            f"{self.status}: total {self.total_ms} ms, downtime {self.downtime_ms} ms, "
            f"ram {ram.get('transferred', 0) / 1e6:.1f} MB, vfio {vfio.get('transferred', 0)} B"
        )


def _set_capabilities(vm: QemuInstance, capabilities: dict[str, bool]) -> None:
    caps = [{"capability": k, "state": v} for k, v in capabilities.items()]
    vm.monitor.execute("migrate-set-capabilities", {"capabilities": caps})


def _wait_final(vm: QemuInstance, since: int, timeout: float) -> Event:
    """The first MIGRATION event at index >= since with a final status."""
    return vm.monitor.wait_event("MIGRATION", timeout=timeout, since=since,
                                 match=lambda e: e.data.get("status") in FINAL_STATES)


SAVE_DOWNTIME_MS = 60_000


def save_to_file(vm: QemuInstance, path: str, timeout: float = 600) -> MigrationResult:
    """Migrate a running VM into a file (it ends in postmigrate)."""
    _set_capabilities(vm, {"events": True})
    # Nobody waits on the VM while it is saved: let it stop at once rather than chase
    # dirty RAM (with a PCI function and type1's tracking, all of it is dirty each pass).
    vm.monitor.execute("migrate-set-parameters", {"downtime-limit": SAVE_DOWNTIME_MS})
    since = len(vm.monitor.events)
    started = time.time()
    vm.monitor.execute("migrate", {"uri": f"file:{path}"})
    final = _wait_final(vm, since, timeout)
    info = vm.monitor.execute("query-migrate")
    return MigrationResult(final.data["status"], str(info.get("error-desc", "")), info, started,
                           time.time() - started)


def restore_from_file(vm: QemuInstance, path: str, timeout: float = 600) -> None:
    """Load a saved VM into an incoming QEMU and wait until it runs."""
    since = len(vm.monitor.events)
    _set_capabilities(vm, {"events": True})
    vm.monitor.execute("migrate-incoming", {"uri": f"file:{path}", "exit-on-error": False})
    final = _wait_final(vm, since, timeout)
    if final.data["status"] != "completed":
        raise RuntimeError(f"{vm.name}: restoring {path} ended {final.data['status']}")
    vm.monitor.wait_event("RESUME", timeout=timeout, since=since)


def _device_running(device_id: str) -> Callable[[Event], bool]:
    return lambda e: e.data.get("device-id") == device_id and e.data.get("device-state") == "running"


class Migration:
    """One migration attempt. ``start()``, then ``wait()`` (or ``cancel()``)."""

    def __init__(
        self,
        source: QemuInstance,
        destination: QemuInstance,
        *,
        uri: str,
        capabilities: dict[str, bool] | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> None:
        self.source = source
        self.destination = destination
        self.uri = uri
        self.capabilities = {"events": True, **(capabilities or {})}
        self.parameters = parameters or {}
        self._source_mark = 0
        self._destination_mark = 0
        self._started = 0.0

    def start(self) -> None:
        for vm in (self.destination, self.source):
            _set_capabilities(vm, self.capabilities)
            if self.parameters:
                vm.monitor.execute("migrate-set-parameters", self.parameters)
        self._source_mark = len(self.source.monitor.events)
        self._destination_mark = len(self.destination.monitor.events)
        # exit-on-error off: a failed destination stays up so its events and
        # state can still be read; we quit it ourselves.
        self.destination.monitor.execute(
            "migrate-incoming", {"uri": self.uri, "exit-on-error": False}
        )
        self._started = time.time()
        self.source.monitor.execute("migrate", {"uri": self.uri})

    def wait_for_status(self, status: str, timeout: float) -> Event:
        """Wait until the source reports ``status`` (e.g. 'active' before a cancel)."""
        return self.source.monitor.wait_event(
            "MIGRATION", timeout=timeout, since=self._source_mark,
            match=lambda e: e.data.get("status") in {status, *FINAL_STATES},
        )

    def cancel(self) -> None:
        self.source.monitor.execute("migrate_cancel")

    def wait(self, timeout: float = 300) -> MigrationResult:
        """Wait for the source's final status; on success also for the destination to run."""
        status = _wait_final(self.source, self._source_mark, timeout).data["status"]
        info = self.source.monitor.execute("query-migrate")
        if status == "completed":
            # The source is done once it has sent everything; the destination can
            # still reject what it got (a stream that fails to load).
            end = self.destination.monitor.wait_event(
                ("RESUME", "MIGRATION"), timeout=timeout, since=self._destination_mark,
                match=lambda e: e.name == "RESUME" or e.data.get("status") == "failed",
            )
            if end.name == "MIGRATION":
                refused = self.destination.monitor.execute("query-migrate")
                return MigrationResult(
                    status="failed",
                    error=f"destination failed to load: {refused.get('error-desc', '')}".strip(),
                    stats=info, started=self._started, harness_seconds=time.time() - self._started,
                )
            # Each device's last request (RUNNING) can come just after RESUME.
            for attachment in self.destination.devices:
                self.destination.monitor.wait_event(
                    "VFIO_MIGRATION", timeout=timeout, since=self._destination_mark,
                    match=_device_running(attachment.device_id),
                )
        return MigrationResult(
            status=status,
            error=str(info.get("error-desc", "")),
            stats=info,
            started=self._started,
            harness_seconds=time.time() - self._started,
        )

    def wait_destination_failed(self, timeout: float = 60) -> Event:
        """After a cancel/failure: the destination's own MIGRATION 'failed'."""
        return self.destination.monitor.wait_event(
            "MIGRATION", timeout=timeout, since=self._destination_mark,
            match=lambda e: e.data.get("status") == "failed",
        )
