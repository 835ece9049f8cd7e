# SPDX-License-Identifier: GPL-2.0-or-later
"""The nested lab: a small Linux KVM host VM with kernel VFIO, mdev and mtty.

``up`` boots it from the cached lab image (TCG here, KVM where the host can),
waits until it answers SSH, decides how the guests inside will run (KVM on the
lab's own, emulated, SVM when it loads; TCG otherwise), and writes the host configuration file that the
tests read, so to them the lab is just another host over SSH. ``down`` kills
it; everything that ran inside (QEMUs, mdevs) dies with it. The root disk is
opened with snapshot=on, so the cached image is never modified.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from . import images
from .hosts import PDEATHSIG, SshHost

READY_MARKER = "qmp-mig-lab: ready"
LAB_SNAPSHOTS = "/mnt/snapshots"
LAB_NAME = "qmp-mig-lab"


class LabError(RuntimeError):
    """The lab could not be booted, reached or stopped."""


@dataclass
class LabState:
    pid: int
    ssh_port: int
    key: str
    lab_image: str
    guest_image: str
    console: str
    config: str
    started: float
    boot_seconds: float
    guest_accel: str = "tcg"
    owner_pid: int = 0  # the command that booted it and takes it down with it; 0: `lab up`
    host_key: str = ""  # its SSH host key, pinned (read from its image)


def state_dir() -> Path:
    return images.cache_dir() / "lab"


def _state_file() -> Path:
    return state_dir() / "state.json"


def _free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accel() -> str:
    """KVM only where it runs an ordinary guest; LAB_ACCEL overrides (e.g. 'tcg')."""
    return os.environ.get("QMP_MIG_LAB_ACCEL", "tcg")


def _alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return LAB_NAME.encode() in cmdline  # never mistake a recycled pid for the lab


def status() -> LabState | None:
    """The running lab, or None (a stale state file is removed)."""
    try:
        state = LabState(**json.loads(_state_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if _alive(state.pid):
        return state
    shutil.rmtree(state_dir(), ignore_errors=True)
    return None


def snapshot_store() -> Path:
    """Booted-guest snapshots outlive the lab: a second run skips the cold boot."""
    return images.cache_dir() / "snapshots"


# PCI functions the lab's guests get assigned, as a real KVM host has them: each behind
# its own PCIe root port (so VFIO can reset it with a secondary bus reset), all behind
# an emulated VT-d, so their DMA is translated and checked like a real function's.
EDU_FUNCTIONS = 4  # the two-device scenario holds four at once (two per VM)
# 40 address bits instead of edu's 28: a guest's RAM and the IOVA our driver borrows
# above it are then reachable (the lab loads qmigpci with edu_dma_bits to match).
EDU_DMA_BITS = 40
EDU_DMA_MASK = (1 << EDU_DMA_BITS) - 1


def _root_port(number: int) -> list[str]:
    return ["-device", f"pcie-root-port,id=rp{number},chassis={number},bus=pcie.0,addr={0x10 + number:#x}"]


def pci_functions() -> list[str]:
    """The lab's assignable functions; their BDFs in the lab are 0000:<bus>:00.0, the
    buses numbered in the order of the root ports (1..EDU_FUNCTIONS, then the igb)."""
    args = ["-device", "intel-iommu,intremap=on"]  # before any PCI device that uses it
    for number in range(1, EDU_FUNCTIONS + 1):
        args += [*_root_port(number), "-device", f"edu,bus=rp{number},dma_mask={EDU_DMA_MASK:#x}"]
    igb_port = EDU_FUNCTIONS + 1
    # The NIC only has to exist (the lab's init makes two SR-IOV VFs of it, on igbvf):
    # its port goes to a hub with nothing else on it.
    args += [*_root_port(igb_port), "-netdev", "hubport,id=igbnet,hubid=1",
             "-device", f"igb,bus=rp{igb_port},netdev=igbnet"]
    return args


IGB_PF = f"0000:{EDU_FUNCTIONS + 1:02x}:00.0"  # behind the root port after the edu functions


def edu_functions() -> list[str]:
    """The edu functions' addresses in the lab (bus N behind root port N)."""
    return [f"0000:{number:02x}:00.0" for number in range(1, EDU_FUNCTIONS + 1)]


def command_line(
    lab: Path, guest: Path, snapshots: Path, port: int, console: Path, memory: str = "3G"
) -> list[str]:
    return [
        "qemu-system-x86_64", "-name", LAB_NAME, "-machine", f"q35,accel={_accel()}",
        "-cpu", "max", "-smp", "2", "-m", memory, "-nodefaults", "-no-user-config",
        "-display", "none",
        "-kernel", str(lab / "vmlinuz"), "-initrd", str(lab / "initrd.img"),
        # iommu=pt: the lab's own devices keep direct DMA; only VFIO users get translation.
        "-append", "root=/dev/vda rw console=ttyS0 quiet intel_iommu=on iommu=pt",
        *pci_functions(),
        "-drive", f"file={lab / 'rootfs.img'},if=virtio,format=raw,snapshot=on",
        "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=net0,romfile=",
        "-virtfs", f"local,path={guest},mount_tag=guest,security_model=none,readonly=on",
        "-virtfs", f"local,path={snapshots},mount_tag=snapshots,security_model=none",
        "-serial", f"file:{console}",
    ]


def up(say: Callable[[str], None] = print, timeout: float = 300, *, owned: bool = False) -> LabState:
    """Boot the lab unless it is already up; return its state. An ``owned`` lab (booted
    for one command) dies with this process, even if the process is killed."""
    running = status()
    if running:
        current = {str(images.image_dir("lab")), str(images.image_dir("guest"))}
        if {running.lab_image, running.guest_image} != current:
            raise LabError(
                f"the running lab (pid {running.pid}) uses images older than the recipes "
                "in images/; run `qmp-mig lab down` and try again"
            )
        say(f"lab already up (pid {running.pid}, ssh port {running.ssh_port})")
        return running
    lab_image, guest_image = images.ensure("lab", say), images.ensure("guest", say)
    directory = state_dir()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    console, port = directory / "console.log", _free_local_port()
    snapshot_store().mkdir(parents=True, exist_ok=True)
    argv = command_line(lab_image, guest_image, snapshot_store(), port, console)
    say(f"booting lab ({_accel()}), ssh on 127.0.0.1:{port}")
    started = time.monotonic()
    with (directory / "qemu.stderr.log").open("wb") as stderr:
        # Its own session: no terminal signal reaches it; it goes down by `lab down`, or
        # with the command that owns it.
        process = subprocess.Popen(
            [*PDEATHSIG, *argv] if owned else argv,
            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, start_new_session=True
        )
    try:
        _wait_ready(process, console, directory / "qemu.stderr.log", timeout)
        key = str(lab_image / "id_ed25519")
        host_key = _host_key(lab_image)
        host = SshHost("127.0.0.1", port, key, name="lab", host_key=host_key)  # it really lets us in
        host.run(["sh", "-c", f"mkdir -p {LAB_SNAPSHOTS} && "
                  f"mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 snapshots {LAB_SNAPSHOTS}"])
        guest_accel = _guest_accel(host)
        host.close()
    except BaseException:
        _kill(process.pid, timeout=5)
        raise
    state = LabState(
        pid=process.pid, ssh_port=port, key=key, lab_image=str(lab_image),
        guest_image=str(guest_image), console=str(console), config=str(directory / "host.toml"),
        started=time.time(), boot_seconds=round(time.monotonic() - started, 1),
        guest_accel=guest_accel, owner_pid=os.getpid() if owned else 0, host_key=host_key,
    )
    _write_config(state)
    _state_file().write_text(json.dumps(asdict(state), indent=1))
    say(f"lab up in {state.boot_seconds:.1f} s (pid {state.pid}); guests inside run under {guest_accel}")
    return state


def _host_key(lab_image: Path) -> str:
    """The lab's SSH host key (``ssh-ed25519 AAAA...``), read from its image: the key
    made when the image was built is the only one the lab may present."""
    cached = lab_image / "host_ed25519.pub"
    if cached.exists():
        return cached.read_text().strip()
    with tempfile.TemporaryDirectory() as scratch:
        private = Path(scratch) / "host_key"
        subprocess.run(["debugfs", "-R", f"dump /etc/dropbear/dropbear_ed25519_host_key {private}",
                        str(lab_image / "rootfs.img")], capture_output=True, check=False)
        public = subprocess.run(["dropbearkey", "-y", "-f", str(private)], capture_output=True, text=True,
                                check=False).stdout
    line = next((" ".join(w.split()[:2]) for w in public.splitlines() if w.startswith("ssh-ed25519 ")), "")
    if not line:
        raise LabError(f"no SSH host key in {lab_image / 'rootfs.img'}; rebuild it: qmp-mig images build lab")
    cached.write_text(line + "\n")
    return line


def _guest_accel(host: SshHost) -> str:
    """How the guests inside the lab run: nested TCG unless QMP_MIG_GUEST_ACCEL=kvm.

    TCG emulates AMD SVM with nested paging for ``-cpu max``, so the lab's own
    kvm_amd loads and a guest runs under one level of translation instead of
    two: a cold guest boot takes about 20 s instead of 5 minutes. But twice in
    about 60 scenarios a lab CPU running such a guest stopped taking interrupts
    for good (RCU stall, soft lockup) and the lab was lost, so it is opt-in
    until that is understood. The optional SVM features that TCG emulates are
    turned off for it.
    """
    wanted = os.environ.get("QMP_MIG_GUEST_ACCEL", "tcg")
    if wanted not in ("tcg", "kvm"):
        raise LabError(f"QMP_MIG_GUEST_ACCEL={wanted!r}: expected 'tcg' or 'kvm'")
    if wanted == "tcg":
        return "tcg"
    probe = host.run(["sh", "-c", "modprobe kvm_amd nested=0 vgif=0 vls=0 lbrv=0 vnmi=0 2>&1 "
                      "&& test -c /dev/kvm"], check=False)
    if probe.returncode != 0:
        raise LabError(f"QMP_MIG_GUEST_ACCEL=kvm, but KVM does not load in the lab: {probe.stdout.strip()}")
    return "kvm"


def _wait_ready(process: subprocess.Popen[bytes], console: Path, stderr: Path, timeout: float) -> None:
    """Follow the console until the lab's init prints its ready marker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabError(
                f"lab QEMU exited with {process.returncode} while booting: "
                f"{stderr.read_text(errors='replace').strip()[-2000:]}"
            )
        if console.exists() and READY_MARKER in console.read_text(errors="replace"):
            return
        time.sleep(0.2)
    tail = console.read_text(errors="replace")[-2000:] if console.exists() else ""
    raise LabError(f"lab not ready after {timeout:.0f} s; console ends with:\n{tail}")


def _write_config(state: LabState) -> None:
    """The host configuration through which the tests see the lab."""
    guest_key = Path(state.guest_image) / "id_ed25519"
    if state.guest_accel == "kvm":
        # No SVM for the guest: with it QEMU migrates nested state, which this KVM then
        # refuses on the destination ("Failed to set nested state: Invalid argument").
        vm = 'accel = "kvm"\n# The lab\'s CPU as KVM exposes it, without SVM (no nested state to migrate).\ncpu = "host,svm=off"'
        workload = (32, 4, 0)
    else:
        vm = 'accel = "tcg"\n# With -cpu max the guest has RDRAND: no boot-time wait for entropy.\ncpu = "max"'
        # Paced: an unpaced rewriter keeps the nested vCPU busy, and every guest
        # command (each SSH login, each agent call) then takes several times longer.
        workload = (8, 1, 4)
    # The edu functions on qmigpci: a [[device]] pool and our PCI [[test_device]].
    functions = ", ".join(f'"{bdf}"' for bdf in edu_functions())
    edu_pool = f"""bdf = [{functions}]
bind = "qmigpci"
expect_flags = "STOP_COPY|P2P|PRE_COPY"
options = {{ "enable-migration" = "on", "x-device-dirty-page-tracking" = "off" }}"""
    Path(state.config).write_text(
        f"""# Written by `qmp-mig lab up`: the lab as a host over SSH.
[host]
kind = "ssh"
address = "127.0.0.1"
port = {state.ssh_port}
key = "{state.key}"
# The host key made when the lab image was built: any other is refused.
host_key = "{state.host_key}"
workdir = "/var/tmp/qmp-mig"
snapshot_dir = "{LAB_SNAPSHOTS}"

[vm]
{vm}
memory_mb = 256

[guest]
kernel = "/mnt/guest/vmlinuz"
initrd = "/mnt/guest/initrd.img"
key = "{guest_key}"
# The micro guest (guest kind "micro"): no OS, its agents answer over a serial port.
micro = "/mnt/guest/qmp-mig-micro.elf"
# init_on_free: freed pages are zero, and QEMU skips zero pages, so the booted-guest
# snapshot and every migration carry 64 MB instead of 100 (boot leaves that much garbage).
append = "console=ttyS0 quiet init_on_free=1"
# Scenarios restore a booted snapshot; the one cold boot takes ~20 s under the
# lab's KVM and 5 minutes under nested TCG.
boot_timeout = 1200

# In the lab every check must run: one that cannot fails its test.
[checks]
require = ["all"]

# Guest code runs under emulation here: keep the agents' work small.
[workload]
memory_mb = {workload[0]}
dirty_mb = {workload[1]}
dirty_rate_mb = {workload[2]}

# The kernel's mtty sample. Without IOMMUFD the kernel has no device dirty
# tracking, so QEMU must use the type1 container's, and be told migration is wanted.
[[device]]
kind = "mdev"
parent = "mtty"
type = "mtty-2"
expect_flags = "STOP_COPY|P2P|PRE_COPY"
options = {{ "enable-migration" = "on", "x-device-dirty-page-tracking" = "off" }}
# Real bugs of the sample, reported as expected failures by the reuse scenario and by
# conformance (`conform:` names the checks).
known_issues = {{ "reuse-after-failure" = "mtty keeps its migration state when the device is closed: after a failed incoming migration the mdev stays in RESUMING and the next QEMU cannot load into it", "conform:close in" = "mtty keeps its migration state when the device is closed (closed in RESUMING, the next RESUMING -> STOP dereferences its freed resume file: a kernel oops)", "conform:precopy read with nothing pending" = "mtty's read() returns 0, not ENOMSG, at the temporary end of its pre-copy stream", "conform:reset offered" = "mtty handles VFIO_DEVICE_RESET but does not set VFIO_DEVICE_FLAGS_RESET, so QEMU never resets it", "conform:round-trip corrupted payload refused" = "mtty checks only its stream's magic, version and length: a corrupted port state is loaded silently" }}

# The PCI path: the lab's edu functions (each behind its own root port, behind the
# emulated VT-d), lent to our variant driver (devices/qmigpci) for each scenario and
# given back (unbound) after it. Each QEMU gets its own function of the pool.
[[device]]
kind = "pci"
{edu_pool}

# The igb NIC's SR-IOV VFs lent to plain vfio-pci, which cannot migrate them: QEMU
# must refuse to migrate a VM that has one (the refusal scenario), and each VF goes
# back to igbvf afterwards.
[unmigratable_device]
kind = "pci"
pf = "{IGB_PF}"
vfs = "0-1"
bind = "vfio-pci"

# Our own test devices, built into the lab image, with the same fault knobs: the
# device tests and the detection suite run on the one of their variant's kind.
# qmigdev (devices/qmigdev): an mdev with DMA and P2P engines.
[[test_device]]
kind = "mdev"
parent = "qmigdev"
type = "qmigdev-full"
expect_flags = "STOP_COPY|P2P|PRE_COPY"
options = {{ "enable-migration" = "on", "x-device-dirty-page-tracking" = "off" }}

# qmigpci (devices/qmigpci): our vfio-pci variant driver, on the same edu functions
# as the PCI [[device]] above (a test uses one entry or the other, never both).
[[test_device]]
kind = "pci"
{edu_pool}
"""
    )


def _kill(pid: int, timeout: float) -> None:
    if not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


def down(say: Callable[[str], None] = print, timeout: float = 20) -> bool:
    """Stop the lab (SIGTERM, then SIGKILL after ``timeout``); True if one was running.
    Its disk is a snapshot, so nothing is lost by a hard stop."""
    state = status()
    if state is None:
        say("lab is not running")
        return False
    _kill(state.pid, timeout)
    shutil.rmtree(state_dir(), ignore_errors=True)
    say(f"lab down (pid {state.pid})")
    return True


def ssh_command(state: LabState, command: list[str]) -> list[str]:
    known = state_dir() / "known_hosts"
    known.write_text(f"[127.0.0.1]:{state.ssh_port} {state.host_key}\n")
    return [
        "ssh", "-i", state.key, "-p", str(state.ssh_port), "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known}", "-o", "LogLevel=ERROR", "root@127.0.0.1", *command,
    ]
