# SPDX-License-Identifier: GPL-2.0-or-later
"""Run in the lab (python3 - BDF): hand an edu function to VFIO (type1), map one page
at IOVA 0x20000000 and nothing at 0x10000000, ask the edu to DMA from 0x10000000,
and print what its DMA command reads after. The IOMMU must refuse the read: the lab
kernel logs a DMAR fault for the function at that address (tests/test_lab.py)."""

import ctypes
import fcntl
import mmap
import os
import struct
import sys
import time

VFIO_TYPE, VFIO_BASE = ord(";"), 100


def io(number: int) -> int:
    return (VFIO_TYPE << 8) | (VFIO_BASE + number)


SET_IOMMU, GROUP_SET_CONTAINER, GROUP_GET_DEVICE_FD = io(2), io(4), io(6)
GET_REGION_INFO, IOMMU_MAP_DMA = io(8), io(13)
TYPE1, CONFIG_REGION, BAR0 = 1, 7, 0
UNMAPPED, MAPPED = 0x10000000, 0x20000000


def main(bdf: str) -> None:
    group = os.path.basename(os.readlink(f"/sys/bus/pci/devices/{bdf}/iommu_group"))
    container = os.open("/dev/vfio/vfio", os.O_RDWR)
    group_fd = os.open(f"/dev/vfio/{group}", os.O_RDWR)
    fcntl.ioctl(group_fd, GROUP_SET_CONTAINER, struct.pack("i", container))
    fcntl.ioctl(container, SET_IOMMU, TYPE1)
    libc = ctypes.CDLL(None, use_errno=True)
    device = libc.ioctl(group_fd, GROUP_GET_DEVICE_FD, ctypes.c_char_p(bdf.encode()))
    if device < 0:
        sys.exit(f"cannot open {bdf}: {os.strerror(ctypes.get_errno())}")

    def region(index: int) -> int:
        info = bytearray(struct.pack("IIIIQQ", 32, 0, index, 0, 0, 0))
        fcntl.ioctl(device, GET_REGION_INFO, info)
        return struct.unpack("IIIIQQ", info)[5]  # its offset in the device file

    config, bar = region(CONFIG_REGION), region(BAR0)
    command = struct.unpack("<H", os.pread(device, 2, config + 4))[0]
    os.pwrite(device, struct.pack("<H", command | 0x6), config + 4)  # memory decode, bus master
    page = mmap.mmap(-1, 4096)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    fcntl.ioctl(container, IOMMU_MAP_DMA, struct.pack("IIQQQ", 32, 3, address, MAPPED, 4096))
    for register, value in ((0x80, UNMAPPED), (0x88, 0x40000), (0x90, 64), (0x98, 1)):  # RAM -> buffer
        os.pwrite(device, struct.pack("<Q", value), bar + register)
    for _ in range(100):
        if not struct.unpack("<I", os.pread(device, 4, bar + 0x98))[0] & 1:
            break
        time.sleep(0.05)
    print(f"edu {bdf}: DMA from IOVA {UNMAPPED:#x} issued")


if __name__ == "__main__":
    main(sys.argv[1])
