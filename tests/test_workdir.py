# SPDX-License-Identifier: GPL-2.0-or-later
"""The shared work directory on the host: made private, refused when it is not ours."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from qmp_mig.hosts import HostError, LocalHost
from qmp_mig.testbed import private_workdir


def test_a_missing_work_directory_is_made_closed_to_others(tmp_path: Path) -> None:
    path = tmp_path / "var" / "qmp-mig"
    private_workdir(LocalHost(), str(path))
    assert path.is_dir() and (path.stat().st_mode & 0o077) == 0


def test_an_existing_directory_of_ours_is_used(tmp_path: Path) -> None:
    path = tmp_path / "mine"
    path.mkdir(mode=0o755)
    private_workdir(LocalHost(), str(path))


@pytest.mark.parametrize(("plant", "words"), [
    ("symlink", "is a symbolic link"),
    ("writable", "is writable by others (mode 777)"),
    ("file", "is not a directory"),
])
def test_a_planted_work_directory_is_refused(tmp_path: Path, plant: str, words: str) -> None:
    path = tmp_path / "qmp-mig"
    if plant == "symlink":
        (tmp_path / "elsewhere").mkdir()
        path.symlink_to(tmp_path / "elsewhere")
    elif plant == "writable":
        path.mkdir()
        os.chmod(path, 0o777)
    else:
        path.write_text("")
    with pytest.raises(HostError, match=re.escape(f"work directory {path} {words}; refusing")):
        private_workdir(LocalHost(), str(path))
