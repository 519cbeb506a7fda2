#!/usr/bin/env bash
# Build the PostgreSQL 15 testbed images from Debian packages only:
#   OUTDIR/pg-root.qcow2  root file system (debootstrap minbase + postgresql-15), ext4, read-only base
#   OUTDIR/pg-data.qcow2  ext4 data disk template holding an initialized cluster (PGDATA)
#   OUTDIR/pg-wal.qcow2   ext4 WAL disk template holding its pg_wal
# The cluster is initialized on the host (chroot) so a guest only mounts and starts it.
# File systems are built without mounting them (mkfs.ext4 -d). Rebuilt when this script changes.
# Usage: build.sh OUTDIR        (run as root; needs debootstrap, e2fsprogs, qemu-utils)
set -euo pipefail

out=${1:?usage: build.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
die() { echo "postgres/build.sh: $*" >&2; exit 1; }
for b in debootstrap mkfs.ext4 qemu-img; do
  command -v "$b" >/dev/null || die "$b not found: apt-get install debootstrap e2fsprogs qemu-utils"
done
mirror=${CGSNAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}

inputs=$(sha256sum "$0" | cut -d' ' -f1)
if [ -f "$out/pg-inputs.sha256" ] && [ "$(cat "$out/pg-inputs.sha256")" = "$inputs" ] \
   && [ -s "$out/pg-root.qcow2" ] && [ -s "$out/pg-data.qcow2" ] && [ -s "$out/pg-wal.qcow2" ]; then
  echo "$out/pg-root.qcow2"
  exit 0
fi

work=$(mktemp -d /var/tmp/cgsnap-pg.XXXXXX)
root="$work/root"
cleanup() {
  umount "$root/proc" "$root/dev/shm" "$root/dev" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

debootstrap --variant=minbase --include=postgresql-15,iproute2,procps \
  bookworm "$root" "$mirror" > "$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }

# The package's default cluster is not used: ours lives on the data and WAL disks.
rm -rf "$root/var/lib/postgresql/15" "$root/etc/postgresql/15"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
echo cgsnap > "$root/etc/cgsnap-pgpass"
mkdir -p "$root/pgdata" "$root/pgwal"

mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/dev/shm"
chroot "$root" chown postgres:postgres /pgdata /pgwal
chroot "$root" su postgres -s /bin/sh -c \
  "/usr/lib/postgresql/15/bin/initdb -D /pgdata/db --waldir=/pgwal/wal -U postgres \
   --auth-local=trust --auth-host=scram-sha-256 --pwfile=/etc/cgsnap-pgpass -E UTF8 --locale=C" >/dev/null
umount "$root/dev/shm" "$root/dev" "$root/proc"
cat >> "$root/pgdata/db/postgresql.conf" <<'EOF'
# cgsnap testbed
listen_addresses = '*'
unix_socket_directories = '/run/postgresql'
fsync = on
synchronous_commit = on
full_page_writes = on
shared_buffers = 32MB
max_connections = 30
# Checkpoints run almost all the time (spread over 90% of 30 s), so data pages are always
# being written: a snapshot that cuts the WAL disk before the data disk sees pages newer than
# its WAL, which is what the per-disk negative control must expose.
checkpoint_timeout = 30s
checkpoint_completion_target = 0.9
EOF
echo "host all all 0.0.0.0/0 scram-sha-256" >> "$root/pgdata/db/pg_hba.conf"

cat > "$root/sbin/cgsnap-pg-init" <<'INIT'
#!/bin/sh
# PID 1 of the PostgreSQL testbed guest. Console lines: "CGSNAP-PG: ready" once the server
# accepts connections (after any crash recovery), "CGSNAP-PG: error ..." otherwise.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "CGSNAP-PG: $*" > /dev/console; }
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -o remount,rw /
mount /dev/vdb /pgdata || say "error: cannot mount data disk vdb"
mount /dev/vdc /pgwal || say "error: cannot mount WAL disk vdc"
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
mkdir -p /run/postgresql && chown postgres:postgres /run/postgresql
su postgres -s /bin/sh -c "exec /usr/lib/postgresql/15/bin/postgres -D /pgdata/db" > /dev/console 2>&1 &
pg=$!
i=0
until su postgres -s /bin/sh -c "/usr/lib/postgresql/15/bin/pg_isready -q -h /run/postgresql"; do
  i=$((i + 1))
  # A server that exits (e.g. crash recovery PANICs) will never be ready: say so at once.
  kill -0 $pg 2>/dev/null || { say "error: server exited during start-up"; i=9999; break; }
  [ $i -gt 600 ] && { say "error: server not ready after 600 s"; break; }
  sleep 1
done
[ $i -le 600 ] && say "ready"
# PID 1 reaps orphans forever.
while :; do wait; sleep 1; done
INIT
chmod 755 "$root/sbin/cgsnap-pg-init"

# ext4 images built from directories, no mount needed; ownership is preserved.
mkfs.ext4 -q -F -L cgsnap-data -d "$root/pgdata" "$work/data.raw" 1G
mkfs.ext4 -q -F -L cgsnap-wal -d "$root/pgwal" "$work/wal.raw" 1G
rm -rf "$root/pgdata"/* "$root/pgwal"/*
mkfs.ext4 -q -F -L cgsnap-root -d "$root" "$work/root.raw" 2G
for n in root data wal; do
  qemu-img convert -f raw -O qcow2 "$work/$n.raw" "$out/pg-$n.qcow2.tmp"
  chmod 644 "$out/pg-$n.qcow2.tmp"
  mv "$out/pg-$n.qcow2.tmp" "$out/pg-$n.qcow2"
done
echo "$inputs" > "$out/pg-inputs.sha256"
echo "$out/pg-root.qcow2"
