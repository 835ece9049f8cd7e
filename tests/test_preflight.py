# SPDX-License-Identifier: GPL-2.0-or-later
"""`qmp-mig check` on this machine, which has QEMU but no VFIO: every row that
cannot pass says so, with what to do (the lab test checks a host that passes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from qmp_mig import preflight
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
