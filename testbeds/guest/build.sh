#!/usr/bin/env bash
# Build the cgsnap test guest: a Debian cloud kernel plus a busybox initramfs whose /init
# writes sequence records to every virtio disk. Usage: build.sh OUTDIR
# (No `head` in pipelines: under pipefail its early exit would fail the build with SIGPIPE.)
# Outputs OUTDIR/vmlinuz, OUTDIR/initrd.img, OUTDIR/inputs.sha256. Rebuilds only when the
# inputs (this script, the kernel package version, the busybox version) change.
set -euo pipefail

out=${1:?usage: build.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)

die() { echo "build.sh: $*" >&2; exit 1; }
command -v busybox >/dev/null || die "busybox not found: apt-get install busybox-static"
command -v cpio >/dev/null || die "cpio not found: apt-get install cpio"
busybox_bin=$(command -v busybox)
# A dynamically linked busybox would need its libraries in the initramfs.
if ldd "$busybox_bin" >/dev/null 2>&1; then
  die "$busybox_bin is dynamically linked: apt-get install busybox-static"
fi

# The versioned kernel package behind the cloud meta package.
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
  | awk '/Depends: linux-image-[0-9].*-cloud-amd64$/ && !n {print $2; n=1}')
[ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-amd64 (run apt-get update)"
kver=$(apt-cache policy "$kpkg" | awk '/Candidate:/ {print $2}')
bbver=$(busybox --help 2>&1 | sed -n 1p)

inputs=$( { sha256sum "$0" | cut -d' ' -f1; echo "$kpkg $kver"; echo "$bbver"; } | sha256sum | cut -d' ' -f1)
if [ -f "$out/inputs.sha256" ] && [ "$(cat "$out/inputs.sha256")" = "$inputs" ] \
   && [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ]; then
  echo "$out/vmlinuz"; echo "$out/initrd.img"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q "$kpkg" >/dev/null) || die "apt-get download $kpkg failed"
dpkg -x "$work"/"$kpkg"_*.deb "$work/k"
vmlinuz=$(ls "$work"/k/boot/vmlinuz-* | sed -n 1p)
[ -n "$vmlinuz" ] || die "no vmlinuz in $kpkg"

root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,tmp,mods}
cp "$busybox_bin" "$root/bin/busybox"
for app in sh mount insmod sleep usleep dd printf cat ls echo sed tr head sort mkdir switch_root; do
  ln -s busybox "$root/bin/$app"
done

# virtio drivers are modules in the cloud kernel; load order matters (dependencies first).
order="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk failover net_failover virtio_net"
n=0
for m in $order; do
  f=$(find "$work/k/lib/modules" -name "$m.ko*" | sed -n 1p)
  [ -n "$f" ] || continue # built into this kernel
  n=$((n + 1))
  dst="$root/mods/$(printf %02d $n)-$m.ko"
  case "$f" in
    *.ko.xz) xz -dc "$f" > "$dst" ;;
    *.ko.zst) zstd -qdc "$f" > "$dst" ;;
    *.ko.gz) gzip -dc "$f" > "$dst" ;;
    *) cp "$f" "$dst" ;;
  esac
done

cat > "$root/init" <<'INIT'
#!/bin/sh
# cgsnap guest init. Console protocol (ttyS0):
#   "CGSNAP-GUEST: booted", "CGSNAP-GUEST: disks vda vdb ...", then every 50 rounds "seq N".
# Disk protocol: at byte 0 of every disk, in target order, a 512-byte record
#   "CGSNAP seq=N disk=vdX\n" NUL-padded, flushed before the next disk is written.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /mods/*.ko; do [ -e "$m" ] && insmod "$m" 2>/dev/null; done
echo "CGSNAP-GUEST: booted" > /dev/console

# cgsnap.root=DEV [cgsnap.init=PATH]: hand over to a root file system on a virtio disk.
for opt in $(cat /proc/cmdline); do
  case "$opt" in
    cgsnap.root=*) newroot=${opt#cgsnap.root=} ;;
    cgsnap.init=*) newinit=${opt#cgsnap.init=} ;;
  esac
done
if [ -n "${newroot:-}" ]; then
  i=0
  while [ $i -lt 100 ] && [ ! -b "$newroot" ]; do usleep 100000; i=$((i + 1)); done
  mkdir -p /newroot
  if mount -t ext4 "$newroot" /newroot; then
    umount /proc /sys
    mount --move /dev /newroot/dev 2>/dev/null || umount /dev
    exec switch_root /newroot "${newinit:-/sbin/init}"
  fi
  echo "CGSNAP-GUEST: cannot mount root $newroot" > /dev/console
fi

mode=writer
interval_ms=20
churn=
for opt in $(cat /proc/cmdline); do
  case "$opt" in
    cgsnap.mode=*) mode=${opt#cgsnap.mode=} ;;
    cgsnap.interval_ms=*) interval_ms=${opt#cgsnap.interval_ms=} ;;
    cgsnap.churn=*) churn=${opt#cgsnap.churn=} ;;
  esac
done

i=0
while [ $i -lt 100 ] && ! ls /dev/vd? >/dev/null 2>&1; do usleep 100000; i=$((i + 1)); done
disks=$(ls /dev/vd? 2>/dev/null | sed 's,/dev/,,' | sort | tr '\n' ' ')
echo "CGSNAP-GUEST: disks $disks" > /dev/console

# cgsnap.churn=AFTER_S:MIB: AFTER_S seconds after boot, overwrite MIB MiB of the last disk from
# 8 MiB on with bytes 'c' (0x63), one flushed MiB at a time, beside the writer's records; then
# "CGSNAP-GUEST: churned MIB MiB rc=N" (N = 0 when every write succeeded).
if [ -n "$churn" ] && [ -n "$disks" ]; then
  last=$(echo $disks | tr ' ' '\n' | sed -n '$p')
  (
    sleep "${churn%%:*}"
    mib=${churn#*:}
    dd if=/dev/zero bs=1048576 count=1 2>/dev/null | tr '\000' c > /tmp/churn
    echo "CGSNAP-GUEST: churning $mib MiB on $last" > /dev/console
    rc=0 n=0
    while [ $n -lt "$mib" ]; do
      dd if=/tmp/churn of=/dev/$last bs=1048576 seek=$((n + 8)) count=1 conv=notrunc,fsync 2>/dev/null || rc=1
      n=$((n + 1))
    done
    echo "CGSNAP-GUEST: churned $mib MiB rc=$rc" > /dev/console
  ) &
fi

if [ "$mode" = writer ] && [ -n "$disks" ]; then
  seq=1
  while :; do
    for d in $disks; do
      printf 'CGSNAP seq=%d disk=%s\n' "$seq" "$d" > /tmp/rec
      # conv=sync pads the record to 512 bytes; fsync makes it durable before the next disk.
      dd if=/tmp/rec of=/dev/$d bs=512 count=1 conv=sync,notrunc,fsync 2>/dev/null
    done
    if [ $((seq % 50)) -eq 0 ]; then echo "CGSNAP-GUEST: seq $seq" > /dev/console; fi
    seq=$((seq + 1))
    usleep $((interval_ms * 1000))
  done
fi
echo "CGSNAP-GUEST: idle" > /dev/console
# /init must never exit: the kernel would panic.
while :; do sleep 3600; done
INIT
chmod 755 "$root/init"

(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$work/initrd.img"
install -m 644 "$vmlinuz" "$out/vmlinuz"
install -m 644 "$work/initrd.img" "$out/initrd.img"
echo "$inputs" > "$out/inputs.sha256"
chmod 755 "$out"
echo "$out/vmlinuz"; echo "$out/initrd.img"
