# SPDX-License-Identifier: GPL-2.0-or-later
"""Host configuration files: good ones load, bad ones say which key is wrong."""

import dataclasses
from pathlib import Path

import pytest

from qmp_mig.config import ConfigError, DeviceConfig, load
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

# Words that are Python's or pydantic's, never ours.
FOREIGN = ("positional argument", "Input should", "pydantic", "errors.pydantic.dev", "Field required",
           "Extra inputs", "validation error")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "host.toml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    """The lines of the one ConfigError loading ``path`` gives, each checked to be ours."""
    with pytest.raises(ConfigError) as exc:
        load(path)
    lines = str(exc.value).splitlines()
    for line in lines:
        assert line.startswith(f"{path}: "), line
        assert not any(word in line for word in FOREIGN), line
    assert len(lines) == len(set(lines)), lines
    return lines


def test_good(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD))
    assert config.host.kind == "local"
    assert config.devices[0].expect_flags == Flag.STOP_COPY | Flag.P2P | Flag.PRE_COPY
    assert config.devices[0].options == {"enable-migration": "on"}
    assert config.devices[1].bdfs == ("0000:3b:00.1",)


def test_defaults_are_the_dataclasses_and_they_can_be_replaced(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD))
    assert config.host.port == 22 and config.host.workdir == "/var/tmp/qmp-mig" and config.host.snapshot_dir == ""
    assert config.vm.accel == "tcg" and config.guest.boot_timeout == 300.0
    assert config.workload.memory_mb == 64 and config.test_devices == ()
    assert config.devices[1] == DeviceConfig(kind="pci", bdfs=("0000:3b:00.1",))
    changed = dataclasses.replace(config, devices=(dataclasses.replace(config.devices[0], type="mtty-1"),))
    assert changed.devices[0].type == "mtty-1"


def test_a_float_key_takes_an_integer(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD.replace('key = "/key"', 'key = "/key"\nboot_timeout = 1200')))
    assert config.guest.boot_timeout == 1200.0 and isinstance(config.guest.boot_timeout, float)


def test_example_file_in_the_repository_loads() -> None:
    config = load(Path(__file__).parent.parent / "ci" / "kvm-host.example.toml")
    assert config.host.kind == "local"
    assert config.vm.accel == "kvm" and config.vm.memory_mb == 1024
    assert config.devices == (DeviceConfig(kind="pci", pf="0000:3b:00.0", vfs=(0, 1, 2, 3), bind="mlx5_vfio_pci",
                                           expect_flags=Flag.STOP_COPY | Flag.P2P | Flag.PRE_COPY),)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('kind = "local"', 'kind = "cloud"'), r"\[host\] kind = 'cloud': expected 'local' or 'ssh'"),
        (('kind = "local"', 'kind = "ssh"'), r"\[host\] key: missing, and kind = 'ssh' needs it"),
        (('kind = "local"', 'kind = "ssh"\nkey = ""'), r"\[host\] key = '': kind = 'ssh' needs it"),
        (('bdf = "0000:3b:00.1"', 'bus = "x"'), r"\[\[device\]\] #2 bus = 'x': unknown key"),
        (('bdf = "0000:3b:00.1"', ""), r"\[\[device\]\] #2: kind = 'pci' needs bdf \(an address or a list of them\), or pf and vfs"),
        (('parent = "mtty"', ""), r"\[\[device\]\] #1 parent: missing, and kind = 'mdev' needs it"),
        (('type = "mtty-2"', 'type = 2'), r"\[\[device\]\] #1 type = 2: expected an mdev type name .*\(string\)"),
        (('kind = "pci"', 'kind = "usb"'), r"\[\[device\]\] #2 kind = 'usb': expected 'mdev' or 'pci'"),
        (("STOP_COPY|P2P|PRE_COPY", "STOP_COPY|FAST"),
         r"\[\[device\]\] #1 expect_flags = 'STOP_COPY\|FAST': unknown migration flag 'FAST'; expected some of"),
        (('initrd = "/i"', ""), r"\[guest\] initrd: missing; expected a file path \(string\)"),
        (('parent = "mtty"', 'parent = ".."'), r"\[\[device\]\] #1 parent = '\.\.': expected an mdev parent name"),
        (('parent = "mtty"', 'parent = "mtty/../x"'), r"#1 parent = 'mtty/\.\./x': expected an mdev parent name"),
        (('type = "mtty-2"', 'type = "mtty 2;reboot"'), r"#1 type = 'mtty 2;reboot': expected an mdev type name"),
        (('"enable-migration" = "on"', '"Enable migration" = "on"'),
         r"#1 options key 'Enable migration': expected vfio-pci properties"),
        (('"enable-migration" = "on"', '"enable-migration" = "o=n"'),
         r"#1 options\.enable-migration = 'o=n': expected vfio-pci properties"),
        (('"enable-migration" = "on"', '"enable-migration" = "o n"'), r"options\.enable-migration = 'o n'"),
        (('"enable-migration" = "on"', '"enable-migration" = ""'), r"options\.enable-migration = ''"),
        (('"enable-migration" = "on"', '"enable-migration" = true'), r"options\.enable-migration = true"),
        (('type = "mtty-2"', 'type = "mtty-2"\nattributes = { "../unbind" = "1" }'),
         r"#1 attributes key '\.\./unbind': expected sysfs attributes"),
        (('type = "mtty-2"', 'type = "mtty-2"\nattributes = { "a/b" = "1" }'), r"#1 attributes key 'a/b'"),
        (('type = "mtty-2"', 'type = "mtty-2"\nknown_issues = { reuse = 1 }'), r"#1 known_issues\.reuse = 1"),
        (('kind = "local"', 'kind = "local"\nport = 0'), r"\[host\] port = 0: expected a TCP port, 1\.\.65535"),
        (('kind = "local"', 'kind = "local"\nport = 65536'), r"\[host\] port = 65536: expected a TCP port"),
        (('kind = "local"', 'kind = "local"\naddress = "lab;reboot"'),
         r"\[host\] address = 'lab;reboot': expected a hostname or IP address"),
        (('kind = "local"', 'kind = "local"\nworkdir = "var/tmp"'), r"\[host\] workdir = 'var/tmp': expected an absolute path"),
        (('kind = "local"', 'kind = "local"\nworkdir = "/var/tmp/a b"'), r"\[host\] workdir = '/var/tmp/a b'"),
        (('kind = "local"', 'kind = "local"\nworkdir = "/var/tmp/$(reboot)"'), r"\[host\] workdir = '/var/tmp/\$\(reboot\)'"),
        (('kind = "local"', 'kind = "local"\nsnapshot_dir = "/mnt/../etc"'),
         r"\[host\] snapshot_dir = '/mnt/\.\./etc': expected an absolute path .*without '\.\.'"),
        (('[host]', 'kind = "local"\n[host]'), r": kind = 'local': a key outside any table; expected some of \[host\]"),
        (('[[device]]', '[hots]\n[[device]]'), r": \[hots\]: unknown table; expected some of \[host\], \[vm\], \[guest\]"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    path = write(tmp_path, GOOD.replace(*change, 1))
    with pytest.raises(ConfigError, match=message) as exc:
        load(path)
    assert str(exc.value).startswith(str(path))
    problems(path)


def test_every_problem_at_once_each_once(tmp_path: Path) -> None:
    bad = (GOOD.replace('kind = "local"', 'kind = "local"\nport = true')
           .replace('initrd = "/i"', "")
           .replace('"enable-migration" = "on"', '"enable-migration" = "on,x-pci-vendor-id=1"')
           .replace('bdf = "0000:3b:00.1"', 'bdf = "3b:00.1"\nbus = 3'))
    path = write(tmp_path, bad)
    assert problems(path) == [
        f"{path}: [host] port = true: expected a TCP port, 1..65535 (integer)",
        f"{path}: [guest] initrd: missing; expected a file path (string)",
        f"{path}: [[device]] #1 options.enable-migration = 'on,x-pci-vendor-id=1': expected vfio-pci properties "
        "as name = \"value\": names of a-z, 0-9, - and _ starting with a letter; "
        "values without commas, '=' or whitespace (strings)",
        f"{path}: [[device]] #2 bdf = '3b:00.1': expected a PCI address like 0000:3b:00.1, "
        "or a list of them (the pool)",
        f"{path}: [[device]] #2 bus = 3: unknown key; expected some of kind, parent, type, count, pf, vfs, "
        "bdf, bind, options, attributes, expect_flags, known_issues",
    ]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (GOOD + "[vm]\nmemory_mb = true\n", "[vm] memory_mb"),
        (GOOD + "[workload]\ndirty_mb = false\n", "[workload] dirty_mb"),
        (GOOD + "[workload]\nagent_timeout = true\n", "[workload] agent_timeout"),
        (GOOD.replace('key = "/key"', 'key = "/key"\nboot_timeout = true'), "[guest] boot_timeout"),
        (GOOD.replace('kind = "local"', 'kind = "local"\nport = true'), "[host] port"),
    ],
)
def test_true_is_not_a_number(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    [line] = problems(path)
    assert line.startswith(f"{path}: {where} = {'false' if 'false' in text else 'true'}: expected ")
    assert line.endswith(("(integer)", "(number)"))


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (('kernel = "/k"', "kernel = 1"), "[guest] kernel = 1"),
        (('kernel = "/k"', "kernel = 1.5"), "[guest] kernel = 1.5"),
        (('initrd = "/i"', 'initrd = ["/i"]'), "[guest] initrd = an array"),
        (('key = "/key"', "key = 1979-05-27"), "[guest] key = 1979-05-27"),
        (('type = "mtty-2"', "type = 2"), "[[device]] #1 type = 2"),
        (('kind = "local"', 'kind = "local"\nuser = 0'), "[host] user = 0"),
    ],
)
def test_a_number_is_not_a_string(tmp_path: Path, change: tuple[str, str], where: str) -> None:
    path = write(tmp_path, GOOD.replace(*change, 1))
    [line] = problems(path)
    assert line.startswith(f"{path}: {where}: expected ")
    assert line.endswith("(string)")


@pytest.mark.parametrize(
    "bdf", ["3b:00.1", "0000:3B:00.1", "0000:3b:00.8", "0000:3b:0.1", "0000:3b:00.1\\n", "0000:3b:00.1,x=1", ""],
)
def test_a_bad_pci_address_is_refused(tmp_path: Path, bdf: str) -> None:
    path = write(tmp_path, GOOD.replace("0000:3b:00.1", bdf))
    [line] = problems(path)
    assert line.startswith(f"{path}: [[device]] #2 bdf = ")
    assert line.endswith(": expected a PCI address like 0000:3b:00.1, or a list of them (the pool)")


@pytest.mark.parametrize("value", ["on,x-pci-vendor-id=1", "on,", ",on"])
def test_an_option_value_with_a_comma_is_refused(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, GOOD.replace('"enable-migration" = "on"', f'"enable-migration" = "{value}"'))
    [line] = problems(path)
    assert line.startswith(f"{path}: [[device]] #1 options.enable-migration = {value!r}: expected vfio-pci")


def test_missing_guest_keys_are_named_in_our_words(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('initrd = "/i"', "").replace('key = "/key"', ""))
    assert problems(path) == [
        f"{path}: [guest] initrd: missing; expected a file path (string)",
        f"{path}: [guest] key: missing; expected a private key file path (string)",
    ]


def test_missing_tables(tmp_path: Path) -> None:
    path = write(tmp_path, '[host]\nkind = "local"\n[device]\nkind = "pci"\n')
    assert problems(path) == [
        f"{path}: [guest]: missing; expected a table with kernel, initrd and key",
        f"{path}: [[device]] = a table: expected one or more [[device]] tables (double brackets), "
        "each naming a VFIO device",
    ]


def test_an_unknown_key_lists_the_expected_keys(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('kind = "local"', 'kind = "local"\nhostname = "lab"'))
    assert problems(path) == [
        f"{path}: [host] hostname = 'lab': unknown key; "
        "expected some of kind, address, port, user, key, workdir, snapshot_dir, host_key",
    ]


def test_test_device_is_checked_like_a_device(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD + '[test_device]\nkind = "mdev"\nparent = "qmigdev"\ntype = "qmigdev-full"\n'
                        'attributes = { fail_stop_copy = "1" }\n'))
    assert config.test_devices == (DeviceConfig(kind="mdev", parent="qmigdev", type="qmigdev-full",
                                                attributes={"fail_stop_copy": "1"}),)
    path = write(tmp_path, GOOD + '[test_device]\nkind = "mdev"\ntype = "qmigdev-full"\n')
    assert problems(path) == [
        f"{path}: [test_device] parent: missing, and kind = 'mdev' needs it; "
        "expected an mdev parent name of letters, digits and _ . : - (string)",
    ]


QMIGDEV = '[[test_device]]\nkind = "mdev"\nparent = "qmigdev"\ntype = "qmigdev-full"\n'
QMIGPCI = '[[test_device]]\nkind = "pci"\nbdf = ["0000:01:00.0", "0000:02:00.0"]\nbind = "qmigpci"\n'


def test_one_test_device_per_kind(tmp_path: Path) -> None:
    """[[test_device]] names one entry per kind; a variant of that kind picks it."""
    config = load(write(tmp_path, GOOD + QMIGDEV + QMIGPCI))
    assert [d.kind for d in config.test_devices] == ["mdev", "pci"]
    assert config.of_kind("pci").test_devices == (DeviceConfig(
        kind="pci", bdfs=("0000:01:00.0", "0000:02:00.0"), bind="qmigpci"),)
    assert [label for label, _ in config.test_device_labels()] == ["[[test_device]] #1", "[[test_device]] #2"]
    path = write(tmp_path, GOOD + QMIGDEV + QMIGDEV)
    assert problems(path) == [f"{path}: [[test_device]]: two tables of kind 'mdev'; expected one per kind"]
    path = write(tmp_path, GOOD + QMIGDEV + '[[test_device]]\nkind = "pci"\n')
    assert problems(path) == [f"{path}: [[test_device]] #2: kind = 'pci' needs bdf (an address or a "
                              "list of them), or pf and vfs"]


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "[host\n"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such configuration file"),
        ("[host\n", "not valid TOML: "),
        ("<html>\n<body>\n", "not valid TOML: "),
        (b"\xff\xfe[host]", "not valid TOML: not UTF-8 text"),
    ],
)
def test_an_unreadable_file_is_one_clear_line(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    path = tmp_path / "host.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as exc:
        load(path)
    assert "\n" not in str(exc.value)
    assert str(exc.value).startswith(f"{path}: {message}")


def test_a_directory_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(tmp_path)
    assert str(exc.value) == f"{tmp_path}: cannot read the configuration file: Is a directory"


def test_checks_require_names_optional_checks(tmp_path: Path) -> None:
    assert load(write(tmp_path, GOOD)).require is None  # default: what the host offers
    assert load(write(tmp_path, GOOD + '[checks]\nrequire = ["all"]\n')).require == (
        "kernel_cross_check", "precopy_info")
    assert load(write(tmp_path, GOOD + '[checks]\nrequire = ["precopy_info"]\n')).require == ("precopy_info",)
    path = write(tmp_path, GOOD + '[checks]\nrequire = ["kernel"]\n')
    assert problems(path) == [f"{path}: [checks] require.0 = 'kernel': expected 'kernel_cross_check', "
                              "'precopy_info' or 'all'"]


def test_host_key_is_an_openssh_public_key_line(tmp_path: Path) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFMPYzNpFOr4SLEZURmUDmKRN1G1rB5PudzNs9v48lbZ"
    assert load(write(tmp_path, GOOD.replace('kind = "local"', f'kind = "local"\nhost_key = "{key}"'))
                ).host.host_key == key
    path = write(tmp_path, GOOD.replace('kind = "local"', 'kind = "local"\nhost_key = "SHA256:abc"'))
    assert problems(path) == [f"{path}: [host] host_key = 'SHA256:abc': expected an OpenSSH public key "
                              "line like 'ssh-ed25519 AAAA...'"]


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ('bdf = ["0000:3b:00.1", "0000:3b:00.1"]',
         "[[device]] #2: the same PCI function is listed twice in bdf; expected each once"),
        ('bdf = []', "[[device]] #2 bdf = an empty array: expected a PCI address like 0000:3b:00.1, or a list of them"),
        ('pf = "0000:3b:00.0"', "[[device]] #2: pf and vfs go together"),
        ('pf = "0000:3b:00.0"\nvfs = "3-1"', "[[device]] #2 vfs: the range runs backwards"),
        ('vfs = "0-3"', "[[device]] #2: pf and vfs go together"),
        ('', "[[device]] #2: kind = 'pci' needs bdf (an address or a list of them), or pf and vfs"),
        ('bdf = "0000:3b:00.1"\npf = "0000:3b:00.0"\nvfs = "0"',
         "[[device]] #2: give either bdf or pf and vfs, not both"),
        ('bdf = "0000:3b:00.1"\nbind = "vfio pci"', "[[device]] #2 bind = 'vfio pci': expected a driver name"),
    ],
)
def test_a_bad_pool_is_refused_in_our_words(tmp_path: Path, pool: str, message: str) -> None:
    (line,) = problems(write(tmp_path, GOOD.replace('bdf = "0000:3b:00.1"', pool)))
    assert message in line, line


def test_pools_load_as_lists(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD.replace('bdf = "0000:3b:00.1"',
                                               'pf = "0000:3b:00.0"\nvfs = "2-4"\nbind = "vfio-pci"')))
    assert config.devices[1].vfs == (2, 3, 4) and config.devices[1].bind == "vfio-pci"
    config = load(write(tmp_path, GOOD.replace('bdf = "0000:3b:00.1"', 'bdf = ["0000:3b:00.1", "0000:3b:00.2"]')))
    assert config.devices[1].bdfs == ("0000:3b:00.1", "0000:3b:00.2")


def test_an_unmigratable_device_is_its_own_table(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD + '[unmigratable_device]\nkind = "pci"\npf = "0000:05:00.0"\nvfs = "0-1"\n'
                                         'bind = "vfio-pci"\n'))
    assert config.unmigratable_device == DeviceConfig(kind="pci", pf="0000:05:00.0", vfs=(0, 1), bind="vfio-pci")
    assert config.devices[1].bdfs == ("0000:3b:00.1",)  # not one of the [[device]] entries
