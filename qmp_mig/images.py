# SPDX-License-Identifier: GPL-2.0-or-later
"""Lab and guest images, built from the recipes in ``images/`` and cached.

An image lives in ``<cache>/images/<name>-<key>`` where the key hashes every
file of its recipe (and the keys of the images it is built from): an
unchanged recipe is never rebuilt, a changed one always is. A build goes into
a temporary directory that is renamed into place only when it succeeded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMPLETE = ".complete"


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qmp-mig"
    return Path(os.environ.get("QMP_MIG_CACHE", default))


class ImageError(RuntimeError):
    """An image build failed; the message names the log to read."""


@dataclass(frozen=True)
class Recipe:
    name: str
    inputs: tuple[str, ...]  # repository paths whose content defines the image
    needs: tuple[str, ...] = ()

    def script(self) -> Path:
        return REPO / "images" / self.name / "build.sh"


RECIPES = {
    "lab": Recipe(
        "lab", ("images/lab", "images/versions.env", "devices/qmigdev/qmigdev.c", "devices/qmigdev/Kbuild",
                "devices/qmigpci/qmigpci.c", "devices/qmigpci/Kbuild")
    ),
    "guest": Recipe("guest", ("images/guest", "images/versions.env", "guest_agents"), needs=("lab",)),
}


def _files(top: str) -> list[Path]:
    """The files under ``top`` that belong to the project, ignored ones left out.

    Build products (``guest_agents/build``) must not change a key: a fresh clone
    and a worked-in tree have to find the same cached image and snapshots.
    """
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", top],
        capture_output=True, check=False,
    )
    if listed.returncode == 0:
        names = {name for name in listed.stdout.decode().split("\0") if name}
        return sorted(REPO / name for name in names if (REPO / name).is_file())
    # Not a git checkout (an unpacked release): everything but build directories.
    path = REPO / top
    if path.is_file():
        return [path]
    skipped = {"build", "__pycache__"}
    return sorted(p for p in path.rglob("*") if p.is_file() and not skipped & set(p.relative_to(REPO).parts))


def recipe_key(name: str) -> str:
    recipe = RECIPES[name]
    digest = hashlib.sha256()
    for needed in recipe.needs:
        digest.update(f"needs {needed} {recipe_key(needed)}\n".encode())
    for top in recipe.inputs:
        for file in _files(top):
            digest.update(f"{file.relative_to(REPO)}\n".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def image_dir(name: str) -> Path:
    return cache_dir() / "images" / f"{name}-{recipe_key(name)}"


def is_built(name: str) -> bool:
    return (image_dir(name) / COMPLETE).exists()


def current_link(name: str) -> Path:
    """``<cache>/images/<name>``: the newest build of the image, a path that stays the
    same across rebuilds (a real host's configuration names its guest image by it)."""
    return cache_dir() / "images" / name


def link_current(name: str, target: Path) -> None:
    link = current_link(name)
    if link.is_symlink() and os.readlink(link) == target.name:
        return
    temporary = link.with_name(f".{name}.link")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target.name)
    temporary.replace(link)  # atomic: a reader sees the old build or the new one


def ensure(name: str, say: Callable[[str], None] = print) -> Path:
    """The image's directory, building it (and what it needs) first if missing."""
    recipe = RECIPES[name]
    dependencies = [ensure(needed, say) for needed in recipe.needs]
    target = image_dir(name)
    if (target / COMPLETE).exists():
        link_current(name, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log = target.parent / f"{target.name}.build.log"
    say(f"building {name} image ({target.name}); log: {log}")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with log.open("w") as out:
            result = subprocess.run(
                ["bash", str(recipe.script()), str(work), *map(str, dependencies)],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO, check=False,
            )
        if result.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-15:]
            raise ImageError(
                f"{name} image build failed (exit {result.returncode}); full log: {log}\n"
                + "\n".join(tail)
            )
        (work / COMPLETE).write_text(f"{time.time() - started:.1f}\n")
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _remove_stale(name, keep=target)
    link_current(name, target)
    say(f"built {name} image in {time.monotonic() - started:.0f} s")
    return target


def _remove_stale(name: str, keep: Path) -> None:
    """Older builds of the same image are dead weight once a new one exists."""
    for old in keep.parent.glob(f"{name}-*"):
        if old != keep and old.is_dir() and not old.name.endswith(".build.log"):
            shutil.rmtree(old, ignore_errors=True)
