# SPDX-License-Identifier: GPL-2.0-or-later
"""Which driver a PCI function has, binding it to the one a configuration names,
and putting back exactly what it had.

A ``[[device]]`` entry with ``bind = "<driver>"`` lends its functions to that
driver for a scenario: the driver each had (``igbvf``, or none) is written into
the testbed's lease first, then the function is bound through
``driver_override`` (so no other device of the same ID is touched), and on
close it is unbound and handed back to that same driver (or left without one).
A run killed too hard to close is put right by the next run's sweep, from the
lease. A function the host is using (a network interface that is up, a
mounted disk) is never taken.
"""

from __future__ import annotations

from .hosts import Host, HostError

DEVICES = "/sys/bus/pci/devices"
DRIVERS = "/sys/bus/pci/drivers"
NONE = "-"  # how a lease writes "no driver"


def driver(host: Host, bdf: str) -> str:
    """The function's driver, or "" if none."""
    link = host.run(["readlink", f"{DEVICES}/{bdf}/driver"], check=False).stdout.strip()
    return link.rsplit("/", 1)[-1] if link else ""


def is_vfio_driver(host: Host, name: str) -> bool:
    """vfio-pci, or a variant driver built on vfio_pci_core (mlx5_vfio_pci, qmigpci, ...)."""
    if not name:
        return False
    if name == "vfio-pci":
        return True
    module = host.run(["readlink", f"{DRIVERS}/{name}/module"], check=False).stdout.strip().rsplit("/", 1)[-1]
    return bool(module) and host.exists(f"/sys/module/vfio_pci_core/holders/{module}")


# Why the host is using a function: its network interfaces that are up, and its block
# devices (or their partitions) that are mounted or swapped on.
_IN_USE = r"""
d=/sys/bus/pci/devices/$1
for n in "$d"/net/*; do
    [ -e "$n" ] || continue
    if [ $(( $(cat "$n/flags" 2>/dev/null || echo 0) & 1 )) = 1 ]; then  # IFF_UP
        echo "network interface ${n##*/} is up"
    fi
done
for b in $(find "$d" -name dev -path '*/block/*' 2>/dev/null); do
    name=$(basename "$(dirname "$b")")
    if grep -q "^/dev/$name " /proc/mounts || grep -q "^/dev/$name " /proc/swaps; then
        echo "block device $name is in use (mounted or swap)"
    fi
done
"""


def in_use(host: Host, bdf: str) -> list[str]:
    """What the host is using the function for; empty if nothing."""
    return host.run(["sh", "-c", _IN_USE, "sh", bdf], check=False).stdout.split("\n")[:-1]


# Unbind, then bind through driver_override so only this function is affected.
_BIND = """set -e
d=/sys/bus/pci/devices/$1
echo "$2" > "$d/driver_override"
if [ -e "$d/driver" ]; then echo "$1" > "$d/driver/unbind"; fi
echo "$1" > /sys/bus/pci/drivers_probe
"""

# Unbind from whatever it has now, clear the override, then give it back to its own
# driver by name (never by a probe that could pick another driver); "-": leave it unbound.
RESTORE = """set -e
d=/sys/bus/pci/devices/$1
[ -e "$d" ] || exit 0
if [ -e "$d/driver" ]; then echo "$1" > "$d/driver/unbind"; fi
echo > "$d/driver_override"
if [ "$2" != "-" ]; then echo "$1" > "/sys/bus/pci/drivers/$2/bind"; fi
"""


def bind(host: Host, bdf: str, to: str) -> None:
    """Bind ``bdf`` to the driver ``to``; an error in our words if it did not take."""
    if not host.exists(f"{DRIVERS}/{to}"):
        raise HostError(f"{host.name}: no PCI driver {to!r} is loaded (bind = {to!r}); modprobe it first")
    result = host.run(["sh", "-c", _BIND, "sh", bdf, to], check=False, timeout=60)
    now = driver(host, bdf)
    if now != to:
        raise HostError(f"{host.name}: {bdf} did not bind to {to} (it has {now or 'no driver'}): "
                        f"{result.stderr.strip() or 'the driver refused it (see dmesg)'}")


def restore(host: Host, bdf: str, original: str) -> None:
    """Give ``bdf`` back to ``original`` ("" or "-": no driver)."""
    was = original or NONE
    result = host.run(["sh", "-c", RESTORE, "sh", bdf, was], check=False, timeout=60)
    now = driver(host, bdf) or NONE
    if now != was:
        raise HostError(f"{host.name}: {bdf} could not be given back to {was} (it has {now}): "
                        f"{result.stderr.strip()}")
