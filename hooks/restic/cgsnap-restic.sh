#!/usr/bin/env bash
# Back up the frozen images of a cgsnap group with restic.
#
# Usage: cgsnap-restic.sh GROUP [PATH...] [-- RESTIC-BACKUP-OPTION...]
#   PATH defaults to /var/lib/libvirt/images; overlays (*.cgsnap-overlay) are always excluded.
#   The repository and password come from restic's own environment (RESTIC_REPOSITORY,
#   RESTIC_PASSWORD, RESTIC_PASSWORD_FILE, ...) or from options after `--`.
# Environment: CGSNAP (cgsnap executable, default `cgsnap`; its global options come from
#   CGSNAP_CATALOG, CGSNAP_METRICS_DIR and LIBVIRT_DEFAULT_URI), RESTIC (restic executable,
#   default `restic`).
#
# Flow: `cgsnap hook pre --group GROUP`; `restic backup PATH... --exclude '*.cgsnap-overlay'`;
# `cgsnap hook post --group GROUP`. Once pre succeeded, post always runs: after a failed backup,
# and after SIGTERM, SIGINT or SIGHUP (passed on to restic as SIGTERM; restic is waited for
# first). A signal during pre or post is deferred until that step finished; post itself is never
# interrupted.
# When pre fails, post is not run: the group may hold another job's snapshot.
#
# Exit code: restic's when the backup failed (1 = fatal, no snapshot saved; 3 = snapshot saved
# but some source files could not be read, i.e. a partial backup); otherwise cgsnap's when pre or
# post failed (the codes of the top-level README); 128+N after signal N; 0 when all succeeded.
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
[ ${#paths[@]} -gt 0 ] || paths=(/var/lib/libvirt/images)
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

run 0 "$cgsnap" hook pre --group "$group" >"$out"
pre_rc=$rc
cat "$out" >&2
if [ $pre_rc -ne 0 ]; then
  summary "snapshot FAILED (cgsnap exit $pre_rc), nothing backed up, nothing to release; exit $pre_rc"
  exit $pre_rc
fi
# `cgsnap: snapshot ID of group G taken: ...`
snap=$(sed -n 's/^cgsnap: snapshot \([^ ]*\) of group .*/\1/p' "$out")
snap=${snap:-?}

restic_rc=""
if [ -z "$signal" ]; then
  run 1 "$restic" backup --exclude '*.cgsnap-overlay' "$@" "${paths[@]}" >"$out"
  restic_rc=$rc
  cat "$out" >&2
fi
# `snapshot 1a2b3c4d saved`
saved=$(sed -n 's/^snapshot \([0-9a-f]*\) saved.*/\1/p' "$out")

run 0 "$cgsnap" hook post --group "$group" >&2
post_rc=$rc
if [ $post_rc -eq 0 ]; then
  released="released"
else
  released="release FAILED (cgsnap exit $post_rc; retry: cgsnap hook post --group $group)"
fi

if [ -n "$signal" ]; then
  code=$(signal_code)
  summary "snapshot $snap: backup interrupted by SIG$signal, $released; exit $code"
elif [ "$restic_rc" -eq 3 ]; then
  code=3
  summary "snapshot $snap: PARTIAL backup, restic snapshot ${saved:-?} saved but some source files could not be read (restic exit 3), $released; exit $code"
elif [ "$restic_rc" -ne 0 ]; then
  code=$restic_rc
  summary "snapshot $snap: restic backup FAILED (restic exit $restic_rc), $released; exit $code"
else
  code=$post_rc
  summary "snapshot $snap backed up as restic snapshot ${saved:-?}, $released; exit $code"
fi
exit $code
