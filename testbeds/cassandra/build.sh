#!/usr/bin/env bash
# Build the Cassandra testbed images from Debian packages plus a Cassandra binary distribution
# given by path (CGSNAP_CASSANDRA_HOME: the layout of an Apache Cassandra binary tarball, bin/
# conf/ lib/). Nothing is downloaded but Debian packages.
#   OUTDIR/cass-root.qcow2       root (debootstrap minbase + Java runtime + the distribution)
#   OUTDIR/cass-commitlog.qcow2  ext4 commit log disk template (/casscommit/commitlog)
#   OUTDIR/cass-data.qcow2       ext4 data disk template (/cassdata: data, hints, saved caches)
# Static cassandra.yaml edits happen here; the commit log sync mode is applied by the guest's
# init at every boot from the kernel command line, so one image serves both modes.
# Rebuilt when this script, cass-yaml.sh or the distribution (version, jar list, conf, bin)
# changes. Usage: build.sh OUTDIR   (root; needs debootstrap, e2fsprogs, qemu-utils)
set -euo pipefail

out=${1:?usage: build.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "cassandra/build.sh: $*" >&2; exit 1; }
for b in debootstrap mkfs.ext4 qemu-img; do
  command -v "$b" >/dev/null || die "$b not found: apt-get install debootstrap e2fsprogs qemu-utils"
done
# shellcheck source=yaml.sh
. "$here/cass-yaml.sh"
mirror=${CGSNAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Debian 12 ships Java 17 only: Cassandra 5.0 supports it; 4.x supports 8 and 11 only.
jre=${CGSNAP_CASSANDRA_JRE_PACKAGE:-openjdk-17-jre-headless}

home=${CGSNAP_CASSANDRA_HOME:?CGSNAP_CASSANDRA_HOME is not set: point it at an Apache Cassandra binary distribution (bin/, conf/, lib/)}
[ -d "$home" ] || die "CGSNAP_CASSANDRA_HOME=$home is not a directory"
home=$(cd "$home" && pwd)
for f in bin/cassandra bin/nodetool conf/cassandra.yaml conf/cassandra-env.sh; do
  [ -f "$home/$f" ] || die "$home/$f missing: CGSNAP_CASSANDRA_HOME must have the layout of a binary tarball"
done
version=$(ls "$home/lib" | sed -n 's/^apache-cassandra-\([0-9][^/]*\)\.jar$/\1/p' | sed -n 1p)
[ -n "$version" ] || die "$home/lib has no apache-cassandra-VERSION.jar"
major=${version%%.*}

inputs=$( { cat "$0" "$here/cass-yaml.sh"; echo "$jre $version"; ls "$home/lib";
            cat "$home/conf/cassandra.yaml" "$home/bin/cassandra"; } | sha256sum | cut -d' ' -f1)
if [ -f "$out/cass-inputs.sha256" ] && [ "$(cat "$out/cass-inputs.sha256")" = "$inputs" ] \
   && [ -s "$out/cass-root.qcow2" ] && [ -s "$out/cass-commitlog.qcow2" ] && [ -s "$out/cass-data.qcow2" ]; then
  echo "$out/cass-root.qcow2"
  exit 0
fi

work=$(mktemp -d /var/tmp/cgsnap-cass.XXXXXX)
root="$work/root"
cleanup() {
  umount "$root/proc" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

debootstrap --variant=minbase --include="$jre",iproute2,procps \
  bookworm "$root" "$mirror" > "$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

mount -t proc proc "$root/proc"
chroot "$root" java -version > "$work/java.txt" 2>&1 || { cat "$work/java.txt" >&2; die "java does not run in the image"; }
chroot "$root" useradd --system --no-create-home --home-dir /opt/cassandra --shell /usr/sbin/nologin cassandra
umount "$root/proc"

# The distribution, without whatever state a previous local run left in it.
mkdir -p "$root/opt/cassandra"
( cd "$home" && tar --exclude=./data --exclude=./logs -cf - . ) | tar -xf - -C "$root/opt/cassandra"
mkdir -p "$root/opt/cassandra/logs" "$root/casscommit/commitlog" \
  "$root/cassdata/data" "$root/cassdata/hints" "$root/cassdata/saved_caches" "$root/cassdata/cdc_raw"
echo "$version" > "$root/etc/cgsnap-cassandra-version"
cp "$here/cass-yaml.sh" "$root/usr/local/lib/cgsnap-cass-yaml.sh"

y="$root/opt/cassandra/conf/cassandra.yaml"
yaml_set "$y" cluster_name "'cgsnap'"
yaml_set_list "$y" data_file_directories /cassdata/data
yaml_set "$y" commitlog_directory /casscommit/commitlog
yaml_set "$y" hints_directory /cassdata/hints
yaml_set "$y" saved_caches_directory /cassdata/saved_caches
yaml_set "$y" cdc_raw_directory /cassdata/cdc_raw
# The guest's address on QEMU's user-mode network; the host reaches it only via a forward.
for k in listen_interface rpc_interface broadcast_address broadcast_rpc_address; do yaml_unset "$y" "$k"; done
yaml_set "$y" listen_address 10.0.2.15
yaml_set "$y" rpc_address 10.0.2.15
yaml_set "$y" start_native_transport true
yaml_set "$y" native_transport_port 9042
yaml_unset "$y" seed_provider
cat >> "$y" <<'YAML'
seed_provider:
    - class_name: org.apache.cassandra.locator.SimpleSeedProvider
      parameters:
          - seeds: "10.0.2.15"
YAML
# A default so the image is complete; the init replaces it from the kernel command line.
cass_sync "$y" "$major" periodic 10000
printf '127.0.0.1 localhost\n10.0.2.15 cgsnap-cass\n' > "$root/etc/hosts"
echo cgsnap-cass > "$root/etc/hostname"
chroot "$root" chown -R cassandra:cassandra /opt/cassandra /casscommit /cassdata

cat > "$root/sbin/cgsnap-cass-init" <<'INIT'
#!/bin/sh
# PID 1 of the Cassandra testbed guest. Console lines: "CGSNAP-CASS: ready" once the CQL port
# accepts connections (after commit log replay), "CGSNAP-CASS: error ..." otherwise; the
# server's own log goes to the console too. Kernel command line: cgsnap.cass_sync=batch|periodic,
# cgsnap.cass_sync_period_ms=N (periodic).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
say() { echo "CGSNAP-CASS: $*" > /dev/console; }
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -o remount,rw /
mount /dev/vdb /casscommit || say "error: cannot mount commit log disk vdb"
mount /dev/vdc /cassdata || say "error: cannot mount data disk vdc"
hostname cgsnap-cass
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
mode=periodic
period=10000
for opt in $(cat /proc/cmdline); do
  case "$opt" in
    cgsnap.cass_sync=*) mode=${opt#cgsnap.cass_sync=} ;;
    cgsnap.cass_sync_period_ms=*) period=${opt#cgsnap.cass_sync_period_ms=} ;;
  esac
done
. /usr/local/lib/cgsnap-cass-yaml.sh
version=$(cat /etc/cgsnap-cassandra-version)
cass_sync /opt/cassandra/conf/cassandra.yaml "${version%%.*}" "$mode" "$period"
say "commitlog_sync $mode period_ms $period version $version"
# A small heap suits a TCG guest of 1.5 GiB; cassandra-env.sh takes both or neither.
export MAX_HEAP_SIZE=512M HEAP_NEWSIZE=128M
export JAVA_HOME=$(dirname "$(dirname "$(readlink -f /usr/bin/java)")")
su cassandra -s /bin/sh -c "exec /opt/cassandra/bin/cassandra -f" > /dev/console 2>&1 &
i=0
until bash -c 'exec 3<>/dev/tcp/10.0.2.15/9042' 2>/dev/null; do
  i=$((i + 1))
  [ $i -gt 900 ] && { say "error: CQL port not open after 900 s"; break; }
  sleep 1
done
[ $i -le 900 ] && say "ready"
# PID 1 reaps orphans forever.
while :; do wait; sleep 1; done
INIT
chmod 755 "$root/sbin/cgsnap-cass-init"

# ext4 images built from directories, no mount needed; ownership is preserved.
mkfs.ext4 -q -F -L cgsnap-commitlog -d "$root/casscommit" "$work/commitlog.raw" 2G
mkfs.ext4 -q -F -L cgsnap-data -d "$root/cassdata" "$work/data.raw" 2G
rm -rf "$root/casscommit"/* "$root/cassdata"/*
mkfs.ext4 -q -F -L cgsnap-root -d "$root" "$work/root.raw" 3G
for n in root commitlog data; do
  qemu-img convert -f raw -O qcow2 "$work/$n.raw" "$out/cass-$n.qcow2.tmp"
  chmod 644 "$out/cass-$n.qcow2.tmp"
  mv "$out/cass-$n.qcow2.tmp" "$out/cass-$n.qcow2"
done
echo "$inputs" > "$out/cass-inputs.sha256"
echo "$out/cass-root.qcow2"
