# SPDX-License-Identifier: GPL-2.0-or-later
"""Image keys and snapshot names: what changes them, and what is stale."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qmp_mig import images, snapshots


def _tree(root: Path) -> None:
    (root / "images" / "lab").mkdir(parents=True)
    (root / "images" / "lab" / "build.sh").write_text("echo lab\n")
    (root / "images" / "guest").mkdir(parents=True)
    (root / "images" / "guest" / "build.sh").write_text("echo guest\n")
    (root / "images" / "versions.env").write_text("KERNEL=6.12\n")
    (root / "devices" / "qmigdev").mkdir(parents=True)
    (root / "devices" / "qmigdev" / "qmigdev.c").write_text("int x;\n")
    (root / "devices" / "qmigdev" / "Kbuild").write_text("obj-m += qmigdev.o\n")
    (root / "guest_agents").mkdir()
    (root / "guest_agents" / "agent.c").write_text("int main(void) { return 0; }\n")
    (root / ".gitignore").write_text("build/\n")


@pytest.fixture(params=["git", "unpacked"])
def repo(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _tree(tmp_path)
    if request.param == "git":
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.setattr(images, "REPO", tmp_path)
    return tmp_path


def test_build_products_leave_the_key_alone(repo: Path) -> None:
    before = images.recipe_key("guest")
    (repo / "guest_agents" / "build").mkdir()
    (repo / "guest_agents" / "build" / "qmp-mig-agent").write_bytes(b"\x7fELF")
    assert images.recipe_key("guest") == before


def test_a_recipe_change_changes_the_key(repo: Path) -> None:
    guest, lab = images.recipe_key("guest"), images.recipe_key("lab")
    (repo / "guest_agents" / "agent.c").write_text("int main(void) { return 1; }\n")
    assert images.recipe_key("guest") != guest
    assert images.recipe_key("lab") == lab


def test_a_new_agent_source_changes_the_key(repo: Path) -> None:
    before = images.recipe_key("guest")
    (repo / "guest_agents" / "other.c").write_text("int y;\n")
    assert images.recipe_key("guest") != before


def test_the_guest_key_follows_the_lab(repo: Path) -> None:
    before = images.recipe_key("guest")
    (repo / "devices" / "qmigdev" / "qmigdev.c").write_text("int z;\n")
    assert images.recipe_key("guest") != before


def test_stale_snapshots_are_those_of_other_guest_images() -> None:
    current = "guest-aaaa1111-0123456789abcdef.mig"
    names = [current, "guest-aaaa1111-fedcba9876543210.mig", "guest-bbbb2222-0123456789abcdef.mig",
             "guest-0123456789abcdef.mig", "guest-aaaa1111-0123.mig.4242.partial", "notes.txt"]
    assert snapshots.stale(names, current) == ["guest-bbbb2222-0123456789abcdef.mig",
                                               "guest-0123456789abcdef.mig"]
