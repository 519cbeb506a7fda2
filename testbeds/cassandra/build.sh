#!/usr/bin/env bash
# Build the Cassandra testbed images from Debian packages plus a Cassandra binary distribution
# given by path (CGSNAP_CASSANDRA_HOME: the layout of an Apache Cassandra binary tarball, bin/
# conf/ lib/). Nothing is downloaded but Debian packages.
#   OUTDIR/cass-root.qcow2       root (debootstrap minbase + Java runtime + the distribution)
#   OUTDIR/cass-commitlog.qcow2  ext4 commit log disk template (/casscommit/commitlog)
#   OUTDIR/cass-data.qcow2       ext4 data disk template (/cassdata: data, hints, saved caches)
# Static cassandra.yaml edits happen here; the commit log sync mode is applied by the guest's
# init at every boot from the kernel command line, so one image serves both modes.
# The version-specific cassandra.yaml edits come from cass-yaml-edits, written beside this
# script by cgsnap from its table (testbeds/src/cass_config.rs) after checking that the version
# and the Java are supported; this script applies them and never decides them itself.
# Rebuilt when this script, cass-yaml.sh, cass-watch.sh, cass-yaml-edits or the distribution
# (version, jar list, conf, bin) changes, or lib/rootfs.sh (the steps shared with the PostgreSQL
# build, written beside this script as rootfs.sh by cgsnap). Usage: build.sh OUTDIR   (root;
# needs debootstrap, e2fsprogs, qemu-utils)
set -euo pipefail

out=${1:?usage: build.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "cassandra/build.sh: $*" >&2; exit 1; }
lib=$here/rootfs.sh
[ -f "$lib" ] || lib=$here/../lib/rootfs.sh
# shellcheck source=../lib/rootfs.sh
. "$lib"
rootfs_need_tools
# shellcheck source=yaml.sh
. "$here/cass-yaml.sh"
edits=$here/cass-yaml-edits
[ -f "$edits" ] || die "$edits missing: cgsnap writes it (run through cgsnap testbed up)"
# Debian 12 ships Java 17 only; cgsnap has checked that the distribution runs on this one.
jre=${CGSNAP_CASSANDRA_JRE_PACKAGE:-openjdk-17-jre-headless}

home=${CGSNAP_CASSANDRA_HOME:?CGSNAP_CASSANDRA_HOME is not set: point it at an Apache Cassandra binary distribution (bin/, conf/, lib/)}
[ -d "$home" ] || die "CGSNAP_CASSANDRA_HOME=$home is not a directory"
home=$(cd "$home" && pwd)
for f in bin/cassandra bin/nodetool conf/cassandra.yaml conf/cassandra-env.sh; do
  [ -f "$home/$f" ] || die "$home/$f missing: CGSNAP_CASSANDRA_HOME must have the layout of a binary tarball"
done
version=$(ls "$home/lib" | sed -n 's/^apache-cassandra-\([0-9][^/]*\)\.jar$/\1/p' | sed -n 1p)
[ -n "$version" ] || die "$home/lib has no apache-cassandra-VERSION.jar"
[ "$(edits_value "$edits" version)" = "$version" ] \
  || die "$edits is for Cassandra $(edits_value "$edits" version), the distribution is $version"

inputs=$( { cat "$0" "$ROOTFS_LIB" "$here/cass-yaml.sh" "$here/cass-watch.sh" "$edits"; echo "$jre $version"; ls "$home/lib";
            cat "$home/conf/cassandra.yaml" "$home/bin/cassandra"; } | sha256sum | cut -d' ' -f1)
rootfs_current "$out" cass "$inputs" root commitlog data && exit 0

rootfs_start cass
rootfs_debootstrap "$jre",iproute2,procps

mount -t proc proc "$root/proc"
chroot "$root" java -version > "$work/java.txt" 2>&1 || { cat "$work/java.txt" >&2; die "java does not run in the image"; }
chroot "$root" useradd --system --no-create-home --home-dir /opt/cassandra --shell /usr/sbin/nologin cassandra
umount "$root/proc"

# The distribution, without whatever state a previous local run left in it.
mkdir -p "$root/opt/cassandra"
( cd "$home" && tar --exclude=./data --exclude=./logs -cf - . ) | tar -xf - -C "$root/opt/cassandra"
# persistent_settings: a 2.2-lineage server that keeps node settings beside its data
# directories cannot create it itself (the data disk's root is root's); others ignore it.
mkdir -p "$root/opt/cassandra/logs" "$root/casscommit/commitlog" \
  "$root/cassdata/data" "$root/cassdata/hints" "$root/cassdata/saved_caches" "$root/cassdata/cdc_raw" \
  "$root/cassdata/persistent_settings"
echo "$version" > "$root/etc/cgsnap-cassandra-version"
cp "$here/cass-yaml.sh" "$root/usr/local/lib/cgsnap-cass-yaml.sh"
cp "$here/cass-watch.sh" "$root/usr/local/lib/cgsnap-cass-watch.sh"
cp "$edits" "$root/etc/cgsnap-cass-yaml-edits"

y="$root/opt/cassandra/conf/cassandra.yaml"
# Directories, addresses (the guest's on QEMU's user-mode network), ports: only the keys
# this version knows (2.2 has no hints_directory, 3.0 no cdc_raw_directory, 4.0 no start_rpc).
yaml_apply "$y" "$edits"
yaml_unset "$y" seed_provider
cat >> "$y" <<'YAML'
seed_provider:
    - class_name: org.apache.cassandra.locator.SimpleSeedProvider
      parameters:
          - seeds: "10.0.2.15"
YAML
# A default so the image is complete; the init replaces it from the kernel command line.
cass_sync "$y" "$(edits_value "$edits" batch_window_ms)" periodic 10000
printf '127.0.0.1 localhost\n10.0.2.15 cgsnap-cass\n' > "$root/etc/hosts"
echo cgsnap-cass > "$root/etc/hostname"
chroot "$root" chown -R cassandra:cassandra /opt/cassandra /casscommit /cassdata

# Console lines: "CGSNAP-CASS: ready" once the CQL port accepts connections (after commit log
# replay), "CGSNAP-CASS: error: WHY" otherwise, within a second or two of the server exiting or
# logging a fatal start-up error, WHY being the server's own line. The server's output goes to
# the console and to /opt/cassandra/logs/cgsnap-server.out, which the init watches.
# Kernel command line: cgsnap.cass_sync=batch|periodic, cgsnap.cass_sync_period_ms=N (periodic).
rootfs_init cgsnap-cass-init CGSNAP-CASS "vdb:/casscommit:commit log" vdc:/cassdata:data <<'INIT'
hostname cgsnap-cass
mode=periodic
period=10000
for opt in $(cat /proc/cmdline); do
  case "$opt" in
    cgsnap.cass_sync=*) mode=${opt#cgsnap.cass_sync=} ;;
    cgsnap.cass_sync_period_ms=*) period=${opt#cgsnap.cass_sync_period_ms=} ;;
  esac
done
. /usr/local/lib/cgsnap-cass-yaml.sh
. /usr/local/lib/cgsnap-cass-watch.sh
version=$(cat /etc/cgsnap-cassandra-version)
window=$(edits_value /etc/cgsnap-cass-yaml-edits batch_window_ms)
cass_sync /opt/cassandra/conf/cassandra.yaml "$window" "$mode" "$period"
say "commitlog_sync $mode period_ms $period version $version"
# A small heap suits a TCG guest of 1.5 GiB; cassandra-env.sh takes both or neither.
export MAX_HEAP_SIZE=512M HEAP_NEWSIZE=128M
# Under TCG every JIT compile is emulated: the C1 tier alone starts the server far sooner than
# C2's long compiles. A single node has no peers, so the gossip settle wait (8 s at least)
# only delays the CQL port; every version from 2.2 to 5.0 reads both options.
export JVM_EXTRA_OPTS="-XX:TieredStopAtLevel=1 -Dcassandra.skip_wait_for_gossip_to_settle=0"
export JAVA_HOME=$(dirname "$(dirname "$(readlink -f /usr/bin/java)")")
# Through a FIFO and tee, so the server's own PID is the one watched.
log=/opt/cassandra/logs/cgsnap-server.out
mkfifo /run/cgsnap-cass-out
tee "$log" < /run/cgsnap-cass-out > /dev/console &
su cassandra -s /bin/sh -c "exec /opt/cassandra/bin/cassandra -f" > /run/cgsnap-cass-out 2>&1 &
server=$!
outcome=$(cass_wait "$server" "$log" 10.0.2.15 9042 900)
# printf, not say: the server's line may hold backslashes that echo would interpret.
printf 'CGSNAP-CASS: %s\n' "$outcome" > /dev/console
INIT

rootfs_images "$out" cass "$inputs" 3G commitlog:/casscommit:cgsnap-commitlog:2G data:/cassdata:cgsnap-data:2G
