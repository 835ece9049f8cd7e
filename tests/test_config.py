# SPDX-License-Identifier: GPL-2.0-or-later
"""Host configuration files: good ones load, bad ones say which key is wrong."""

from pathlib import Path

import pytest

from qmp_mig.config import ConfigError, load
from qmp_mig.fsm import Flag

GOOD = """
[host]
kind = "local"
[guest]
kernel = "/k"
initrd = "/i"
key = "/key"
[[device]]
kind = "mdev"
parent = "mtty"
type = "mtty-2"
expect_flags = "STOP_COPY|P2P|PRE_COPY"
options = { "enable-migration" = "on" }
[[device]]
kind = "pci"
bdf = "0000:3b:00.1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "host.toml"
    path.write_text(text)
    return path


def test_good(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD))
    assert config.host.kind == "local"
    assert config.devices[0].expect_flags == Flag.STOP_COPY | Flag.P2P | Flag.PRE_COPY
    assert config.devices[0].options == {"enable-migration": "on"}
    assert config.devices[1].bdf == "0000:3b:00.1"


def test_example_file_in_the_repository_loads() -> None:
    config = load(Path(__file__).parent.parent / "ci" / "kvm-host.example.toml")
    assert config.host.kind == "local"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('kind = "local"', 'kind = "cloud"'), r"\[host\] kind = 'cloud': expected 'local' or 'ssh'"),
        (('kind = "local"', 'kind = "ssh"'), r"\[host\] kind = 'ssh' needs key"),
        (('bdf = "0000:3b:00.1"', 'bus = "x"'), r"\[device #2\] has unknown key\(s\) bus"),
        (('type = "mtty-2"', 'type = 2'), r"\[device #1\] type = 2: expected str"),
        (("STOP_COPY|P2P|PRE_COPY", "STOP_COPY|FAST"), r"expect_flags: unknown migration flag 'FAST'"),
        (('initrd = "/i"', ""), r"\[guest\]: .*initrd"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ConfigError, match=message) as exc:
        load(path)
    assert str(exc.value).startswith(str(path))


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "[host\n"))
