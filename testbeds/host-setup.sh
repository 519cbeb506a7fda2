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
# The report test validates `cgsnap report --json` against docs/report.schema.json with it.
/usr/bin/python3 -c 'import jsonschema' 2>/dev/null || need=1
if [ "$need" = 1 ]; then
  $SUDO apt-get update -qq
  # qemu-utils must match qemu-system-x86 (a newer backported qemu-utils breaks its install):
  # pin both to the same candidate version.
  v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  $SUDO apt-get install -y -qq --allow-downgrades \
    qemu-system-x86 "qemu-utils=$v" "qemu-block-extra=$v" \
    libvirt-daemon-system libvirt-dev libnbd-dev libnbd-bin busybox-static cpio pkg-config \
    debootstrap e2fsprogs postgresql-client chromium borgbackup borgmatic restic python3-jsonschema >/dev/null
else
  # The guest kernel is fetched with apt-get download: package lists must exist.
  ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || $SUDO apt-get update -qq
fi

# Debian's Bacula 9.6 daemons (director with SQLite catalog, storage daemon, file daemon) and
# bconsole, for the shipped Bareos/Bacula snippet: `bacula-dir -t` in tests/offline/hook_bareos.rs and a
# private set of daemons on loopback in tests/vm/bacula.rs. Extracted, not installed: no service
# is started, no dbconfig or debconf prompt runs, no mail server is pulled in (~6 MB). sqlite3
# creates the catalog. Re-extracted when any of the programs is missing (older set-ups had only
# the director).
BACULA=/var/cache/cgsnap/bacula
# dpkg-deb -x creates its target directory but not the parents: on a fresh host there are none.
$SUDO mkdir -p /var/cache/cgsnap
bacula_ok=1
for f in usr/sbin/bacula-dir usr/sbin/bacula-sd usr/sbin/bacula-fd usr/sbin/bconsole \
  usr/share/dbconfig-common/data/bacula-director-sqlite3/install/sqlite3; do
  [ -e "$BACULA/$f" ] || bacula_ok=0
done
if [ "$bacula_ok" = 0 ]; then
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  (cd "$tmp" && $SUDO apt-get download -qq bacula-director bacula-director-sqlite3 \
    bacula-common bacula-common-sqlite3 bacula-sd bacula-fd bacula-console libwrap0 liblzo2-2 \
    2>/dev/null)
  $SUDO rm -rf "$BACULA.new"
  for d in "$tmp"/*.deb; do $SUDO dpkg-deb -x "$d" "$BACULA.new"; done
  $SUDO rm -rf "$BACULA" && $SUDO mv "$BACULA.new" "$BACULA"
  $SUDO rm -rf "$tmp"
fi

# Prometheus' promtool (checks the shipped alert rules and the metrics file, runs the rules' unit
# tests) and node_exporter (serves the metrics file in tests/offline/hook_prometheus.rs), extracted like
# Bacula above: no service is started.
PROM=/var/cache/cgsnap/prometheus
if [ ! -x "$PROM/usr/bin/promtool" ] || [ ! -x "$PROM/usr/bin/prometheus-node-exporter" ]; then
  tmp=$(mktemp -d)
  chmod 755 "$tmp"
  (cd "$tmp" && $SUDO apt-get download -qq prometheus prometheus-node-exporter 2>/dev/null)
  $SUDO rm -rf "$PROM.new"
  for d in "$tmp"/*.deb; do $SUDO dpkg-deb -x "$d" "$PROM.new"; done
  $SUDO rm -rf "$PROM" && $SUDO mv "$PROM.new" "$PROM"
  $SUDO rm -rf "$tmp"
fi
command -v sqlite3 >/dev/null || $SUDO apt-get install -y -qq sqlite3 >/dev/null
# ss (iproute2): tests/vm/bacula.rs breaks the Bacula file daemon's storage connection with ss -K.
command -v ss >/dev/null || $SUDO apt-get install -y -qq iproute2 >/dev/null
# The Cassandra tests trace verify's connect() calls (the network rule: loopback only).
command -v strace >/dev/null || $SUDO apt-get install -y -qq strace >/dev/null

pgrep -x virtlogd >/dev/null || $SUDO virtlogd -d
pgrep -x libvirtd >/dev/null || $SUDO libvirtd -d
for _ in $(seq 1 100); do
  $SUDO virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
  sleep 0.1
done
echo "host-setup: libvirtd did not answer on qemu:///system" >&2
exit 1
