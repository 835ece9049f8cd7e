# SPDX-License-Identifier: GPL-2.0-or-later
"""Fixtures for tests that need the nested lab: boot it once per session
(or reuse a running one) and take it down again only if we booted it."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from qmp_mig import lab


@pytest.fixture(scope="session")
def lab_config() -> Iterator[Path]:
    booted_here = lab.status() is None
    state = lab.up()
    print(f"\nlab: booted in {state.boot_seconds} s" if booted_here else "\nlab: reusing the running lab")
    yield Path(state.config)
    if booted_here:
        lab.down()
