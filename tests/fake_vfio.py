# SPDX-License-Identifier: GPL-2.0-or-later
"""Our host-side VFIO user and the devices it opens, in-process, for testing
qmp_mig/conformance.py without a host, a kernel or a device.

:class:`FakeHostVfio` answers ``call(op, **args)`` as
:class:`qmp_mig.vfio_session.HostVfio` does: the answer of the same-named
``op_`` of :class:`qmp_mig.host_vfio.Server` with ``"ok": True``, or
``{"ok": False, "errno": N, "error": ...}`` for an OSError, and always ``t0`` and
``t1`` around the call. The ioctls, read() and write() land on a
:class:`FakeDevice`: a migration driver that follows the uAPI v2 text of
include/uapi/linux/vfio.h to the letter, unless a bug knob says otherwise. Each
knob (a keyword of :class:`FakeDevice`, off by default) is one class of bug seen
in real drivers, so a test can show that a check catches it.

The device's saved state is one stream: a header (magic, version, the length of
the memory that follows), the device memory (region :data:`MEMORY_REGION`), and
a CRC32 of everything before it, so a truncated or corrupted stream is detected
when RESUMING is left. As in the kernel's mtty sample, PRE_COPY offers the
header as its initial data and the rest follows when the device stops.

Like every in-tree driver, the device asks the kernel's helper before each arc;
those calls are recorded as :class:`~qmp_mig.kernel_trace.KernelCall` in
:attr:`FakeHostVfio.kernel_calls`, as the fprobe of qmp_mig/kernel_trace.py
would see them. Times come from a clock that ticks once per event, so a trace
entry always lies strictly inside the answer's ``t0``..``t1`` of its request.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from qmp_mig import fsm
from qmp_mig.fsm import Flag, State
from qmp_mig.kernel_trace import KernelCall
from qmp_mig.vfio_session import DirectDevice, HostVfio, HostVfioError

S = State
MEMORY_REGION = 2  # VFIO_PCI_BAR2_REGION_INDEX, where qmigdev keeps its device memory
MAGIC = b"FAKEVFIO"
VERSION = 1
_HEADER = struct.Struct("<8sIIQ")  # magic, version, reserved (0), length of the memory that follows
_TRAILER = struct.Struct("<I")  # CRC32 of the header and the memory
_PRE_COPY_STATES = frozenset({S.PRE_COPY, S.PRE_COPY_P2P})
_SAVING_GROUP = frozenset({S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY})
# "These arcs begin the process of saving the device state and will return a new data_fd."
_SAVE_ARCS = frozenset({(S.RUNNING, S.PRE_COPY), (S.RUNNING_P2P, S.PRE_COPY_P2P), (S.STOP, S.STOP_COPY)})
_VFIO_DEVICE_FLAGS_RESET = 1 << 0
_VFIO_DEVICE_FLAGS_PCI = 1 << 1


def _fail(code: int, why: str) -> OSError:
    return OSError(code, why)


class Stream:
    """The device's saved state as one stream: a header (magic, version, a reserved
    zero, the length of the memory that follows), the memory, and a CRC32 of both,
    so that a truncated or corrupted stream is found when it is loaded."""

    @staticmethod
    def header(memory: bytes) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, 0, len(memory))

    @staticmethod
    def rest(memory: bytes) -> bytes:
        """What follows the header: the memory, then the CRC32 of header and memory."""
        return memory + _TRAILER.pack(zlib.crc32(Stream.header(memory) + memory))

    @staticmethod
    def memory_of(stream: bytes, length: int, *, check_crc: bool = True) -> bytes:
        """The memory in ``stream``, a whole stream of ``length`` bytes of memory; EINVAL if not."""
        if len(stream) < _HEADER.size + _TRAILER.size:
            raise _fail(errno.EINVAL, f"a stream of {len(stream)} bytes is truncated")
        magic, version, reserved, carried = _HEADER.unpack_from(stream)
        if magic != MAGIC or version != VERSION or reserved != 0:
            raise _fail(errno.EINVAL, "not a stream of this device (bad header)")
        if carried != length:
            raise _fail(errno.EINVAL, f"a stream of {carried} bytes of memory does not fit this device")
        if len(stream) != _HEADER.size + length + _TRAILER.size:
            raise _fail(errno.EINVAL, f"the stream is {len(stream)} bytes, its header says otherwise")
        (crc,) = _TRAILER.unpack_from(stream, len(stream) - _TRAILER.size)
        if check_crc and crc != zlib.crc32(stream[:-_TRAILER.size]):
            raise _fail(errno.EINVAL, "the stream is corrupted (CRC32)")
        return stream[_HEADER.size:_HEADER.size + length]


@dataclass(eq=False)
class DataFile:
    """One data transfer session (the file behind a data_fd): a saving one is read,
    a resuming one is written. The device holds its own reference, so closing the
    fd does not end the session; leaving the state that owns it does (disabled)."""

    saving: bool
    data: bytearray = field(default_factory=bytearray)
    pos: int = 0  # bytes read so far (saving)
    initial: int = 0  # bytes of initial pre-copy data at the start of data
    disabled: bool = False

    def pending(self) -> int:
        return len(self.data) - self.pos


class FakeDevice:
    """A VFIO migration driver with migration ``flags`` and ``memory_size`` bytes of
    device memory. Every keyword after that is a bug knob, off by default:

    * ``stale_state_on_close``: keeps its migration state across close and open;
    * ``fail_arc=(cur, new, leave)``: that arc fails with EIO, the device staying
      where it was (``"stay"``) or going to ERROR (``"error"``);
    * ``accept_corrupt``: RESUMING -> STOP does not check the stream's CRC;
    * ``lie_data_size=N``: MIG_DATA_SIZE answers N whatever the stream's size;
    * ``precopy_info_stuck``: PRECOPY_INFO's initial_bytes never decreases;
    * ``precopy_info_zero``: PRECOPY_INFO answers 0/0 even while data is pending;
    * ``initial_as_dirty``: PRECOPY_INFO counts its initial data as dirty_bytes
      (initial_bytes 0, dirty_bytes what is pending: the total is still right);
    * ``eof_in_precopy``: a read with nothing pending in PRE_COPY returns 0, not
      ENOMSG (what mtty does);
    * ``refuse_reset``: VFIO_DEVICE_RESET fails with EIO (``"fail"``) or answers
      ok and does nothing (``"ignore"``);
    * ``wrong_fd``: STOP -> STOP_COPY starts its session but returns no data_fd;
    * ``no_reset_flag``: VFIO_DEVICE_GET_INFO does not offer reset (the reset
      ioctl itself still works);
    * ``drop_state``: the saved stream leaves the device memory out (the device
      restores whatever it is given: nothing).
    """

    def __init__(
        self,
        flags: Flag,
        *,
        memory_size: int = 64,
        stale_state_on_close: bool = False,
        fail_arc: tuple[State, State, Literal["stay", "error"]] | None = None,
        accept_corrupt: bool = False,
        lie_data_size: int | None = None,
        precopy_info_stuck: bool = False,
        precopy_info_zero: bool = False,
        initial_as_dirty: bool = False,
        eof_in_precopy: bool = False,
        refuse_reset: Literal["fail", "ignore"] | None = None,
        wrong_fd: bool = False,
        no_reset_flag: bool = False,
        drop_state: bool = False,
    ) -> None:
        self.flags = flags
        self.memory = bytearray(memory_size)
        self.state = S.RUNNING
        self.is_open = False
        self.saving: DataFile | None = None
        self.resuming: DataFile | None = None
        self.kernel_name = "fake"  # the name the kernel's trace gives it (FakeHostVfio sets it)
        # Called for each vfio_mig_get_next_state() the driver makes: (cur, new, return value).
        self.probe: Callable[[int, int, int], None] = lambda _cur, _new, _ret: None
        self.stale_state_on_close = stale_state_on_close
        self.fail_arc = fail_arc
        self.accept_corrupt = accept_corrupt
        self.lie_data_size = lie_data_size
        self.precopy_info_stuck = precopy_info_stuck
        self.precopy_info_zero = precopy_info_zero
        self.initial_as_dirty = initial_as_dirty
        self.eof_in_precopy = eof_in_precopy
        self.refuse_reset = refuse_reset
        self.wrong_fd = wrong_fd
        self.no_reset_flag = no_reset_flag
        self.drop_state = drop_state

    # --- open and close ---------------------------------------------------------------

    def open(self) -> None:
        if self.is_open:
            raise _fail(errno.EBUSY, "the fake has one user per device")
        self.is_open = True
        if not self.stale_state_on_close:
            self.state = S.RUNNING  # a new user finds a device that runs, with no session

    def close(self) -> None:
        self.end_sessions()
        self.is_open = False

    def end_sessions(self) -> None:
        for session in (self.saving, self.resuming):
            if session is not None:
                session.disabled = True
        self.saving = self.resuming = None

    # --- the migration state ----------------------------------------------------------

    def set_state(self, value: int) -> DataFile | None:
        """SET MIG_DEVICE_STATE: the request walked one arc at a time, asking the
        kernel's helper (fsm.next_step) for each; the session the last arc started."""
        try:
            new = State(value)
        except ValueError:
            new = S.ERROR  # a value the uAPI does not define (8 or more) is refused like ERROR
        if new == S.ERROR:  # "ERROR cannot be specified as a device state"
            self.probe(self.state, value, -errno.EINVAL)
            raise _fail(errno.EINVAL, f"{value} is not a state one can ask for")
        session = None
        while self.state != new:
            try:
                step = fsm.next_step(self.state, new, self.flags)
            except fsm.InvalidTransition as exc:
                self.probe(self.state, new, -errno.EINVAL)
                raise _fail(errno.EINVAL, str(exc)) from None
            self.probe(self.state, new, 0)
            session = self.arc(self.state, step)
            self.state = step  # only once the arc is done: a failed arc stays where it was
        return session

    def arc(self, cur: State, new: State) -> DataFile | None:
        """One arc of the FSM, as the uAPI describes it; the new session, if it starts one."""
        if self.fail_arc is not None and self.fail_arc[:2] == (cur, new):
            if self.fail_arc[2] == "error":
                self.state = S.ERROR
            raise _fail(errno.EIO, f"the arc {cur.name}->{new.name} failed (bug knob)")
        if (cur, new) in _SAVE_ARCS:
            self.saving = DataFile(saving=True, data=bytearray(self.header()))
            self.saving.initial = len(self.saving.data)
            if new == S.STOP_COPY:
                self.saving.data += self.rest_of_stream()
            if self.wrong_fd and (cur, new) == (S.STOP, S.STOP_COPY):
                return None
            return self.saving
        if new == S.STOP_COPY:  # PRE_COPY(_P2P) -> STOP_COPY: the same session streams the rest
            assert self.saving is not None
            self.saving.data += self.rest_of_stream()
            return None
        if cur in _SAVING_GROUP and new not in _SAVING_GROUP:  # "will terminate a data transfer session"
            self.end_sessions()
            return None
        if (cur, new) == (S.STOP, S.RESUMING):
            self.resuming = DataFile(saving=False)
            return self.resuming
        if (cur, new) == (S.RESUMING, S.STOP):
            assert self.resuming is not None
            self.load(bytes(self.resuming.data))  # a refused stream leaves the device in RESUMING
            self.end_sessions()
            return None
        return None  # the arcs that only change how the device runs: nothing the fake models

    # --- the saved state --------------------------------------------------------------

    def saved_memory(self) -> bytes:
        return b"" if self.drop_state else bytes(self.memory)

    def header(self) -> bytes:
        return Stream.header(self.saved_memory())

    def rest_of_stream(self) -> bytes:
        return Stream.rest(self.saved_memory())

    def stream_length(self) -> int:
        return len(self.header()) + len(self.rest_of_stream())

    def load(self, stream: bytes) -> None:
        """RESUMING -> STOP: "perform final validity and consistency checking"."""
        memory = Stream.memory_of(stream, len(self.saved_memory()), check_crc=not self.accept_corrupt)
        self.memory[:len(memory)] = memory

    # --- the data fd ------------------------------------------------------------------

    def read(self, session: DataFile, size: int) -> bytes:
        if not session.saving:
            raise _fail(errno.EBADF, "a resuming data_fd is write-only")
        if session.disabled:
            raise _fail(errno.ENODEV, "the session has ended")
        if session.pending() == 0 and self.state in _PRE_COPY_STATES:
            if self.eof_in_precopy:
                return b""
            raise _fail(errno.ENOMSG, "nothing pending in pre-copy (a temporary end of stream)")
        data = bytes(session.data[session.pos:session.pos + size])
        session.pos += len(data)
        return data  # in STOP_COPY, b"" at the end: the permanent end of stream

    def write(self, session: DataFile, data: bytes) -> int:
        if session.saving:
            raise _fail(errno.EBADF, "a saving data_fd is read-only")
        if session.disabled:
            raise _fail(errno.ENODEV, "the session has ended")
        session.data += data
        return len(data)

    def precopy_info(self, session: DataFile) -> tuple[int, int]:
        """(initial_bytes, dirty_bytes): only the header is sent early, so nothing is dirtied."""
        if not session.saving:
            raise _fail(errno.ENOTTY, "a resuming data_fd has no ioctl")
        if self.state not in _PRE_COPY_STATES:
            raise _fail(errno.EINVAL, f"valid only in the PRE_COPY states, not {self.state.name}")
        if session.disabled:
            raise _fail(errno.ENODEV, "the session has ended")
        if self.precopy_info_zero:
            return 0, 0
        if self.initial_as_dirty:
            return 0, session.pending()
        if self.precopy_info_stuck:
            return session.initial, 0
        return max(0, session.initial - session.pos), 0

    # --- the other ioctls -------------------------------------------------------------

    def data_size(self) -> int:
        return self.stream_length() if self.lie_data_size is None else self.lie_data_size

    def reset(self) -> None:
        if self.refuse_reset == "fail":
            raise _fail(errno.EIO, "reset failed (bug knob)")
        if self.refuse_reset == "ignore":
            return
        self.end_sessions()  # the migration state is forgotten; the memory stays, as in mtty
        self.state = S.RUNNING

    def region(self, index: int) -> bytearray:
        if index != MEMORY_REGION:
            raise _fail(errno.EINVAL, f"the fake has no region {index}")
        return self.memory


class FakeHostVfio:
    """In place of :class:`qmp_mig.vfio_session.HostVfio`, over the devices ``devices``
    (sysfs path -> device). ``answers``: how many calls it answers before it stops,
    like a host user stuck in a driver (None: all of them)."""

    def __init__(self, devices: dict[str, FakeDevice], *, answers: int | None = None) -> None:
        self.devices = devices
        self.answers = answers
        self.pid = 4242
        self.transcript: list[dict[str, Any]] = []
        self.kernel_calls: list[KernelCall] = []
        self.blobs: dict[str, bytes] = {}
        self.opened: dict[str, tuple[str, int | None]] = {}  # the controller's name -> (sysfs path, fd)
        self.sessions: dict[int, DataFile] = {}  # data_fd -> its session
        self.maps: dict[int, bytearray] = {}  # IOVA -> the memory mapped there
        self.running = True
        self._owner: dict[int, FakeDevice] = {}  # data_fd -> the device it belongs to
        self._next_fd = 3  # 0, 1, 2 are the process's own; fds are never reused
        self._clock = 1_000_000.0
        for path, device in devices.items():
            device.kernel_name = path.rstrip("/").rsplit("/", 1)[-1]
            device.probe = self._probe_of(device)

    # --- the HostVfio interface -------------------------------------------------------

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        request = {"op": op, **args}
        if not self.running:
            raise HostVfioError("fake host: host_vfio is no longer running")
        if self.answers is not None:
            if self.answers <= 0:
                self.transcript.append({"request": request, "answer": None, "problem": "timed out"})
                self.kill()
                raise HostVfioError(f"fake host: host_vfio gave no answer to {op} (it stopped answering)")
            self.answers -= 1
        t0 = self._tick()
        answer = self._answer(op, args)
        answer["t0"], answer["t1"] = t0, self._tick()
        self.transcript.append({"request": request, "answer": answer})
        if op == "bye":
            self.running = False
        return dict(answer)

    def _answer(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """As host_vfio.main() answers: OSError gives its errno, a bad request none."""
        handler = getattr(self, "op_" + op, None)
        if handler is None:
            return {"ok": False, "errno": None, "error": f"bad request {op}: no such op"}
        try:
            answer: dict[str, Any] = handler(**args)
        except OSError as exc:
            return {"ok": False, "errno": exc.errno,
                    "error": errno.errorcode.get(exc.errno or 0, "") + ": " + (exc.strerror or str(exc))}
        except (TypeError, KeyError, ValueError, IndexError) as exc:
            return {"ok": False, "errno": None, "error": f"bad request {op}: {exc!r}"}
        answer["ok"] = True
        return answer

    def device(self, name: str, sysfs_path: str) -> DirectDevice:
        # DirectDevice only ever uses .call(), which this class answers as HostVfio does.
        return DirectDevice(cast(HostVfio, self), name, sysfs_path)

    def kill(self) -> None:
        self.running = False

    def close(self) -> None:
        """As HostVfio's: ask it to exit; one that no longer answers is gone anyway."""
        with contextlib.suppress(HostVfioError):
            if self.running:
                self.call("bye")
        self.kill()

    # --- helpers ----------------------------------------------------------------------

    def _tick(self) -> float:
        self._clock += 1.0
        return self._clock

    def _probe_of(self, device: FakeDevice) -> Callable[[int, int, int], None]:
        def probe(cur: int, new: int, ret: int) -> None:
            self.kernel_calls.append(KernelCall(self._tick(), self.pid, self.pid, device.kernel_name,
                                                int(cur), int(new), ret))
        return probe

    def _device(self, dev: str) -> FakeDevice:
        path, fd = self.opened[dev]
        if fd is None:
            raise _fail(errno.EBADF, f"device {dev} is closed")
        return self.devices[path]

    def _session(self, fd: int) -> tuple[FakeDevice, DataFile]:
        if fd not in self.sessions:
            raise _fail(errno.EBADF, f"no data_fd {fd}")
        return self._owner[fd], self.sessions[fd]

    def _new_fd(self) -> int:
        fd, self._next_fd = self._next_fd, self._next_fd + 1
        return fd

    # --- the ops of host_vfio.Server --------------------------------------------------

    def op_open(self, dev: str, path: str) -> dict[str, Any]:
        if path not in self.devices:
            raise _fail(errno.ENODEV, f"no device at {path}")
        self.devices[path].open()
        fd = self._new_fd()
        self.opened[dev] = (path, fd)
        return {"fd": fd}

    def op_close(self, dev: str) -> dict[str, Any]:
        path, fd = self.opened[dev]
        if fd is not None:
            self.devices[path].close()
        self.opened[dev] = (path, None)
        return {}

    def op_get(self, dev: str, feature: str) -> dict[str, Any]:
        device = self._device(dev)
        answers: dict[str, Callable[[], int]] = {
            "migration": lambda: int(device.flags),
            "state": lambda: int(device.state),
            "data_size": device.data_size,
        }
        return {"value": answers[feature]()}

    def op_set_state(self, dev: str, state: int) -> dict[str, Any]:
        device = self._device(dev)
        session = device.set_state(state)
        if session is None:
            return {"data_fd": -1}
        fd = self._new_fd()
        self.sessions[fd], self._owner[fd] = session, device
        return {"data_fd": fd}

    def op_info(self, dev: str) -> dict[str, Any]:
        device = self._device(dev)
        flags = _VFIO_DEVICE_FLAGS_PCI | (0 if device.no_reset_flag else _VFIO_DEVICE_FLAGS_RESET)
        return {"reset": bool(flags & _VFIO_DEVICE_FLAGS_RESET), "flags": flags, "regions": 9, "irqs": 5}

    def op_reset(self, dev: str) -> dict[str, Any]:
        self._device(dev).reset()
        return {}

    def op_region_fill(self, dev: str, index: int, seed: int, limit: int = 1 << 16) -> dict[str, Any]:
        region = self._device(dev).region(index)
        size = min(len(region), limit)
        pattern = hashlib.shake_256(str(seed).encode()).digest(size)
        region[:size] = pattern
        return {"n": size, "sha256": hashlib.sha256(pattern).hexdigest()}

    def op_region_digest(self, dev: str, index: int, limit: int = 1 << 16) -> dict[str, Any]:
        data = bytes(self._device(dev).region(index)[:limit])
        return {"n": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def op_region_read(self, dev: str, index: int, offset: int, width: int) -> dict[str, Any]:
        region = self._device(dev).region(index)
        if offset + width > len(region):
            raise _fail(errno.EINVAL, f"{width} bytes at {offset:#x} are past region {index}")
        return {"value": int.from_bytes(region[offset:offset + width], "little")}

    def op_region_write(self, dev: str, index: int, offset: int, width: int, value: int) -> dict[str, Any]:
        region = self._device(dev).region(index)
        if offset + width > len(region):
            raise _fail(errno.EINVAL, f"{width} bytes at {offset:#x} are past region {index}")
        region[offset:offset + width] = value.to_bytes(width, "little")
        return {}

    # --- memory the devices may DMA to (no fake device does DMA) ----------------------

    def op_map_dma(self, iova: int, size: int) -> dict[str, Any]:
        if not any(fd is not None for _, fd in self.opened.values()):
            raise _fail(errno.ENODEV, "no device open: the container has no IOMMU yet")
        self.maps[iova] = bytearray(size)
        return {}

    def op_dma_fill(self, iova: int, seed: int) -> dict[str, Any]:
        memory = self.maps[iova]
        memory[:] = hashlib.shake_256(str(seed).encode()).digest(len(memory)) if seed else bytes(len(memory))
        return {"sha256": hashlib.sha256(memory).hexdigest()}

    def op_dma_digest(self, iova: int) -> dict[str, Any]:
        return {"sha256": hashlib.sha256(self.maps[iova]).hexdigest()}

    # --- the data fd ------------------------------------------------------------------

    def op_precopy_info(self, fd: int) -> dict[str, Any]:
        device, session = self._session(fd)
        initial, dirty = device.precopy_info(session)
        return {"initial_bytes": initial, "dirty_bytes": dirty}

    def op_read(self, fd: int, size: int, blob: str | None = None) -> dict[str, Any]:
        device, session = self._session(fd)
        data = device.read(session, size)
        if blob is not None:
            self.blobs[blob] = self.blobs.get(blob, b"") + data
        return {"n": len(data)}

    def op_read_all(self, fd: int, blob: str, chunk: int = 1 << 20, limit: int = 1 << 32) -> dict[str, Any]:
        """As host_vfio's: read() until end of stream or an error, and say which."""
        device, session = self._session(fd)
        data, reads = bytearray(), 0
        try:
            while len(data) < limit:
                piece = device.read(session, chunk)
                reads += 1
                if not piece:
                    break
                data += piece
            end, end_errno = ("eof" if len(data) < limit else "limit"), 0
        except OSError as exc:
            end, end_errno = errno.errorcode.get(exc.errno or 0, str(exc.errno)), exc.errno or 0
        self.blobs[blob] = self.blobs.get(blob, b"") + bytes(data)
        return {"n": len(data), "reads": reads, "end": end, "end_errno": end_errno}

    def op_write(self, fd: int, blob: str, start: int = 0, end: int | None = None,
                 flip: Sequence[int] = ()) -> dict[str, Any]:
        """As host_vfio's: ``blob[start:end]``, each offset of ``flip`` inverted; a
        failed write() is part of the answer, not a failed call."""
        device, session = self._session(fd)
        data = bytearray(self.blobs[blob][start:end])
        for offset in flip:
            data[offset] ^= 0xFF
        try:
            written = device.write(session, bytes(data))
        except OSError as exc:
            return {"written": 0, "errno": exc.errno, "error": errno.errorcode.get(exc.errno or 0, "")}
        return {"written": written}

    def op_close_fd(self, fd: int) -> dict[str, Any]:
        self._session(fd)
        del self.sessions[fd], self._owner[fd]  # the device's own reference keeps the session
        return {}

    def op_blob(self, blob: str, dump: bool = False) -> dict[str, Any]:
        data = self.blobs.get(blob, b"")
        answer: dict[str, Any] = {"n": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if dump:
            answer["base64"] = base64.b64encode(data).decode()
        return answer

    def op_drop_blob(self, blob: str) -> dict[str, Any]:
        self.blobs.pop(blob, None)
        return {}

    def op_bye(self) -> dict[str, Any]:
        return {}
