#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0-or-later
# One idempotent set-up step for a fresh Debian 12 machine (run as root):
# Debian packages (bookworm, -security, -backports; never recommends) and a
# Python virtual environment with the project and its PyPI dependencies.
# A second run finds everything in place and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
source images/versions.env

say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root (it installs Debian packages and builds images with chroot)" >&2
    exit 1
fi

BACKPORTS=/etc/apt/sources.list.d/qmp-mig-bookworm-backports.list
# Packages from backports (QEMU 10.0) and from bookworm / bookworm-security.
BACKPORTS_PACKAGES=(qemu-system-x86)
PACKAGES=(
    debootstrap busybox-static dropbear-bin e2fsprogs cpio zstd xz-utils
    openssh-client util-linux kmod gcc make libc6-dev python3-venv
    "linux-headers-${KVER}" "linux-source-6.12=${KPKG_VERSION}"
)

missing=()
for pkg in "${BACKPORTS_PACKAGES[@]}" "${PACKAGES[@]}"; do
    name=${pkg%%=*}
    want=${pkg#*=}; [ "$want" = "$pkg" ] && want=""
    have=$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null || true)
    if [[ "$have" != "install ok installed"* ]] || { [ -n "$want" ] && [[ "$have" != *" $want" ]]; }; then
        missing+=("$name")
    fi
done
if [ "$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null)" != "" ] &&
   ! dpkg --compare-versions "$(dpkg-query -W -f='${Version}' qemu-system-x86)" ge 1:10.0; then
    missing+=(qemu-system-x86)
fi

if [ ${#missing[@]} -eq 0 ]; then
    say "Debian packages: all present"
else
    say "Debian packages missing: ${missing[*]}"
    if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" > "$BACKPORTS"
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -t bookworm-backports "${BACKPORTS_PACKAGES[@]}"
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
fi

# The virtual environment, rebuilt only when the project's requirements change.
VENV=.venv
stamp=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.qmp-mig-stamp" 2>/dev/null)" = "$stamp" ]; then
    say "Python environment: up to date ($VENV)"
else
    say "Python environment: installing into $VENV"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e '.[dev]'
    echo "$stamp" > "$VENV/.qmp-mig-stamp"
fi
