# SPDX-License-Identifier: GPL-2.0-or-later
"""A VFIO user of our own, run ON THE HOST that owns the devices: it opens them
itself (IOMMU group and a type1 container) and performs the migration uAPI's
calls one at a time, as the controller asks, with no QEMU in between.

It is shipped to the host and run by the host's ``python3`` (as a file for a
session of checks, as ``-c`` for a one-shot probe of a device's flags), so it uses
the standard library only. It speaks JSON lines on stdin and stdout: each request
``{"op": ..., ...}`` gets one answer, ``{"ok": true, ...}`` or ``{"ok": false,
"errno": N, "error": "..."}``. Every answer carries ``t0`` and ``t1``, the host's
wall clock around the call, so the controller can match the kernel's own trace
of the call to it. It decides nothing: which calls to make and what their answers
should be is the controller's business (qmp_mig/conformance.py).

Saved migration data stays on the host as named blobs, so a device's state can be
written into another device without crossing the wire.
"""

import base64
import ctypes
import errno
import fcntl
import hashlib
import json
import mmap
import os
import struct
import sys
import time

_VFIO = ord(";") << 8  # _IO(VFIO_TYPE, VFIO_BASE + n) == (';' << 8) | (100 + n)
VFIO_SET_IOMMU = _VFIO | 102
VFIO_GROUP_SET_CONTAINER = _VFIO | 104
VFIO_GROUP_GET_DEVICE_FD = _VFIO | 106
VFIO_DEVICE_GET_INFO = _VFIO | 107
VFIO_DEVICE_GET_REGION_INFO = _VFIO | 108
VFIO_DEVICE_RESET = _VFIO | 111
VFIO_IOMMU_MAP_DMA = _VFIO | 113
VFIO_DEVICE_FEATURE = _VFIO | 117
VFIO_MIG_GET_PRECOPY_INFO = _VFIO | 121
VFIO_TYPE1v2_IOMMU = 3
FEATURE_GET = 1 << 16
FEATURE_SET = 1 << 17
FEATURES = {"migration": 1, "state": 2, "data_size": 9}


class Server:
    def __init__(self):
        self.container = None
        self.groups = {}  # group number -> fd
        self.devices = {}  # name the controller gave -> (sysfs path, fd or None)
        self.blobs = {}  # name -> bytes
        self.maps = {}  # IOVA -> the mmap behind it, for a device's DMA

    # --- opening and closing devices ---------------------------------------

    def _group(self, path):
        group = int(os.path.basename(os.readlink(os.path.join(path, "iommu_group"))))
        if group not in self.groups:
            if self.container is None:
                self.container = os.open("/dev/vfio/vfio", os.O_RDWR)
            fd = os.open(f"/dev/vfio/{group}", os.O_RDWR)
            try:
                fcntl.ioctl(fd, VFIO_GROUP_SET_CONTAINER, struct.pack("i", self.container))
                if not self.groups:  # the IOMMU model is set once, with the first group
                    fcntl.ioctl(self.container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)
            except OSError:
                os.close(fd)
                raise
            self.groups[group] = fd
        return self.groups[group]

    def op_open(self, dev, path):
        group_fd = self._group(path)
        name = os.path.basename(os.path.realpath(path)).encode() + b"\0"
        fd = fcntl.ioctl(group_fd, VFIO_GROUP_GET_DEVICE_FD, bytearray(name), True)
        self.devices[dev] = (path, fd)
        return {"fd": fd}

    def _fd(self, dev):
        _path, fd = self.devices[dev]
        if fd is None:
            raise OSError(errno.EBADF, f"device {dev} is closed")
        return fd

    def op_close(self, dev):
        path, fd = self.devices[dev]
        if fd is not None:
            os.close(fd)
        self.devices[dev] = (path, None)
        return {}

    # --- the device's ioctls -------------------------------------------------

    def op_get(self, dev, feature):
        buf = bytearray(struct.pack("=IIQ", 16, FEATURE_GET | FEATURES[feature], 0))
        fcntl.ioctl(self._fd(dev), VFIO_DEVICE_FEATURE, buf, True)
        value = struct.unpack_from("=Q", buf, 8)[0]
        if feature == "state":
            value &= 0xFFFFFFFF  # the u32 device_state; data_fd is -1 on GET
        return {"value": value}

    def op_set_state(self, dev, state):
        buf = bytearray(struct.pack("=IIIi", 16, FEATURE_SET | FEATURES["state"], state, -1))
        fcntl.ioctl(self._fd(dev), VFIO_DEVICE_FEATURE, buf, True)
        return {"data_fd": struct.unpack_from("=i", buf, 12)[0]}

    def op_info(self, dev):
        buf = bytearray(struct.pack("=IIIIII", 24, 0, 0, 0, 0, 0))
        fcntl.ioctl(self._fd(dev), VFIO_DEVICE_GET_INFO, buf, True)
        flags, regions, irqs = struct.unpack_from("=III", buf, 4)
        return {"reset": bool(flags & 1), "flags": flags, "regions": regions, "irqs": irqs}

    def op_reset(self, dev):
        fcntl.ioctl(self._fd(dev), VFIO_DEVICE_RESET, 0)
        return {}

    def _region(self, dev, index):
        buf = bytearray(struct.pack("=IIIIQQ", 32, 0, index, 0, 0, 0))
        fcntl.ioctl(self._fd(dev), VFIO_DEVICE_GET_REGION_INFO, buf, True)
        size, offset = struct.unpack_from("=QQ", buf, 16)
        return size, offset

    def op_region_fill(self, dev, index, seed, limit=1 << 16):
        """Write a pattern made from ``seed`` over the first ``limit`` bytes of region
        ``index`` (a BAR) through the device fd; answers the pattern's digest."""
        size, offset = self._region(dev, index)
        size = min(size, limit)
        pattern = hashlib.shake_256(str(seed).encode()).digest(size)
        written = os.pwrite(self._fd(dev), pattern, offset)
        return {"n": written, "sha256": hashlib.sha256(pattern[:written]).hexdigest()}

    def op_region_digest(self, dev, index, limit=1 << 16):
        size, offset = self._region(dev, index)
        data = os.pread(self._fd(dev), min(size, limit), offset)
        return {"n": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def op_region_read(self, dev, index, offset, width):
        _size, base = self._region(dev, index)
        data = os.pread(self._fd(dev), width, base + offset)
        return {"value": int.from_bytes(data, "little")}

    def op_region_write(self, dev, index, offset, width, value):
        _size, base = self._region(dev, index)
        os.pwrite(self._fd(dev), value.to_bytes(width, "little"), base + offset)
        return {}

    # --- memory the devices may DMA to (the container's IOMMU) -------------

    def op_map_dma(self, iova, size):
        if self.container is None:
            raise OSError(errno.ENODEV, "no device open: the container has no IOMMU yet")
        memory = mmap.mmap(-1, size)
        vaddr = ctypes.addressof(ctypes.c_char.from_buffer(memory))
        buf = bytearray(struct.pack("=IIQQQ", 32, 3, vaddr, iova, size))  # READ | WRITE
        fcntl.ioctl(self.container, VFIO_IOMMU_MAP_DMA, buf, True)
        self.maps[iova] = memory
        return {}

    def op_dma_fill(self, iova, seed):
        memory = self.maps[iova]
        memory[:] = hashlib.shake_256(str(seed).encode()).digest(len(memory)) if seed else bytes(len(memory))
        return {"sha256": hashlib.sha256(memory[:]).hexdigest()}

    def op_dma_digest(self, iova):
        return {"sha256": hashlib.sha256(self.maps[iova][:]).hexdigest()}

    # --- the data fd ---------------------------------------------------------

    def op_precopy_info(self, fd):
        buf = bytearray(struct.pack("=IIQQ", 24, 0, 0, 0))
        fcntl.ioctl(fd, VFIO_MIG_GET_PRECOPY_INFO, buf, True)
        initial, dirty = struct.unpack_from("=QQ", buf, 8)
        return {"initial_bytes": initial, "dirty_bytes": dirty}

    def op_read(self, fd, size, blob=None):
        """One read(); with ``blob``, what it returns is appended to that blob."""
        data = os.read(fd, size)
        if blob is not None:
            self.blobs[blob] = self.blobs.get(blob, b"") + data
        return {"n": len(data)}

    def op_read_all(self, fd, blob, chunk=1 << 20, limit=1 << 32):
        """read() until end of stream or an error; the answer says which ended it."""
        data, reads = bytearray(), 0
        try:
            while len(data) < limit:
                piece = os.read(fd, chunk)
                reads += 1
                if not piece:
                    break
                data += piece
            end = "eof" if len(data) < limit else "limit"
            end_errno = 0
        except OSError as exc:
            end, end_errno = errno.errorcode.get(exc.errno or 0, str(exc.errno)), exc.errno or 0
        self.blobs[blob] = self.blobs.get(blob, b"") + bytes(data)
        return {"n": len(data), "reads": reads, "end": end, "end_errno": end_errno}

    def op_write(self, fd, blob, start=0, end=None, flip=()):
        """write() ``blob[start:end]``, each offset of ``flip`` inverted, until all is taken
        or write() fails; the answer says how much was taken."""
        data = bytearray(self.blobs[blob][start:end])
        for offset in flip:
            data[offset] ^= 0xFF
        written = 0
        try:
            while written < len(data):
                n = os.write(fd, data[written:written + (1 << 20)])
                if n <= 0:
                    break
                written += n
        except OSError as exc:
            return {"written": written, "errno": exc.errno,
                    "error": errno.errorcode.get(exc.errno or 0, str(exc.errno))}
        return {"written": written}

    def op_close_fd(self, fd):
        os.close(fd)
        return {}

    def op_blob(self, blob, dump=False):
        data = self.blobs.get(blob, b"")
        answer = {"n": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if dump:
            answer["base64"] = base64.b64encode(data).decode()
        return answer

    def op_drop_blob(self, blob):
        self.blobs.pop(blob, None)
        return {}

    def op_bye(self):
        return {}

    def close(self):
        for _path, fd in self.devices.values():
            if fd is not None:
                os.close(fd)
        # Closing the container takes every DMA mapping with it, before self.maps goes.
        for fd in self.groups.values():
            os.close(fd)
        if self.container is not None:
            os.close(self.container)


def main():
    server = Server()
    try:
        for line in sys.stdin:
            request = json.loads(line)
            op = request.pop("op")
            t0 = time.time()
            try:
                answer = getattr(server, "op_" + op)(**request)
                answer["ok"] = True
            except OSError as exc:
                answer = {"ok": False, "errno": exc.errno,
                          "error": errno.errorcode.get(exc.errno or 0, "") + ": " + (exc.strerror or str(exc))}
            except (AttributeError, TypeError, KeyError, ValueError, IndexError) as exc:
                answer = {"ok": False, "errno": None, "error": f"bad request {op}: {exc!r}"}
            answer["t0"], answer["t1"] = t0, time.time()
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
            if op == "bye":
                break
    finally:
        server.close()


if __name__ == "__main__":
    main()
