# SPDX-License-Identifier: GPL-2.0-or-later
"""Our own VFIO user on a host, driven from here: the migration uAPI of a device
called directly, one ioctl or read() at a time, with no QEMU in between.

:class:`HostVfio` starts qmp_mig/host_vfio.py on the host (stdlib Python, JSON
lines over the process's stdin and stdout) and keeps a transcript of every call;
:class:`DirectDevice` is one device it has open, with a method per uAPI call.
Every method returns the :class:`Call` as made and as answered, failures
included: deciding whether an answer is right is qmp_mig/conformance.py's job.
"""

from __future__ import annotations

import contextlib
import errno as errno_module
import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fsm import as_state, state_text
from .hosts import Host, HostProcess

_SERVER = Path(__file__).with_name("host_vfio.py")


class HostVfioError(RuntimeError):
    """The host-side VFIO user did not start, or stopped answering."""


@dataclass(frozen=True)
class Call:
    """One call of the uAPI: what was asked (``ioctl``, ``args``) and the answer."""

    ioctl: str
    args: str
    answer: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.answer.get("ok"))

    @property
    def errno(self) -> int | None:
        return None if self.ok else self.answer.get("errno")

    @property
    def value(self) -> Any:
        return self.answer.get("value")

    @property
    def data_fd(self) -> int:
        return int(self.answer.get("data_fd", -1)) if self.ok else -1

    def outcome(self) -> str:
        """The answer in a person's words: ``ok``, ``ok, data_fd 7``, ``EINVAL``."""
        if not self.ok:
            return errno_name(self.errno) if self.errno is not None else str(self.answer.get("error"))
        shown = {k: v for k, v in self.answer.items() if k not in ("ok", "t0", "t1")}
        if "value" in shown and self.ioctl.endswith("MIG_DEVICE_STATE"):
            shown["value"] = state_text(as_state(shown["value"]))
        if shown.get("data_fd") == -1:
            shown["data_fd"] = "none"
        return "ok" + "".join(f", {k} {v}" for k, v in shown.items())

    def describe(self) -> str:
        return f"{self.ioctl}({self.args}) -> {self.outcome()}"


def errno_name(number: int | None) -> str:
    return errno_module.errorcode.get(number or 0, f"errno {number}")


class HostVfio:
    """host_vfio.py running on ``host`` (its stderr in ``workdir``); one per run of checks."""

    def __init__(self, host: Host, workdir: str, *, timeout: float = 30.0) -> None:
        self.host = host
        self.timeout = timeout
        self.script = f"{workdir}/host_vfio.py"
        self.stderr_path = f"{workdir}/host_vfio.stderr"
        self.transcript: list[dict[str, Any]] = []
        host.write_file(self.script, _SERVER.read_text())
        self._process: HostProcess | None = host.spawn(["python3", "-u", self.script],
                                                       stderr_path=self.stderr_path)
        self.pid = self._process.pid
        self._buffer = b""

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """One request and its answer; :class:`HostVfioError` if none comes in time."""
        if self._process is None:
            raise HostVfioError(f"{self.host.name}: host_vfio is no longer running")
        request = {"op": op, **args}
        stream = self._process.stream
        try:
            stream.sendall(json.dumps(request).encode() + b"\n")
            answer = json.loads(self._line(stream))
        except (OSError, ValueError, TimeoutError) as exc:
            self.transcript.append({"request": request, "answer": None, "problem": str(exc)})
            self.kill()
            raise HostVfioError(f"{self.host.name}: host_vfio gave no answer to {op} "
                                f"{_args(args)} within {self.timeout:.0f} s ({exc or type(exc).__name__}); "
                                "a driver stuck in the call looks like this") from None
        self.transcript.append({"request": request, "answer": answer})
        return dict(answer)

    def _line(self, stream: socket.socket) -> bytes:
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            stream.settimeout(left)
            chunk = stream.recv(65536)
            if not chunk:
                raise OSError("host_vfio exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def map_dma(self, iova: int, size: int) -> Call:
        """Memory of the host user's, mapped at ``iova`` for the devices it has open."""
        return Call("VFIO_IOMMU_MAP_DMA", f"iova {iova:#x}, {size} bytes", self.call("map_dma", iova=iova, size=size))

    def dma_fill(self, iova: int, seed: int) -> Call:
        """Fill mapped memory with the pattern of ``seed`` (0: zeros); answers its digest."""
        return Call("fill", f"iova {iova:#x}, pattern {seed}", self.call("dma_fill", iova=iova, seed=seed))

    def dma_digest(self, iova: int) -> Call:
        return Call("digest", f"iova {iova:#x}", self.call("dma_digest", iova=iova))

    def device(self, name: str, sysfs_path: str) -> DirectDevice:
        return DirectDevice(self, name, sysfs_path)

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process = None

    def close(self) -> None:
        """Ask it to close every fd and exit; kill it if it does not."""
        if self._process is None:
            return
        with contextlib.suppress(HostVfioError):
            self.call("bye")
        if self._process is not None:
            with contextlib.suppress(TimeoutError):
                self._process.wait(10)
            self.kill()

    def save_transcript(self, path: Path) -> None:
        path.write_text("".join(json.dumps(entry) + "\n" for entry in self.transcript))


def _args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in args.items())


class DirectDevice:
    """One VFIO device opened by :class:`HostVfio`, by the name the checks give it."""

    def __init__(self, vfio: HostVfio, name: str, sysfs_path: str) -> None:
        self.vfio = vfio
        self.name = name
        self.sysfs_path = sysfs_path

    def _call(self, ioctl: str, args: str, op: str, **params: Any) -> Call:
        return Call(ioctl, args, self.vfio.call(op, **params))

    def open(self) -> Call:
        return self._call("VFIO_GROUP_GET_DEVICE_FD", self.sysfs_path, "open", dev=self.name,
                          path=self.sysfs_path)

    def close(self) -> Call:
        return self._call("close", "device fd", "close", dev=self.name)

    def flags(self) -> Call:
        return self._call("VFIO_DEVICE_FEATURE GET MIGRATION", "", "get", dev=self.name, feature="migration")

    def state(self) -> Call:
        return self._call("VFIO_DEVICE_FEATURE GET MIG_DEVICE_STATE", "", "get", dev=self.name,
                          feature="state")

    def set_state(self, state: int) -> Call:
        return self._call("VFIO_DEVICE_FEATURE SET MIG_DEVICE_STATE", f"device_state={state_text(as_state(state))}",
                          "set_state", dev=self.name, state=int(state))

    def data_size(self) -> Call:
        return self._call("VFIO_DEVICE_FEATURE GET MIG_DATA_SIZE", "", "get", dev=self.name,
                          feature="data_size")

    def info(self) -> Call:
        return self._call("VFIO_DEVICE_GET_INFO", "", "info", dev=self.name)

    def reset(self) -> Call:
        return self._call("VFIO_DEVICE_RESET", "", "reset", dev=self.name)

    def precopy_info(self, fd: int) -> Call:
        return self._call("VFIO_MIG_GET_PRECOPY_INFO", f"data_fd {fd}", "precopy_info", fd=fd)

    def read(self, fd: int, size: int, blob: str | None = None) -> Call:
        return self._call("read", f"data_fd {fd}, {size} bytes", "read", fd=fd, size=size, blob=blob)

    def read_all(self, fd: int, blob: str) -> Call:
        return self._call("read", f"data_fd {fd}, to end of stream", "read_all", fd=fd, blob=blob)

    def write(self, fd: int, blob: str, start: int = 0, end: int | None = None,
              flip: Sequence[int] = ()) -> Call:
        what = f"bytes {start}..{'end' if end is None else end} of {blob}"
        if flip:
            what += f", inverted at {', '.join(map(str, flip))}"
        return self._call("write", f"data_fd {fd}, {what}", "write", fd=fd, blob=blob, start=start,
                          end=end, flip=list(flip))

    def close_fd(self, fd: int) -> Call:
        return self._call("close", f"data_fd {fd}", "close_fd", fd=fd)

    def fill_region(self, index: int, seed: int) -> Call:
        return self._call("pwrite", f"region {index}, pattern {seed}", "region_fill", dev=self.name,
                          index=index, seed=seed)

    def region_read(self, index: int, offset: int, width: int) -> Call:
        return self._call("pread", f"region {index} at {offset:#x}, {width} bytes", "region_read",
                          dev=self.name, index=index, offset=offset, width=width)

    def region_write(self, index: int, offset: int, width: int, value: int) -> Call:
        return self._call("pwrite", f"region {index} at {offset:#x}, {width} bytes, {value:#x}", "region_write",
                          dev=self.name, index=index, offset=offset, width=width, value=value)

    def region_digest(self, index: int) -> Call:
        return self._call("pread", f"region {index}", "region_digest", dev=self.name, index=index)
