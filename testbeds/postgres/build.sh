#!/usr/bin/env bash
# Build the PostgreSQL 15 testbed images from Debian packages only:
#   OUTDIR/pg-root.qcow2  root file system (debootstrap minbase + postgresql-15), ext4, read-only base
#   OUTDIR/pg-data.qcow2  ext4 data disk template holding an initialized cluster (PGDATA)
#   OUTDIR/pg-wal.qcow2   ext4 WAL disk template holding its pg_wal
# The cluster is initialized on the host (chroot) so a guest only mounts and starts it.
# Shared steps (cache check, debootstrap, guest init, images) are in lib/rootfs.sh, which cgsnap
# writes beside this script as rootfs.sh. Rebuilt when either changes.
# Usage: build.sh OUTDIR        (run as root; needs debootstrap, e2fsprogs, qemu-utils)
set -euo pipefail

out=${1:?usage: build.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "postgres/build.sh: $*" >&2; exit 1; }
lib=$here/rootfs.sh
[ -f "$lib" ] || lib=$here/../lib/rootfs.sh
# shellcheck source=../lib/rootfs.sh
. "$lib"
rootfs_need_tools

inputs=$(cat "$0" "$ROOTFS_LIB" | sha256sum | cut -d' ' -f1)
rootfs_current "$out" pg "$inputs" root data wal && exit 0

rootfs_start pg
rootfs_debootstrap postgresql-15,iproute2,procps

# The package's default cluster is not used: ours lives on the data and WAL disks.
rm -rf "$root/var/lib/postgresql/15" "$root/etc/postgresql/15"
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

# Console lines: "CGSNAP-PG: ready" once the server accepts connections (after any crash
# recovery), "CGSNAP-PG: error ..." otherwise.
rootfs_init cgsnap-pg-init CGSNAP-PG vdb:/pgdata:data vdc:/pgwal:WAL <<'INIT'
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
INIT

rootfs_images "$out" pg "$inputs" 2G data:/pgdata:cgsnap-data:1G wal:/pgwal:cgsnap-wal:1G
