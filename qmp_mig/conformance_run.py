# SPDX-License-Identifier: GPL-2.0-or-later
"""Which devices of a host configuration conformance checks, and one device's run:
two instances from its pool (a testbed gives them and takes them back), our own
VFIO user on the host, the checks, and the artifacts.

The targets are every ``[[device]]`` entry and, for our own test devices, every
flavour of them: each qmigdev mdev type (full, p2p, precopy, basic) and qmigpci
with each combination of flags. A ``[[device]]`` entry on the same functions as a
test device is checked once, as the test device.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import Config, DeviceConfig
from .conformance import Conformance, DeviceReport, OwnView, Result
from .devices import DeviceError
from .fsm import Flag
from .hosts import fetch
from .pools import PoolExhausted, pool_key
from .qmigdev import DRIVERS, Qmigdev, flag_attributes
from .testbed import Testbed
from .vfio_session import DirectDevice, HostVfio

FLAVOURS = {  # our test devices' flag sets, by the name qmigdev gives its mdev types
    "full": Flag.STOP_COPY | Flag.P2P | Flag.PRE_COPY,
    "p2p": Flag.STOP_COPY | Flag.P2P,
    "precopy": Flag.STOP_COPY | Flag.PRE_COPY,
    "basic": Flag.STOP_COPY,
}
_BAR2 = 2  # VFIO_PCI_BAR2_REGION_INDEX: qmigdev's device memory


@dataclass(frozen=True)
class Target:
    """One device to check: ``name`` is what ``--device`` selects; ``driver`` is
    qmigdev or qmigpci for our own test devices (they show their own state)."""

    name: str
    spec: DeviceConfig
    driver: str = ""


def targets(config: Config) -> list[Target]:
    found: list[Target] = []
    ours = {pool_key(t) for t in config.test_devices}
    for spec in config.devices:
        if pool_key(spec) in ours:
            continue  # checked below, as our test device
        name = spec.type if spec.kind == "mdev" else f"{spec.bind or 'pci'}-{(spec.bdfs or (spec.pf,))[0]}"
        found.append(Target(name, spec))
    for spec in config.test_devices:
        driver = DRIVERS[spec.kind]
        for flavour, flags in FLAVOURS.items():
            if spec.kind == "mdev":
                flavoured = dataclasses.replace(spec, type=f"{driver}-{flavour}", expect_flags=flags)
            else:
                flavoured = dataclasses.replace(
                    spec, attributes={**spec.attributes, **flag_attributes(flags, "pci")}, expect_flags=flags)
            found.append(Target(f"{driver}-{flavour}", flavoured, driver))
    return found


def select(config: Config, name: str | None) -> list[Target]:
    """The targets ``--device NAME`` picks (all without it); an unknown name is an error
    listing the known ones."""
    every = targets(config)
    if name is None:
        return every
    chosen = [t for t in every if name in (t.name, t.spec.kind)]
    if not chosen:
        raise ValueError(f"{config.path}: no device {name!r} to check; the configuration has "
                         f"{', '.join(t.name for t in every) or 'none'} (or a kind: mdev, pci)")
    return chosen


KNOWN = "conform:"  # known_issues keys that name conformance checks (a check or its start)


def known_failures(target: Target, report: DeviceReport) -> tuple[list[Result], list[str]]:
    """The failures not covered by the entry's known issues, and the known issues' reasons
    that cover the others."""
    known = {key[len(KNOWN):]: why for key, why in target.spec.known_issues.items() if key.startswith(KNOWN)}
    failures = report.failures()
    unknown = [r for r in failures if not any(r.check.startswith(k) for k in known)]
    reasons = sorted({why for k, why in known.items() if any(r.check.startswith(k) for r in failures)})
    return unknown, reasons


def own_view(target: Target, vfio: HostVfio) -> OwnView | None:
    """How our test devices show their state: qmigdev's device memory (BAR2), qmigpci's
    edu DMA buffer (copied in and out by the edu's own DMA engine)."""
    if target.driver == "qmigdev":
        def fill(device: DirectDevice) -> None:
            device.fill_region(_BAR2, seed=zlib.crc32(device.name.encode()))

        def digest(device: DirectDevice, _when: str) -> str:
            answer = device.region_digest(_BAR2)
            return f"BAR2 sha256 {answer.answer.get('sha256', answer.outcome())[:16]}"

        return OwnView("device memory (BAR2)", fill, digest)
    if target.driver == "qmigpci":
        edu = EduBuffer(vfio)
        return OwnView("the edu's DMA buffer", edu.fill, edu.digest)
    return None


class EduBuffer:
    """The edu's 4 KiB DMA buffer: state that only its DMA engine reaches. It is filled
    from, and copied out to, memory the host user maps into the devices' IOMMU."""

    # QEMU hw/misc/edu.c: BAR0 registers, the buffer's address, the command bits.
    SRC, DST, COUNT, COMMAND = 0x80, 0x88, 0x90, 0x98
    RUN, TO_RAM = 0x1, 0x2
    BUFFER, SIZE = 0x40000, 4096
    IN_PAGE, OUT_PAGE = 0x100000, 0x101000  # IOVAs of the host user's pages
    _BAR0, _CONFIG = 0, 7  # VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX

    def __init__(self, vfio: HostVfio) -> None:
        self.vfio = vfio
        self.mapped = False

    def fill(self, device: DirectDevice) -> None:
        self._map()
        self.vfio.dma_fill(self.IN_PAGE, zlib.crc32(device.name.encode()) or 1)
        self._copy(device, self.IN_PAGE, self.BUFFER, 0)

    def digest(self, device: DirectDevice, _when: str) -> str:
        self._map()
        self.vfio.dma_fill(self.OUT_PAGE, 0)
        problem = self._copy(device, self.BUFFER, self.OUT_PAGE, self.TO_RAM)
        answer = self.vfio.dma_digest(self.OUT_PAGE)
        return problem or f"DMA buffer sha256 {answer.answer.get('sha256', answer.outcome())[:16]}"

    def _map(self) -> None:
        if not self.mapped:
            self.vfio.map_dma(self.IN_PAGE, self.SIZE)
            self.vfio.map_dma(self.OUT_PAGE, self.SIZE)
            self.mapped = True

    def _copy(self, device: DirectDevice, source: int, destination: int, direction: int) -> str:
        """One transfer by the edu's engine; '' when it finished, else what went wrong."""
        command = device.region_read(self._CONFIG, 0x4, 2)  # PCI_COMMAND: memory and bus master on
        device.region_write(self._CONFIG, 0x4, 2, int(command.value or 0) | 0x6)
        for register, value in ((self.SRC, source), (self.DST, destination), (self.COUNT, self.SIZE)):
            device.region_write(self._BAR0, register, 8, value)
        device.region_write(self._BAR0, self.COMMAND, 8, self.RUN | direction)
        # The engine has no completion event without an interrupt: poll its RUN bit.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = device.region_read(self._BAR0, self.COMMAND, 8)
            if status.ok and not int(status.value) & self.RUN:
                return ""
            time.sleep(0.02)
        return f"the edu's DMA did not finish within 10 s ({device.name})"


def check_device(config: Config, target: Target, artifacts: Path, *,
                 arm: Callable[[Qmigdev], None] | None = None,
                 log: Callable[[str], None] = lambda _line: None) -> DeviceReport:
    """Run every check on ``target``; ``arm`` (for our test devices) arms a fault on the
    subject before it is opened. Leaves conformance.json, the calls made and the
    kernel's trace in ``artifacts``."""
    artifacts.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with Testbed(config, artifacts) as bed:
        try:
            devices, flags = bed.devices([target.spec, target.spec], holder=f"conformance {target.name}")
        except PoolExhausted:  # a pool of one: every check but the round trip
            devices, flags = bed.devices([target.spec], holder=f"conformance {target.name}")
        subject_device, peer_device = devices[0], (devices[1] if len(devices) > 1 else None)
        if arm is not None:
            arm(Qmigdev(bed.host, subject_device.sysfs_path, target.spec.kind))
        vfio = HostVfio(bed.host, bed.workdir)
        bed.lease_process(vfio.pid)
        try:
            subject = vfio.device("subject", subject_device.sysfs_path)
            peer = vfio.device("peer", peer_device.sysfs_path) if peer_device is not None else None
            pairs = [(subject, subject_device)] + ([(peer, peer_device)] if peer and peer_device else [])
            for device, held in pairs:
                opened = device.open()
                if not opened.ok:  # e.g. no /dev/vfio/vfio: a kernel with iommufd's cdev only
                    raise DeviceError(f"{held.name}: cannot open it through its IOMMU group and a type1 "
                                      f"container: {opened.outcome()} ({opened.answer.get('error')})")
            log(f"{target.name}: {subject_device.name} (subject), "
                f"{peer_device.name if peer_device else 'no second instance'} (peer), flags {flags[0].describe()}")
            checks = Conformance(subject, flags[0], peer=peer, view=own_view(target, vfio), log=log)
            checking = time.monotonic()
            checks.run()
            checks_seconds = time.monotonic() - checking
        finally:
            vfio.close()
            vfio.save_transcript(artifacts / "host_vfio.jsonl")
            fetch(bed.host, vfio.stderr_path, artifacts / "host_vfio.stderr")
        if bed.kernel.available:
            checks.judge_paths(bed.kernel.calls(), subject_device.kernel_name, vfio.pid)
            bed.kernel.save(f"{bed.workdir}/kernel.trace")
            fetch(bed.host, f"{bed.workdir}/kernel.trace", artifacts / "kernel.trace")
        else:
            checks.judge_paths(None, subject_device.kernel_name, vfio.pid, bed.kernel.reason)
    report = DeviceReport(target.name, flags[0].describe(), time.monotonic() - started, checks.results,
                          checks_seconds)
    (artifacts / "conformance.json").write_text(json.dumps(report.as_json(), indent=1))
    return report
