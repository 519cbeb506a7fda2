#!/usr/bin/env bash
# Back up the frozen images of a cgsnap group with restic.
#
# Usage: cgsnap-restic.sh GROUP [PATH...] [-- RESTIC-BACKUP-OPTION...]
#   PATH defaults to /var/lib/libvirt/images; always excluded: overlays (*.cgsnap-overlay) and
#   cgsnap's scratch directories there (cgsnap-verify: verify's sandboxes, cgsnap-restore: the
#   restores of the systemd units and the cron job).
#   The repository and password come from restic's own environment (RESTIC_REPOSITORY,
#   RESTIC_PASSWORD, RESTIC_PASSWORD_FILE, ...) or from options after `--`.
# Environment: CGSNAP (cgsnap executable, default `cgsnap`; its global options come from
#   CGSNAP_CATALOG, CGSNAP_METRICS_DIR and LIBVIRT_DEFAULT_URI), RESTIC (restic executable,
#   default `restic`).
#   CGSNAP_BACKUP_TO=DIR: backup-cut mode. pre takes a backup cut through libvirt's backup API
#   instead of an overlay snapshot, exports it into DIR/ID (incremental to the last cut
#   exported there, a full one every CGSNAP_FULL_EVERY cuts, default 7) and ends its jobs; the
#   disk chains are never changed. PATH then defaults to DIR, which holds the whole chain, so
#   every restic snapshot restores on its own (restic reads only the new cut's files).
#
# Flow: `cgsnap hook pre --group GROUP --token restic-UUID` (a token new for every run);
# `restic backup --exclude ... PATH...` when pre succeeded; `cgsnap hook post --group GROUP
# --token restic-UUID`, which releases only the snapshot of this run. post always runs: after a
# failed backup, after a failed pre (one that failed half-way may have left this run's snapshot
# holding overlays; a snapshot of another job is left alone), and after SIGTERM, SIGINT or
# SIGHUP (passed on to restic's whole process group as SIGTERM; post waits until every process
# of it has ended). A signal during pre or post is deferred until that step finished; post
# itself is never interrupted.
#
# Exit code: pre's when it failed (the codes of the top-level README); else 128+N after signal
# N; else restic's when the backup failed (1 = fatal, no snapshot saved; 3 = snapshot saved but
# some source files could not be read, i.e. a partial backup); else post's; 0 when all
# succeeded.
# stdout is one summary line; the output of cgsnap and restic goes to stderr.
set -uo pipefail

me=cgsnap-restic
group=${1:-}
[ -n "$group" ] && [ "$group" != "--" ] || {
  echo "usage: $me GROUP [PATH...] [-- RESTIC-BACKUP-OPTION...]" >&2
  exit 2
}
shift
paths=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  paths+=("$1")
  shift
done
[ "${1:-}" = "--" ] && shift
staging=${CGSNAP_BACKUP_TO:-}
if [ ${#paths[@]} -eq 0 ]; then
  if [ -n "$staging" ]; then paths=("$staging"); else paths=(/var/lib/libvirt/images); fi
fi
pre_mode=()
what=snapshot
if [ -n "$staging" ]; then
  pre_mode=(--backup-to "$staging" --full-every "${CGSNAP_FULL_EVERY:-7}")
  what="backup cut"
fi
cgsnap=${CGSNAP:-cgsnap}
restic=${RESTIC:-restic}

# Signal handling and `run`: next to this script once installed, one level up in the source tree.
lib=$(dirname "${BASH_SOURCE[0]}")
[ -f "$lib/cgsnap-run.sh" ] || lib=$lib/..
# shellcheck source=hooks/cgsnap-run.sh
. "$lib/cgsnap-run.sh" || exit 1

summary() {
  echo "$me: group $group: $*"
}

out=$(mktemp) || exit 1
trap 'rm -f "$out"' EXIT

token=restic-$(new_token)
release_cmd="cgsnap hook post --group $group --token $token"

run 0 "$cgsnap" hook pre --group "$group" --token "$token" "${pre_mode[@]}" >"$out"
pre_rc=$rc
cat "$out" >&2
# `cgsnap: snapshot ID of group G taken: ...` or `cgsnap: backup cut ID of group G exported ...`
snap=$(sed -n 's/^cgsnap: \(snapshot\|backup cut\) \([^ ]*\) of group .*/\2/p' "$out")
snap=${snap:-?}
if [ -n "$staging" ]; then
  # `..., 4 disks, incremental since ID, ...` or `..., full (why), ...`
  mode=$(sed -n 's/^cgsnap: backup cut .* disks, \(incremental since [^ ,]*\|full\).*/\1/p' "$out")
  [ -z "$mode" ] || snap="$snap ($mode)"
fi

restic_rc=""
if [ $pre_rc -eq 0 ] && [ -z "$signal" ]; then
  run 1 "$restic" backup --exclude '*.cgsnap-overlay' --exclude '/var/lib/libvirt/images/cgsnap-verify' \
    --exclude '/var/lib/libvirt/images/cgsnap-restore' "$@" "${paths[@]}" >"$out"
  restic_rc=$rc
  cat "$out" >&2
fi
# `snapshot 1a2b3c4d saved`
saved=$(sed -n 's/^snapshot \([0-9a-f]*\) saved.*/\1/p' "$out")

run 0 "$cgsnap" hook post --group "$group" --token "$token" >"$out"
post_rc=$rc
cat "$out" >&2
if [ $post_rc -ne 0 ] && [ -n "$staging" ]; then
  released="ending its jobs FAILED (cgsnap exit $post_rc; retry: $release_cmd)"
elif [ $post_rc -ne 0 ]; then
  released="release FAILED (cgsnap exit $post_rc; retry: $release_cmd)"
elif [ -n "$staging" ]; then
  # pre ends its cut's jobs once the export is complete; post ends them only after a pre that
  # failed half-way.
  released="jobs ended"
elif grep -q '^cgsnap: nothing to release' "$out"; then
  released="nothing to release"
else
  released="released"
fi

if [ $pre_rc -ne 0 ]; then
  code=$pre_rc
  summary "$what FAILED (cgsnap exit $pre_rc), nothing backed up, $released; exit $code"
elif [ -n "$signal" ]; then
  code=$(signal_code)
  summary "$what $snap: backup interrupted by SIG$signal, $released; exit $code"
elif [ "$restic_rc" -eq 3 ]; then
  code=3
  summary "$what $snap: PARTIAL backup, restic snapshot ${saved:-?} saved but some source files could not be read (restic exit 3), $released; exit $code"
elif [ "$restic_rc" -ne 0 ]; then
  code=$restic_rc
  summary "$what $snap: restic backup FAILED (restic exit $restic_rc), $released; exit $code"
else
  code=$post_rc
  summary "$what $snap backed up as restic snapshot ${saved:-?}, $released; exit $code"
fi
exit $code
