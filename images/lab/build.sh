#!/bin/bash
# Build the qmp-mig "lab" VM image (L1): a Debian bookworm root filesystem with
# QEMU 10.0 (bookworm-backports), the Debian 6.12 kernel and its modules, and the
# kernel's mtty sample mdev driver, our own qmigdev test device (devices/qmigdev) and
# our vfio-pci variant driver qmigpci (devices/qmigpci), built out of tree against the
# Debian headers.
#
#   images/lab/build.sh OUTDIR
#
# Writes into OUTDIR: vmlinuz initrd.img rootfs.img id_ed25519 id_ed25519.pub
# manifest.json. Run as root on a Debian 12 host that has debootstrap,
# busybox-static, dropbear-bin, e2fsprogs, cpio, zstd, xz-utils, openssh-client,
# gcc, make, linux-headers-$KVER and linux-source-6.12 installed. See
# images/README.md for the boot contract.
set -euo pipefail

die() { echo "lab/build.sh: $*" >&2; exit 1; }
say() { echo "lab/build.sh: [$(date +%T)] $*" >&2; }

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot)"

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../versions.env
. "$HERE/../versions.env"

OUTDIR=$1
ROOTFS_SIZE=3G
HEADERS=/lib/modules/$KVER/build

for tool in debootstrap dropbearkey dropbearconvert ssh-keygen mkfs.ext4 \
            cpio zstd xz dpkg-deb apt-get modprobe depmod make gcc; do
    command -v "$tool" >/dev/null || die "missing host tool: $tool"
done
[ -e "$HEADERS/Makefile" ] || die "missing $HEADERS (install linux-headers-$KVER)"
[ -r "$KSRC_TARBALL" ] || die "missing $KSRC_TARBALL (install linux-source-6.12)"
BUSYBOX=/bin/busybox                      # from busybox-static
[ -x "$BUSYBOX" ] && ! ldd "$BUSYBOX" >/dev/null 2>&1 || die "$BUSYBOX missing or not static (install busybox-static)"

# Private work dir; everything but the final outputs lives here.
W=$(mktemp -d /var/tmp/qmp-mig-lab-build.XXXXXX)
R=$W/rootfs
cleanup() {
    local rc=$? m
    # Unmount what we mounted inside the chroot before deleting anything.
    for m in "$R/dev/pts" "$R/proc" "$R/sys"; do
        mountpoint -q "$m" 2>/dev/null && umount -l "$m" 2>/dev/null
    done
    if findmnt -rn -o TARGET | grep -q "^$W/"; then
        echo "lab/build.sh: NOT removing $W: something is still mounted below it" >&2
    else
        rm -rf --one-file-system "$W"
    fi
    [ $rc -eq 0 ] || echo "lab/build.sh: FAILED (exit $rc)" >&2
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

mkdir -p "$OUTDIR" "$W/out" "$W/dl"
T0=$(date +%s)

# --- 1. Kernel: download and unpack the Debian package (no postinst, no initramfs-tools).
say "fetching linux-image-$KVER-unsigned $KPKG_VERSION"
chown _apt "$W/dl" 2>/dev/null || true     # lets apt download sandboxed
(cd "$W/dl" && apt-get download -q "linux-image-$KVER-unsigned=$KPKG_VERSION" >/dev/null)
dpkg-deb -x "$W"/dl/linux-image-*.deb "$W/kernel"
KMOD=$W/kernel/lib/modules/$KVER
[ -d "$KMOD" ] || die "no $KMOD in the kernel package"
depmod -b "$W/kernel" "$KVER"             # the package ships no modules.dep
cp "$W/kernel/boot/vmlinuz-$KVER" "$W/out/vmlinuz"

# --- 2. mtty.ko: the kernel's sample mdev driver, built from linux-source at build time
# (GPL sample code: never copied into the repository).
say "building mtty.ko"
mkdir -p "$W/mtty"
tar -xJf "$KSRC_TARBALL" -C "$W/mtty" --wildcards --occurrence=1 --strip-components=3 \
    '*/samples/vfio-mdev/mtty.c'
[ -s "$W/mtty/mtty.c" ] || die "samples/vfio-mdev/mtty.c not found in $KSRC_TARBALL"
echo 'obj-m := mtty.o' > "$W/mtty/Kbuild"
make -s -C "$HEADERS" M="$W/mtty" modules >"$W/mtty/build.log" 2>&1 \
    || { cat "$W/mtty/build.log" >&2; die "mtty build failed"; }
modinfo -F vermagic "$W/mtty/mtty.ko" | grep -q "^$KVER " || die "mtty.ko vermagic mismatch"

# --- 2b. qmigdev.ko: our migratable test device, from this repository's source.
say "building qmigdev.ko"
REPO=$(cd "$HERE/../.." && pwd)
mkdir -p "$W/qmigdev"
cp "$REPO/devices/qmigdev/qmigdev.c" "$REPO/devices/qmigdev/Kbuild" "$W/qmigdev/"
make -s -C "$HEADERS" M="$W/qmigdev" modules >"$W/qmigdev/build.log" 2>&1 \
    || { cat "$W/qmigdev/build.log" >&2; die "qmigdev build failed"; }
modinfo -F vermagic "$W/qmigdev/qmigdev.ko" | grep -q "^$KVER " || die "qmigdev.ko vermagic mismatch"

# --- 2c. qmigpci.ko: our vfio-pci variant driver for the lab's edu functions.
say "building qmigpci.ko"
mkdir -p "$W/qmigpci"
cp "$REPO/devices/qmigpci/qmigpci.c" "$REPO/devices/qmigpci/Kbuild" "$W/qmigpci/"
make -s -C "$HEADERS" M="$W/qmigpci" modules >"$W/qmigpci/build.log" 2>&1 \
    || { cat "$W/qmigpci/build.log" >&2; die "qmigpci build failed"; }
modinfo -F vermagic "$W/qmigpci/qmigpci.ko" | grep -q "^$KVER " || die "qmigpci.ko vermagic mismatch"

# --- 3. Root filesystem: debootstrap minbase + what the lab runs.
say "debootstrap $DEBIAN_SUITE"
# openssh-sftp-server: dropbear runs it for SFTP (paramiko's file transfer, scp);
# it brings openssh-client too, handy for reaching guests from inside the lab.
debootstrap --variant=minbase \
    --include=dropbear-bin,openssh-sftp-server,python3,kmod,iproute2,procps,util-linux,busybox \
    "$DEBIAN_SUITE" "$R" "$DEBIAN_MIRROR" >"$W/debootstrap.log" 2>&1 \
    || { tail -30 "$W/debootstrap.log" >&2; die "debootstrap failed"; }

cat >"$R/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR $DEBIAN_SUITE main
deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main
deb $DEBIAN_SECURITY_MIRROR $DEBIAN_SUITE-security main
deb $DEBIAN_MIRROR $QEMU_SUITE main
EOF
# Never start services inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
chmod 755 "$R/usr/sbin/policy-rc.d"
mount -t proc proc "$R/proc"
say "installing qemu-system-x86 from $QEMU_SUITE"
chroot "$R" /usr/bin/env DEBIAN_FRONTEND=noninteractive LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    sh -c "apt-get -q update && apt-get -q -y --no-install-recommends -t $QEMU_SUITE install qemu-system-x86 && apt-get clean" \
    >"$W/apt.log" 2>&1 || { tail -30 "$W/apt.log" >&2; die "apt-get in chroot failed"; }
QEMU_VERSION=$(chroot "$R" dpkg-query -W -f='${Version}' qemu-system-x86)
umount "$R/proc"
rm -f "$R/usr/sbin/policy-rc.d"
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/usr/share/doc/* "$R"/usr/share/man/*

# Kernel modules + mtty (in extra/ so modprobe finds it), then depmod in the target.
say "installing modules"
mkdir -p "$R/lib/modules"
cp -a "$KMOD" "$R/lib/modules/"
rm -f "$R/lib/modules/$KVER/build" "$R/lib/modules/$KVER/source"
install -D -m 644 "$W/mtty/mtty.ko" "$R/lib/modules/$KVER/extra/mtty.ko"
install -D -m 644 "$W/qmigdev/qmigdev.ko" "$R/lib/modules/$KVER/extra/qmigdev.ko"
install -D -m 644 "$W/qmigpci/qmigpci.ko" "$R/lib/modules/$KVER/extra/qmigpci.ko"
# The lab's edu functions reach 40 address bits (qmp_mig/lab.py sets their dma_mask).
echo "options qmigpci edu_dma_bits=40" >"$R/etc/modprobe.d/qmigpci.conf"
chroot "$R" depmod -a "$KVER"
for m in mtty qmigdev qmigpci igb igbvf; do
    chroot "$R" modprobe -S "$KVER" --show-depends $m >/dev/null || die "depmod does not know $m"
done

# No systemd/sysvinit here: give the shell init the usual halt/poweroff/reboot commands
# (busybox's send SIGUSR1/SIGUSR2/SIGTERM to PID 1 unless -f is given).
for c in halt poweroff reboot; do
    [ -e "$R/sbin/$c" ] || ln -s /bin/busybox "$R/sbin/$c"
done

# --- 4. Identity, network names, ssh.
echo qmp-mig-lab >"$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tqmp-mig-lab\n::1\tlocalhost ip6-localhost\n' >"$R/etc/hosts"
echo 'nameserver 10.0.2.3' >"$R/etc/resolv.conf"   # slirp's DNS (unused unless asked)
: >"$R/etc/fstab"

say "generating keys"
# Client key: the suite logs into the lab (and the guests) with it.
ssh-keygen -q -t ed25519 -N '' -C qmp-mig -f "$W/out/id_ed25519"
install -d -m 700 "$R/root/.ssh"
install -m 600 "$W/out/id_ed25519.pub" "$R/root/.ssh/authorized_keys"
# The same key in dropbear's format, so `dbclient -y` inside the lab reaches guests
# without a conversion step (dbclient reads ~/.ssh/id_dropbear by default).
dropbearconvert openssh dropbear "$W/out/id_ed25519" "$R/root/.ssh/id_dropbear" >/dev/null 2>&1
chmod 600 "$R/root/.ssh/id_dropbear"
# Host keys made now: key generation under nested TCG is slow.
mkdir -p "$R/etc/dropbear"
rm -f "$R"/etc/dropbear/dropbear_*_host_key
for t in ed25519 ecdsa rsa; do
    dropbearkey -t "$t" -f "$R/etc/dropbear/dropbear_${t}_host_key" >/dev/null 2>&1
done

# --- 5. PID 1 of the lab (a shell script, no systemd).
install -m 755 /dev/stdin "$R/sbin/qmp-mig-init" <<'EOF'
#!/bin/sh
# PID 1 of the qmp-mig lab VM. Mounts the kernel filesystems, sets up slirp's
# static network, loads VFIO + mtty + qmigdev, starts dropbear, prints the ready marker on
# the console, then reaps children until halt/poweroff/reboot.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
cd /

note() { echo "qmp-mig-lab: $*" >/dev/console; }

mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs /run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -o remount,rw /
hostname qmp-mig-lab

# No udev here: load what the lab needs by name.
modprobe -a virtio_net 9pnet_virtio 9p || note "modprobe of net/9p modules failed"

ip link set lo up
ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up && ip route add default via 10.0.2.2 \
    || note "eth0 setup failed"

# The host's file share (the guest image); absent share is not an error.
mkdir -p /mnt/guest
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288 guest /mnt/guest 2>/dev/null \
    || note "no 9p share 'guest'"

modprobe -a vfio vfio_iommu_type1 mdev mtty qmigdev || note "modprobe vfio/mdev/mtty/qmigdev failed"

# The PCI path: our variant driver (it binds only through driver_override, so the edu
# functions stay unbound until a configuration binds them), and the igb NIC's SR-IOV
# VFs on igbvf, as a host with real VFs has them. After eth0 is up: igb's port must
# not take the name eth0.
modprobe -a vfio-pci qmigpci igb igbvf || note "modprobe vfio-pci/qmigpci/igb/igbvf failed"
for pf in /sys/bus/pci/devices/*; do
    [ "$(cat "$pf/vendor" "$pf/device" 2>/dev/null | tr '\n' ' ')" = "0x8086 0x10c9 " ] || continue
    [ -w "$pf/sriov_numvfs" ] && echo 2 >"$pf/sriov_numvfs" 2>/dev/null \
        || note "no SR-IOV VFs on igb ${pf##*/}"
done

mkdir -p /var/log
dropbear -F -E -s -p 22 \
    -r /etc/dropbear/dropbear_ed25519_host_key \
    -r /etc/dropbear/dropbear_ecdsa_host_key \
    -r /etc/dropbear/dropbear_rsa_host_key >/var/log/dropbear.log 2>&1 &

# Ready = something listens on TCP port 22 (0x0016).
i=0
until grep -q '^ *[0-9]*: [0-9A-F]*:0016 [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null; do
    i=$((i + 1))
    [ $i -le 200 ] || { note "dropbear did not start"; break; }
    sleep 0.05
done
printf 'qmp-mig-lab: ready\n' >/dev/console

shutdown() {
    kill -TERM -1 2>/dev/null; sleep 1; kill -KILL -1 2>/dev/null
    sync
    umount -a -r 2>/dev/null
    case $1 in
        reboot) reboot -f ;;
        halt) halt -f ;;
        *) poweroff -f ;;
    esac
}
trap 'shutdown poweroff' USR2
trap 'shutdown halt' USR1
trap 'shutdown reboot' TERM INT

# Stay PID 1: wait reaps any child, including orphans re-parented to us.
while :; do
    sleep 3600 &
    wait $!
done
EOF

# --- 6. Tiny initramfs: busybox + just the modules to mount ext4 on virtio-blk
# (virtio_pci is built in) and 9p; then switch_root to /sbin/qmp-mig-init.
say "building initramfs"
I=$W/initramfs
mkdir -p "$I"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$BUSYBOX" "$I/bin/busybox"
for a in sh mount umount insmod switch_root sleep cat poweroff echo mkdir; do
    ln -s busybox "$I/bin/$a"
done
: >"$I/modules.load"
for m in virtio_blk crc32c_generic crc32c_intel ext4 9pnet_virtio 9p; do
    # --show-depends lists "insmod <path>" lines in load order, dependencies first.
    modprobe -d "$W/kernel" -S "$KVER" --show-depends "$m" | while read -r verb path _; do
        [ "$verb" = insmod ] || continue
        ko=$(basename "$path" .xz)
        grep -qx "$ko" "$I/modules.load" && continue
        # busybox insmod cannot read .ko.xz: store them uncompressed.
        case $path in *.xz) xz -dc "$path" >"$I/lib/modules/$ko" ;; *) cp "$path" "$I/lib/modules/$ko" ;; esac
        echo "$ko" >>"$I/modules.load"
    done
done
install -m 755 /dev/stdin "$I/init" <<'EOF'
#!/bin/sh
# qmp-mig lab initramfs: mount the ext4 root (virtio-blk) and switch_root into it.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() { echo "qmp-mig-lab initramfs: $*" >/dev/console; sleep 1; poweroff -f; }

root=/dev/vda
init=/sbin/qmp-mig-init
for arg in $(cat /proc/cmdline); do
    case $arg in
        root=*) root=${arg#root=} ;;
        init=*) init=${arg#init=} ;;
    esac
done

while read -r ko; do
    insmod "/lib/modules/$ko" 2>/dev/null || echo "qmp-mig-lab initramfs: insmod $ko failed" >/dev/console
done </modules.load

i=0
while [ ! -b "$root" ]; do
    i=$((i + 1))
    [ $i -le 100 ] || fail "no root device $root"
    sleep 0.1
done
mount -t ext4 -o rw "$root" /newroot || fail "cannot mount $root"
[ -x "/newroot$init" ] || fail "no $init on $root"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot "$init"
EOF
(cd "$I" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | zstd -q -19 >"$W/out/initrd.img"

# --- 7. The disk: sparse ext4 filled from the tree, no loop mount.
say "making rootfs.img"
truncate -s "$ROOTFS_SIZE" "$W/out/rootfs.img"
mkfs.ext4 -q -F -L qmp-mig-lab -E root_owner=0:0 -d "$R" "$W/out/rootfs.img"

# --- 8. Manifest, then move the results into OUTDIR.
BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
cat >"$W/out/manifest.json" <<EOF
{
  "image": "qmp-mig-lab",
  "kernel_abi": "$KVER",
  "kernel_package_version": "$KPKG_VERSION",
  "debian_suite": "$DEBIAN_SUITE",
  "qemu_package": "qemu-system-x86",
  "qemu_version": "$QEMU_VERSION",
  "mtty_module": "/lib/modules/$KVER/extra/mtty.ko",
  "qmigdev_module": "/lib/modules/$KVER/extra/qmigdev.ko",
  "qmigpci_module": "/lib/modules/$KVER/extra/qmigpci.ko",
  "ssh_user": "root",
  "ssh_key": "id_ed25519",
  "ready_marker": "qmp-mig-lab: ready",
  "build_date": "$BUILD_DATE",
  "build_seconds": $(( $(date +%s) - T0 ))
}
EOF
for f in vmlinuz initrd.img rootfs.img id_ed25519 id_ed25519.pub manifest.json; do
    mv -f "$W/out/$f" "$OUTDIR/$f"
done
chmod 600 "$OUTDIR/id_ed25519"
say "done in $(( $(date +%s) - T0 )) s: $OUTDIR"
