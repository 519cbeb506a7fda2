# Steps shared by the testbed image builds (postgres/build.sh, cassandra/build.sh); sourced.
# The caller defines `die MESSAGE`. Images are OUT/PREFIX-NAME.qcow2 and count as current only
# while OUT/PREFIX-inputs.sha256 holds the hash of the inputs they were built from, so a change
# to a build script or to this file rebuilds them. File systems are built from directories
# (mkfs.ext4 -d): no image is ever mounted on the host.

# This file, for the caller's inputs hash.
ROOTFS_LIB=${BASH_SOURCE[0]}

rootfs_need_tools() {
  local b
  for b in debootstrap mkfs.ext4 qemu-img; do
    command -v "$b" >/dev/null || die "$b not found: apt-get install debootstrap e2fsprogs qemu-utils"
  done
}

# rootfs_current OUT PREFIX INPUTS NAME...: true (and prints the root image) when every image
# NAME is there and was built from INPUTS.
rootfs_current() {
  local out=$1 prefix=$2 inputs=$3 n
  shift 3
  [ -f "$out/$prefix-inputs.sha256" ] && [ "$(cat "$out/$prefix-inputs.sha256")" = "$inputs" ] || return 1
  for n in "$@"; do [ -s "$out/$prefix-$n.qcow2" ] || return 1; done
  echo "$out/$prefix-root.qcow2"
}

# rootfs_start NAME: sets `work` (a scratch directory, removed on exit) and `root` (the root
# file system being built in it). Whatever the build mounted inside `root` is unmounted first.
rootfs_start() {
  work=$(mktemp -d "/var/tmp/cgsnap-$1.XXXXXX")
  root="$work/root"
  # `|| true`: under `set -e` a failing command in an EXIT trap becomes the script's status.
  trap 'umount "$root/proc" "$root/dev/shm" "$root/dev" 2>/dev/null || true; rm -rf "$work"' EXIT
}

# rootfs_debootstrap PACKAGES: Debian 12 minbase plus PACKAGES (comma-separated) into `root`,
# with the package caches emptied.
rootfs_debootstrap() {
  debootstrap --variant=minbase --include="$1" bookworm "$root" \
    "${CGSNAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}" > "$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
}

# rootfs_init NAME TAG MOUNT... < BODY: writes `root`/sbin/NAME, the guest's PID 1: pseudo file
# systems, root remounted writable, each MOUNT ("vdX:/dir:what") mounted, loopback and the
# user-mode network (guest 10.0.2.15, gateway 10.0.2.2), then BODY, then reaping orphans
# forever (PID 1 must never exit). BODY may call `say`, which prints "TAG: ..." on the console;
# a disk that does not mount is reported as "TAG: error: cannot mount WHAT disk vdX".
rootfs_init() {
  local name=$1 tag=$2 m dev dir what
  shift 2
  {
    printf '#!/bin/sh\n# PID 1 of a cgsnap testbed guest (written by rootfs.sh at image build).\n'
    printf 'export PATH=/usr/sbin:/usr/bin:/sbin:/bin\n'
    printf 'say() { echo "%s: $*" > /dev/console; }\n' "$tag"
    cat <<'COMMON'
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -o remount,rw /
COMMON
    for m in "$@"; do
      dev=${m%%:*}
      dir=${m#*:}
      what=${dir#*:}
      dir=${dir%%:*}
      printf 'mount /dev/%s %s || say "error: cannot mount %s disk %s"\n' "$dev" "$dir" "$what" "$dev"
    done
    cat <<'COMMON'
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
COMMON
    cat
    printf '# PID 1 reaps orphans forever.\nwhile :; do wait; sleep 1; done\n'
  } > "$root/sbin/$name"
  chmod 755 "$root/sbin/$name"
}

# rootfs_images OUT PREFIX INPUTS ROOTSIZE DISK...: each DISK ("name:/dir:label:size") becomes
# an ext4 image of `root`/dir (ownership kept), which is then emptied so it stays only a mount
# point; then `root` itself becomes PREFIX-root (label cgsnap-root, ROOTSIZE). All are
# converted to OUT/PREFIX-NAME.qcow2, each replaced by rename, the inputs hash written last,
# and the root image printed.
rootfs_images() {
  local out=$1 prefix=$2 inputs=$3 rootsize=$4 d name dir label size names=root
  shift 4
  for d in "$@"; do
    IFS=: read -r name dir label size <<< "$d"
    mkfs.ext4 -q -F -L "$label" -d "$root$dir" "$work/$name.raw" "$size"
    rm -rf "${root:?}$dir"/*
    names="$names $name"
  done
  mkfs.ext4 -q -F -L cgsnap-root -d "$root" "$work/root.raw" "$rootsize"
  for name in $names; do
    qemu-img convert -f raw -O qcow2 "$work/$name.raw" "$out/$prefix-$name.qcow2.tmp"
    chmod 644 "$out/$prefix-$name.qcow2.tmp"
    mv "$out/$prefix-$name.qcow2.tmp" "$out/$prefix-$name.qcow2"
  done
  echo "$inputs" > "$out/$prefix-inputs.sha256"
  echo "$out/$prefix-root.qcow2"
}
