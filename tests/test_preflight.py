# SPDX-License-Identifier: GPL-2.0-or-later
"""`qmp-mig check` on this machine, which has QEMU but no VFIO: every row that
cannot pass says so, with what to do (the lab test checks a host that passes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fakes import FakeHost

from qmp_mig import preflight
from qmp_mig.avocado_plugin import instance_needs
from qmp_mig.config import DeviceConfig
from qmp_mig.images import REPO
from qmp_mig.pools import Need
from qmp_mig.testbed import connect

LOCAL = """
[host]
kind = "local"
workdir = "{workdir}"
[guest]
kernel = "{tmp}/vmlinuz"
initrd = "{tmp}/initrd.img"
key = "{tmp}/id_ed25519"
[[device]]
kind = "pci"
bdf = "0000:3b:00.1"
[[device]]
kind = "mdev"
parent = "mtty"
type = "mtty-2"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "host.toml"
    path.write_text(text.format(tmp=tmp_path, workdir=tmp_path / "work"))
    return path


def test_a_host_without_vfio_fails_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "vmlinuz").write_text("kernel")
    result = preflight.check(write(tmp_path, LOCAL), connect)
    rows = {row.item: row for row in result.rows}
    assert not result.ok
    assert rows["configuration"].verdict == preflight.PASS
    assert rows["VFIO"].verdict == preflight.FAIL and "modprobe" in rows["VFIO"].todo
    assert rows["[[device]] #1 PCI function"].verdict == preflight.FAIL
    assert "no such PCI address" in rows["[[device]] #1 PCI function"].todo
    assert rows["[[device]] #2 mdev parent"].verdict == preflight.FAIL
    assert rows["guest kernel"].verdict == preflight.PASS
    assert rows["guest initrd"].verdict == preflight.FAIL
    assert rows["guest SSH key"].verdict == preflight.FAIL
    assert rows["work directory"].verdict == preflight.PASS


def test_check_command_prints_the_table_and_exits_non_zero(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "qmp_mig.cli", "check", "--config", str(write(tmp_path, LOCAL))],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "what to do" in run.stdout and "FAIL" in run.stdout
    assert "the host is not ready" in run.stdout


def test_a_bad_configuration_is_every_error_and_nothing_else(tmp_path: Path) -> None:
    result = preflight.check(write(tmp_path, LOCAL.replace('kind = "local"', 'kind = "cloud"')), connect)
    assert [row.item for row in result.rows] == ["configuration"] * len(result.rows)
    assert all(row.verdict == preflight.FAIL for row in result.rows)
    assert any("cloud" in row.found for row in result.rows)


# --- device pools, against the fake host -------------------------------------------------------

NEEDS = {"Topologies.test_two_devices": Need(4), "VfioMigration.test_migrate": Need(2),
         "DeviceMigration.test_dma_and_p2p_load": Need(4, "test_device")}


def test_a_pool_smaller_than_a_test_needs_is_refused_naming_the_test() -> None:
    host = FakeHost()
    for bdf in ("0000:01:00.0", "0000:02:00.0"):
        host.add_pci(bdf)
    result = preflight.Preflight()
    size = preflight._device(result, host, "[[device]] #1",
                             DeviceConfig(kind="pci", bdfs=("0000:01:00.0", "0000:02:00.0")))
    result = preflight.Preflight()
    preflight._pool(result, "[[device]] #1", size, NEEDS, "device")
    assert [(r.item, r.verdict) for r in result.rows] == [("[[device]] #1 pool", preflight.FAIL)]
    assert result.rows[0].found == "2 instances; too few: Topologies.test_two_devices needs 4 at once"
    assert "at least 4" in result.rows[0].todo


def test_a_pool_as_large_as_the_tests_need_passes_and_an_unbounded_mdev_says_nothing() -> None:
    result = preflight.Preflight()
    preflight._pool(result, "[test_device]", 4, NEEDS, "test_device")
    preflight._pool(result, "[[device]] #1", None, NEEDS, "device")  # an mdev type without count
    assert [(r.item, r.verdict, r.found) for r in result.rows] == [
        ("[test_device] pool", preflight.PASS, "4 instances; the tests hold up to 4 at once")]


def test_each_function_of_a_pool_is_checked_and_one_the_host_uses_fails() -> None:
    host = FakeHost()
    host.add_driver("qmigpci", vfio=True)
    host.add_vf("0000:05:00.0", 0, "0000:05:10.0", driver="igbvf")
    host.add_vf("0000:05:00.0", 1, "0000:05:10.2", driver="igbvf")
    for vf in ("0000:05:10.0", "0000:05:10.2"):
        host.links[f"/sys/bus/pci/devices/{vf}/iommu_group"] = "/sys/kernel/iommu_groups/16"
    host.in_use["0000:05:10.2"] = "network interface eth2 is up"
    result = preflight.Preflight()
    preflight._device(result, host, "[[device]] #1", DeviceConfig(kind="pci", pf="0000:05:00.0", vfs=(0, 1),
                                                                 bind="qmigpci"))
    rows = {r.item: r for r in result.rows}
    assert rows["[[device]] #1 0000:05:10.0 driver"].verdict == preflight.PASS
    assert rows["[[device]] #1 0000:05:10.0 driver"].found.startswith("igbvf (bound to qmigpci for each test")
    assert rows["[[device]] #1 0000:05:10.2 driver"].verdict == preflight.FAIL
    assert "network interface eth2 is up" in rows["[[device]] #1 0000:05:10.2 driver"].found
    assert host.pci_drivers == {"0000:05:10.0": "igbvf", "0000:05:10.2": "igbvf"}  # nothing was bound


def test_a_vf_that_does_not_exist_is_one_row() -> None:
    host = FakeHost()
    host.add_vf("0000:05:00.0", 0, "0000:05:10.0")
    host.put("/sys/bus/pci/devices/0000:05:00.0/sriov_numvfs", "1\n")
    result = preflight.Preflight()
    preflight._device(result, host, "[[device]] #1", DeviceConfig(kind="pci", pf="0000:05:00.0", vfs=(0, 1, 2)))
    assert [(r.item, r.verdict, r.found) for r in result.rows] == [
        ("[[device]] #1 PCI functions", preflight.FAIL, "0000:05:00.0 has no VF 1 (it has 1 VFs; sriov_numvfs makes them)")]


def test_needs_come_from_the_tests_own_tags() -> None:
    needs = instance_needs([str(REPO / "avocado_tests/test_topologies.py"), str(REPO / "avocado_tests/test_device.py")])
    assert needs["test_topologies.py:Topologies.test_two_devices"] == Need(4)
    assert needs["test_topologies.py:Topologies.test_ping_pong"] == Need(2)
    assert needs["test_device.py:DeviceMigration.test_flag_walks"] == Need(4, "test_device")
