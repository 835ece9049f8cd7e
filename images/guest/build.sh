#!/bin/bash
# Build the qmp-mig test guest (L2, booted by QEMU inside the lab): the lab's
# Debian 6.12 kernel plus one small initramfs that is the whole system: busybox,
# dropbear, the guest agents and the virtio-net modules. No disk.
#
#   images/guest/build.sh OUTDIR LABDIR
#
# LABDIR is an OUTDIR of images/lab/build.sh: its vmlinuz is reused, the modules
# are read out of its rootfs.img with debugfs (no loop mount), and its client key
# becomes root's authorized key here. Writes into OUTDIR: vmlinuz initrd.img
# id_ed25519 id_ed25519.pub manifest.json and the micro guest qmp-mig-micro.elf.
# Run as root on a Debian 12 host with
# busybox-static, dropbear-bin, e2fsprogs, cpio, zstd, xz-utils, gcc, make.
set -euo pipefail

die() { echo "guest/build.sh: $*" >&2; exit 1; }
say() { echo "guest/build.sh: [$(date +%T)] $*" >&2; }

[ $# -eq 2 ] || die "usage: $0 OUTDIR LABDIR"
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=../versions.env
. "$HERE/../versions.env"

OUTDIR=$1
LABDIR=$(cd "$2" && pwd)
BUSYBOX=/bin/busybox                      # from busybox-static
DROPBEAR=/usr/sbin/dropbear               # from dropbear-bin

for f in vmlinuz rootfs.img id_ed25519 id_ed25519.pub manifest.json; do
    [ -e "$LABDIR/$f" ] || die "$LABDIR/$f missing: build the lab first"
done
grep -q "\"kernel_abi\": \"$KVER\"" "$LABDIR/manifest.json" \
    || die "$LABDIR was built for another kernel than $KVER"
for tool in debugfs dropbearkey cpio zstd xz make gcc ldd; do
    command -v "$tool" >/dev/null || die "missing host tool: $tool"
done
[ -x "$BUSYBOX" ] && ! ldd "$BUSYBOX" >/dev/null 2>&1 || die "$BUSYBOX missing or not static (install busybox-static)"
[ -x "$DROPBEAR" ] || die "$DROPBEAR missing (install dropbear-bin)"

W=$(mktemp -d /var/tmp/qmp-mig-guest-build.XXXXXX)
cleanup() {
    local rc=$?
    rm -rf --one-file-system "$W"
    [ $rc -eq 0 ] || echo "guest/build.sh: FAILED (exit $rc)" >&2
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

mkdir -p "$OUTDIR" "$W/out"
T0=$(date +%s)
I=$W/initramfs
mkdir -p "$I"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,dev,proc,sys,run,tmp,etc/dropbear,lib/modules}
chmod 1777 "$I/tmp"

# --- 1. Kernel: the lab's, so L1 and L2 run the same kernel.
cp "$LABDIR/vmlinuz" "$W/out/vmlinuz"

# --- 2. Modules, read from the lab's rootfs.img. virtio_pci and 8250_pci (which binds
# the mtty device, PCI 4348:3253) are built into Debian's kernel; virtio_net is not.
say "extracting modules from $LABDIR/rootfs.img"
MODDIR=/usr/lib/modules/$KVER             # bookworm is merged-/usr
img_dump() { debugfs -R "dump $1 $2" "$LABDIR/rootfs.img" >/dev/null 2>&1; [ -s "$2" ]; }
img_dump "$MODDIR/modules.dep" "$W/modules.dep" || die "no $MODDIR/modules.dep in the lab rootfs"
img_dump "$MODDIR/modules.builtin" "$W/modules.builtin" || die "no modules.builtin in the lab rootfs"
for b in virtio_pci 8250_pci; do
    grep -q "/$b\.ko\$" "$W/modules.builtin" || die "$b is not built into $KVER: add it to GUEST_MODULES"
done
GUEST_MODULES="virtio_net"
: >"$I/modules.load"
add_module() {   # $1 = path relative to $MODDIR as in modules.dep; loads deps first
    local rel=$1 dep ko
    ko=$(basename "$rel" .xz)
    grep -qx "$ko" "$I/modules.load" && return 0
    # modules.dep lists a module's dependencies so that loading them in reverse works.
    for dep in $(grep "^$rel:" "$W/modules.dep" | cut -d: -f2 | tr ' ' '\n' | tac); do
        add_module "$dep"
    done
    img_dump "$MODDIR/$rel" "$W/$ko.tmp" || die "cannot read $MODDIR/$rel from the lab rootfs"
    # busybox insmod cannot read .ko.xz: store them uncompressed.
    case $rel in *.xz) xz -dc "$W/$ko.tmp" >"$I/lib/modules/$ko" ;; *) cp "$W/$ko.tmp" "$I/lib/modules/$ko" ;; esac
    echo "$ko" >>"$I/modules.load"
}
for m in $GUEST_MODULES; do
    rel=$(grep -E "(^|/)$m\.ko(\.xz)?:" "$W/modules.dep" | cut -d: -f1 | head -1)
    [ -n "$rel" ] || die "module $m not found in the lab rootfs"
    add_module "$rel"
done

# --- 3. Userland: busybox (static), dropbear + the libraries it links.
say "assembling userland"
cp "$BUSYBOX" "$I/bin/busybox"
"$BUSYBOX" --list-full | while read -r a; do
    [ -e "$I/$a" ] || ln -s /bin/busybox "$I/$a"
done
cp "$DROPBEAR" "$I/usr/sbin/dropbear"
for lib in $(ldd "$DROPBEAR" | grep -o '/[^ ]*'); do
    mkdir -p "$I$(dirname "$lib")"
    cp -L "$lib" "$I$lib"
done
# glibc's own passwd lookups need only the files (nss "files" is built into libc).
cat >"$I/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
echo 'root:*:19000:0:99999:7:::' >"$I/etc/shadow"   # '*' = no password, not locked ('!')
chmod 600 "$I/etc/shadow"
echo 'root:x:0:' >"$I/etc/group"
echo /bin/sh >"$I/etc/shells"
echo qmp-mig-guest >"$I/etc/hostname"
printf '127.0.0.1\tlocalhost\n' >"$I/etc/hosts"

install -d -m 700 "$I/root" "$I/root/.ssh"
install -m 600 "$LABDIR/id_ed25519.pub" "$I/root/.ssh/authorized_keys"
# Host keys made now: generating them in a nested TCG guest takes seconds.
for t in ed25519 ecdsa rsa; do
    dropbearkey -t "$t" -f "$I/etc/dropbear/dropbear_${t}_host_key" >/dev/null 2>&1
done

# --- 4. Guest agents (static C binaries, built from the repository now).
say "building guest agents"
make -s -C "$REPO/guest_agents" O="$W/agents" >/dev/null
AGENTS=""
for a in "$W"/agents/qmp-mig-*; do
    case $a in *.elf) continue ;; esac   # the micro guest is a guest of its own, not an agent
    install -m 755 "$a" "$I/usr/local/bin/"
    AGENTS="$AGENTS${AGENTS:+, }\"/usr/local/bin/$(basename "$a")\""
done
[ -n "$AGENTS" ] || die "guest_agents built nothing"

# --- 5. PID 1: the whole guest lives in the initramfs.
install -m 755 /dev/stdin "$I/init" <<'EOF'
#!/bin/sh
# PID 1 of the qmp-mig test guest. Sets up mounts and slirp's static network,
# starts dropbear, prints the ready marker on the console (ttyS0), then reaps
# children until halt/poweroff/reboot. It must not open ttyS1 and above: those
# are the mtty ports, and an open tty would drain their FIFO into guest RAM.
export PATH=/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root
cd /

note() { echo "qmp-mig-guest: $*" >/dev/console; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=0,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs /run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
hostname qmp-mig-guest
# The memory agent names corrupted pages by guest-physical address: never let
# compaction move its locked pages to another address behind its back.
echo 0 >/proc/sys/vm/compact_unevictable_allowed
# The device agent keeps its DMA ring and buffer in 2 MiB huge pages (two per
# function, two functions). Reserve them now, while memory is unfragmented:
# growing the pool later makes the kernel compact for tens of seconds.
echo 4 >/proc/sys/vm/nr_hugepages || note "cannot reserve huge pages"

while read -r ko; do
    insmod "/lib/modules/$ko" || note "insmod $ko failed"
done </modules.load

ip link set lo up
ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up && ip route add default via 10.0.2.2 \
    || note "eth0 setup failed"

dropbear -F -E -s -p 22 \
    -r /etc/dropbear/dropbear_ed25519_host_key \
    -r /etc/dropbear/dropbear_ecdsa_host_key \
    -r /etc/dropbear/dropbear_rsa_host_key >/run/dropbear.log 2>&1 </dev/null &

# Ready = something listens on TCP port 22 (0x0016).
i=0
until grep -q '^ *[0-9]*: [0-9A-F]*:0016 [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6 2>/dev/null; do
    i=$((i + 1))
    [ $i -le 600 ] || { note "dropbear did not start"; break; }
    usleep 50000
done
printf 'qmp-mig-guest: ready\n' >/dev/console

shutdown() {
    kill -TERM -1 2>/dev/null; sleep 1; kill -KILL -1 2>/dev/null
    sync
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

say "packing initramfs"
(cd "$I" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | zstd -q -19 >"$W/out/initrd.img"
cp "$LABDIR/id_ed25519" "$LABDIR/id_ed25519.pub" "$W/out/"

# --- 6. Manifest, then move the results into OUTDIR.
MODS=$(sed 's/.*/"&"/' "$I/modules.load" | paste -sd, | sed 's/,/, /g')
cat >"$W/out/manifest.json" <<EOF
{
  "image": "qmp-mig-guest",
  "kernel_abi": "$KVER",
  "kernel_from": "$LABDIR",
  "lab_build_date": "$(sed -n 's/.*"build_date": "\(.*\)".*/\1/p' "$LABDIR/manifest.json")",
  "modules": [$MODS],
  "agents": [$AGENTS],
  "busybox": "$("$BUSYBOX" 2>&1 | head -1 | sed 's/ multi-call.*//')",
  "dropbear": "$(dpkg-query -W -f='${Version}' dropbear-bin 2>/dev/null || echo unknown)",
  "ssh_user": "root",
  "ssh_key": "id_ed25519",
  "ready_marker": "qmp-mig-guest: ready",
  "micro_guest": "qmp-mig-micro.elf",
  "micro_guest_bytes": $(stat -c %s "$W/agents/qmp-mig-micro.elf"),
  "initrd_bytes": $(stat -c %s "$W/out/initrd.img"),
  "build_date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "build_seconds": $(( $(date +%s) - T0 ))
}
EOF
# The micro guest (guest_agents/micro): booted by QEMU itself with -kernel, no OS.
[ -s "$W/agents/qmp-mig-micro.elf" ] || die "guest_agents built no micro guest"
cp "$W/agents/qmp-mig-micro.elf" "$W/out/"
for f in vmlinuz initrd.img id_ed25519 id_ed25519.pub manifest.json qmp-mig-micro.elf; do
    mv -f "$W/out/$f" "$OUTDIR/$f"
done
chmod 600 "$OUTDIR/id_ed25519"
say "done in $(( $(date +%s) - T0 )) s: $OUTDIR"
