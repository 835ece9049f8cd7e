# SPDX-License-Identifier: GPL-2.0-or-later
"""Fixtures for tests that need the nested lab: the lab is up for each such test
(booted if it is not; a test may take it down or lose it), and at the end of
the session it is taken down again if this session booted it."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from qmp_mig import lab


@pytest.fixture(scope="session")
def _lab_owner() -> Iterator[list[bool]]:
    booted: list[bool] = [lab.status() is None]
    yield booted
    if any(booted):
        lab.down()


@pytest.fixture
def lab_config(_lab_owner: list[bool]) -> Path:
    booted_here = lab.status() is None
    state = lab.up()
    if booted_here:
        _lab_owner.append(True)
        print(f"\nlab: booted in {state.boot_seconds} s")
    return Path(state.config)
