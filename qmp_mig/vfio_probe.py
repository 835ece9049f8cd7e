# SPDX-License-Identifier: GPL-2.0-or-later
"""Ask the kernel for a VFIO device's migration flags and current state.

Runs ON THE HOST that owns the device (sent over stdin to ``python3 -``), so it
uses the standard library only. It opens the device through its IOMMU group
and a type1 container, issues VFIO_DEVICE_FEATURE GET for MIGRATION and
MIG_DEVICE_STATE, prints one JSON line and closes everything again. The device
must not be open elsewhere (call it before QEMU starts or after it quit).

usage: python3 vfio_probe.py SYSFS_DEVICE_PATH
"""

import ctypes
import errno
import json
import os
import struct
import sys

_VFIO = ord(";") << 8  # _IO(VFIO_TYPE, VFIO_BASE + n) == (';' << 8) | (100 + n)
VFIO_SET_IOMMU = _VFIO | 102
VFIO_GROUP_SET_CONTAINER = _VFIO | 104
VFIO_GROUP_GET_DEVICE_FD = _VFIO | 106
VFIO_DEVICE_FEATURE = _VFIO | 117
VFIO_TYPE1v2_IOMMU = 3
FEATURE_GET = 1 << 16
FEATURE_MIGRATION = 1
FEATURE_MIG_DEVICE_STATE = 2


def _ioctl(libc, fd, request, arg):
    ret = libc.ioctl(fd, request, arg)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ioctl {request:#x}: {os.strerror(err)}")
    return ret


def _feature(libc, device_fd, feature):
    buf = ctypes.create_string_buffer(struct.pack("=IIQ", 16, FEATURE_GET | feature, 0), 16)
    _ioctl(libc, device_fd, VFIO_DEVICE_FEATURE, buf)
    return struct.unpack_from("=Q", buf.raw, 8)[0]


def probe(sysfs_path):
    libc = ctypes.CDLL(None, use_errno=True)
    name = os.path.basename(os.path.realpath(sysfs_path))
    group = os.path.basename(os.readlink(os.path.join(sysfs_path, "iommu_group")))
    fds = []
    try:
        container = os.open("/dev/vfio/vfio", os.O_RDWR)
        fds.append(container)
        group_fd = os.open(f"/dev/vfio/{group}", os.O_RDWR)
        fds.append(group_fd)
        _ioctl(libc, group_fd, VFIO_GROUP_SET_CONTAINER, ctypes.byref(ctypes.c_int(container)))
        _ioctl(libc, container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)
        device = _ioctl(libc, group_fd, VFIO_GROUP_GET_DEVICE_FD, ctypes.c_char_p(name.encode()))
        fds.append(device)
        try:
            flags = _feature(libc, device, FEATURE_MIGRATION)
        except OSError as exc:
            if exc.errno != errno.ENOTTY:
                raise
            # The driver has no migration support (plain vfio-pci on most functions).
            return {"device": name, "group": int(group), "flags": 0, "state": None}
        state = _feature(libc, device, FEATURE_MIG_DEVICE_STATE) & 0xFFFFFFFF
        return {"device": name, "group": int(group), "flags": flags, "state": state}
    finally:
        for fd in reversed(fds):
            os.close(fd)


if __name__ == "__main__":
    try:
        print(json.dumps(probe(sys.argv[1])))
    except (OSError, IndexError) as exc:
        print(json.dumps({"error": str(exc)}))
        sys.exit(1)
