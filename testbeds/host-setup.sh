#!/usr/bin/env bash
# Prepare this Debian 12 host for cgsnap: QEMU (TCG), libvirt, the guest build tools, and the
# libvirt daemons. Idempotent: safe to run before every demo or test run.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need=0
for b in qemu-system-x86_64 virsh libvirtd busybox cpio pkg-config debootstrap mkfs.ext4 psql chromium borgmatic restic; do
  command -v "$b" >/dev/null || need=1
done
[ -e /usr/include/libvirt/libvirt.h ] || need=1
if [ "$need" = 1 ]; then
  $SUDO apt-get update -qq
  # qemu-utils must match qemu-system-x86 (a newer backported qemu-utils breaks its install):
  # pin both to the same candidate version.
  v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  $SUDO apt-get install -y -qq --allow-downgrades \
    qemu-system-x86 "qemu-utils=$v" "qemu-block-extra=$v" \
    libvirt-daemon-system libvirt-dev busybox-static cpio pkg-config \
    debootstrap e2fsprogs postgresql-client chromium borgbackup borgmatic restic >/dev/null
else
  # The guest kernel is fetched with apt-get download: package lists must exist.
  ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || $SUDO apt-get update -qq
fi

pgrep -x virtlogd >/dev/null || $SUDO virtlogd -d
pgrep -x libvirtd >/dev/null || $SUDO libvirtd -d
for _ in $(seq 1 100); do
  $SUDO virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
  sleep 0.1
done
echo "host-setup: libvirtd did not answer on qemu:///system" >&2
exit 1
