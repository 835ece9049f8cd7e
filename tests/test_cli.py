# SPDX-License-Identifier: GPL-2.0-or-later
"""`qmp-mig run` with a bad configuration: every problem once, in our words, and
nothing started (no sweep of a host that was never used, no lab booted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_a_bad_configuration_is_said_once_and_nothing_starts(tmp_path: Path) -> None:
    bad = tmp_path / "host.toml"
    bad.write_text('[host]\nkind = "local"\n[guest]\nkernel = "/k"\n')
    run = subprocess.run([sys.executable, "-m", "qmp_mig.cli", "run", "--config", str(bad),
                          "--results", str(tmp_path / "results")],
                         capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    lines = run.stdout.splitlines()
    assert run.returncode == 2, run.stdout + run.stderr
    assert lines == [f"qmp-mig error: {bad}: [guest] initrd: missing; expected a file path (string)",
                     f"{bad}: [guest] key: missing; expected a private key file path (string)",
                     f"{bad}: [[device]]: missing; expected one or more [[device]] tables (double brackets), "
                     "each naming a VFIO device"], run.stdout
    assert not (tmp_path / "results").exists()
