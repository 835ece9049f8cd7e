# SPDX-License-Identifier: GPL-2.0-or-later
"""The kernel's own view of every migration arc, to check QEMU's events against.

Every in-tree VFIO migration driver (mtty, mlx5, hisi_acc, pds, …) walks a
request one arc at a time and asks ``vfio_mig_get_next_state(device, cur,
new, &next)`` before each arc. An fprobe there (BTF gives the arguments by
name) records, per device and per QEMU process, the state the device is in
and the state requested; consecutive calls of one device give its arcs.

Each testbed records into its own tracefs instance, so concurrent testbeds
and other users of ftrace do not disturb one another. Where the host has no
tracefs, no BTF or no permission, :class:`KernelTrace` says why and the tests
run on without the cross-check. Where the kernel has VFIO debugfs, the
device's current state is read from there too.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import fsm
from .fsm import Flag, State, as_state, state_text
from .hosts import Host

TRACEFS = "/sys/kernel/tracing"
GROUP = "qmpmig"
PROBES = (
    f"f:{GROUP}/migstep vfio_mig_get_next_state dev=device->dev->kobj.name:string cur=cur_fsm new=new_fsm",
    f"f:{GROUP}/migstepret vfio_mig_get_next_state%return ret=$retval",
)

_SETUP = """set -e
t={tracefs}
[ -d "$t/instances" ] || mount -t tracefs nodev "$t" 2>/dev/null || {{ echo "no tracefs at $t"; exit 3; }}
for probe in {probes}; do
    name=${{probe%% *}}; name=${{name#f:}}
    grep -q "^f:$name " "$t/dynamic_events" 2>/dev/null && continue
    echo "$probe" >> "$t/dynamic_events" 2>/dev/null || {{
        echo "cannot add probe $name: $(tail -n 2 "$t/error_log" 2>/dev/null | tr '\\n' ' ')"; exit 4; }}
done
mkdir "$t/instances/$1"
cd "$t/instances/$1"
echo tai > trace_clock          # TAI: wall-clock seconds plus the kernel's TAI offset (see tai_offset)
echo 1 > options/record-tgid
echo 4096 > buffer_size_kb
echo 1 > events/{group}/enable
"""

# " qemu-system-x86-399     (    376) [001] ...1. 1795386868.571617: migstep: (...) dev="x" cur=2 new=6"
_LINE = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<tid>\d+)\s+\(\s*(?P<tgid>\d+|-+)\)\s+\[\d+\]\s+\S+\s+"
    r"(?P<time>\d+\.\d+):\s+(?P<event>migstep|migstepret):\s+\([^)]*\)\s*(?P<args>.*)$"
)
_ARG = re.compile(r'(\w+)=("(?:[^"]*)"|\S+)')


@dataclass(frozen=True)
class KernelCall:
    """One call of vfio_mig_get_next_state: ``device`` is in ``cur``, asked for ``new``."""

    time: float  # host wall clock, seconds
    tgid: int  # the QEMU process
    tid: int
    device: str  # kernel name of the device: mdev UUID or PCI address
    cur: int
    new: int
    ret: int | None = None  # None when the return was not recorded


# The kernel's TAI clock runs ahead of UTC by its TAI offset: 0 until NTP or PTP with
# leap-second data sets it (37 s since 2017). Integral, so rounding removes the jitter.
_TAI_OFFSET = "import time; print(round(time.clock_gettime(time.CLOCK_TAI) - time.time()))"


def parse_trace(text: str, tai_offset: int = 0) -> list[KernelCall]:
    """Calls in the order the trace lists them, each with its return value; times on
    the host's wall clock (UTC), the trace's TAI stamps less ``tai_offset``."""
    calls: list[KernelCall] = []
    pending: dict[int, int] = {}  # tid -> index of its call awaiting a return
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        args = {k: v.strip('"') for k, v in _ARG.findall(match["args"])}
        tid = int(match["tid"])
        if match["event"] == "migstep":
            tgid = int(match["tgid"]) if match["tgid"].isdigit() else tid
            pending[tid] = len(calls)
            calls.append(KernelCall(float(match["time"]) - tai_offset, tgid, tid, args.get("dev", "?"),
                                    int(args["cur"]), int(args["new"])))
        elif tid in pending:
            index = pending.pop(tid)
            call = calls[index]
            calls[index] = KernelCall(call.time, call.tgid, call.tid, call.device, call.cur, call.new,
                                      int(args.get("ret", "0")))
    return calls


@dataclass
class KernelRequest:
    """One request as the kernel walked it: from ``path[0]`` towards ``target``."""

    target: State | int
    path: list[State | int] = field(default_factory=list)
    ok: bool = True  # False if the kernel refused a step
    times: list[float] = field(default_factory=list)
    reset: bool = False  # not a request: the device was found back in RUNNING (a reset)

    def describe(self) -> str:
        if self.reset:
            return "reset->RUNNING"
        return "->".join(state_text(s) for s in self.path)


def requests(calls: Sequence[KernelCall]) -> list[KernelRequest]:
    """Group one device's calls into requests and rebuild each request's path.

    A call's arc ends where the device's next call starts; the last call of
    all ends at its target unless the kernel refused it (negative return).
    """
    out: list[KernelRequest] = []
    every_arc = fsm.arcs(Flag.STOP_COPY | Flag.P2P | Flag.PRE_COPY)
    for index, call in enumerate(calls):
        cur, new = as_state(call.cur), as_state(call.new)
        if not out or out[-1].target != new or out[-1].path[-1] != cur or not out[-1].ok:
            out.append(KernelRequest(target=new, path=[cur]))
        request = out[-1]
        request.times.append(call.time)
        if call.ret is not None and call.ret < 0:
            request.ok = False
            continue
        following = calls[index + 1] if index + 1 < len(calls) else None
        if following and following.cur == State.RUNNING and (cur, State.RUNNING) not in every_arc:
            # No arc leads from here to RUNNING: the driver failed this arc (the probe
            # sees the request, not the driver's answer) and VFIO_DEVICE_RESET, which
            # this probe cannot see, brought the device back to RUNNING.
            request.ok = False
            out.append(KernelRequest(target=State.RUNNING, path=[State.RUNNING], reset=True,
                                     times=[following.time]))
            continue
        request.path.append(as_state(following.cur) if following else new)
    for request in out:
        if request.path[-1] != request.target:
            request.ok = False
    return out


def check_device(where: str, flags: Flag, calls: Sequence[KernelCall],
                 qemu_walk: Sequence[State]) -> list[str]:
    """Problems with one device's kernel walk: (a) arcs outside the FSM,
    (b) requests not walked along a shortest path, (c) disagreement with QEMU."""
    problems: list[str] = []
    allowed = fsm.arcs(flags)
    walked = requests(calls)
    for request in walked:
        for a, b in zip(request.path, request.path[1:]):
            if (a, b) not in allowed:
                problems.append(f"{where}: kernel took arc {state_text(a)}->{state_text(b)}, not an arc of the FSM "
                                f"for {flags.describe()} (request {request.describe()})")
        start, target = request.path[0], request.target
        if request.ok and not request.reset and isinstance(start, State) and isinstance(target, State):
            try:
                shortest = fsm.shortest_path(start, target, flags)
            except fsm.InvalidTransition:
                shortest = []
            if len(request.path) != len(shortest):
                problems.append(
                    f"{where}: kernel walked {request.describe()} for a request of {state_text(target)}; "
                    f"the model's shortest path is {'->'.join(s.name for s in shortest) or 'none'}")
    kernel_view = [r.target for r in walked if r.ok]
    if kernel_view != list(qemu_walk):
        difference = fsm.first_difference(
            list(qemu_walk), [s for s in kernel_view if isinstance(s, State)]
        ) or "unknown states in the kernel's walk"
        problems.append(
            f"{where}: QEMU and the kernel disagree at {difference.replace('expected', 'QEMU').replace('observed', 'kernel')}\n"
            f"    QEMU events:     {fsm.format_walk(qemu_walk)}\n"
            f"    kernel requests: {' ; '.join(r.describe() + ('' if r.ok else ' (refused)') for r in walked) or '(none)'}"
        )
    return problems


class KernelTrace:
    """A tracefs instance on ``host`` recording every device's arcs."""

    def __init__(self, host: Host, instance: str, *, available: bool, reason: str = "",
                 tai_offset: int = 0) -> None:
        self.host = host
        self.instance = instance
        self.available = available
        self.reason = reason
        self.tai_offset = tai_offset

    @property
    def path(self) -> str:
        return f"{TRACEFS}/instances/{self.instance}"

    @classmethod
    def start(cls, host: Host, instance: str) -> KernelTrace:
        script = _SETUP.format(tracefs=TRACEFS, group=GROUP, probes=" ".join(shlex.quote(p) for p in PROBES))
        result = host.run(["sh", "-c", script, "sh", instance], check=False, timeout=60)
        if result.returncode != 0:
            reason = (result.stdout + result.stderr).strip().splitlines()
            stop_instance(host, f"{TRACEFS}/instances/{instance}")  # the script may have made it
            return cls(host, instance, available=False,
                       reason=reason[-1] if reason else f"setup exited {result.returncode}")
        offset = host.run(["python3", "-c", _TAI_OFFSET], check=False)
        if offset.returncode != 0 or not offset.stdout.strip().lstrip("-").isdigit():
            stop_instance(host, f"{TRACEFS}/instances/{instance}")
            return cls(host, instance, available=False,
                       reason=f"cannot read the kernel's TAI offset: {(offset.stderr or offset.stdout).strip()}")
        return cls(host, instance, available=True, tai_offset=int(offset.stdout))

    def calls(self) -> list[KernelCall]:
        if not self.available:
            return []
        return parse_trace(self.host.run(["cat", f"{self.path}/trace"], timeout=60).stdout, self.tai_offset)

    def save(self, text_path: str) -> None:
        """Copy the raw trace to a file on the host (for the artifacts)."""
        if self.available:
            self.host.run(["sh", "-c", 'cat "$1/trace" > "$2"', "sh", self.path, text_path], check=False)

    def stop(self) -> None:
        if self.available:
            stop_instance(self.host, self.path)
            self.available = False


def stop_instance(host: Host, path: str) -> None:
    """Disable and remove one tracefs instance (also used by the sweep)."""
    host.run(["sh", "-c", f'echo 0 > "$1/events/{GROUP}/enable"; rmdir "$1"', "sh", path],
             check=False, timeout=30)


def debugfs_state(host: Host, device: str) -> State | None:
    """The device's state from VFIO debugfs, where the kernel has it (CONFIG_VFIO_DEBUGFS)."""
    result = host.run(["cat", f"/sys/kernel/debug/vfio/{device}/migration/state"], check=False)
    text = result.stdout.strip().upper().replace("-", "_")
    if result.returncode != 0 or not text:
        return None
    try:
        return State[text]
    except KeyError:
        return None
