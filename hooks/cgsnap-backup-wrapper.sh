#!/usr/bin/env bash
# Run a backup command between `cgsnap hook pre` and `cgsnap hook post` for one group.
# Usage: cgsnap-backup-wrapper.sh GROUP -- BACKUP-COMMAND [ARGS...]
# Environment: CGSNAP (cgsnap executable, default `cgsnap`; global options via CGSNAP_CATALOG,
# CGSNAP_METRICS_DIR and LIBVIRT_DEFAULT_URI).
# The release always runs once the snapshot was taken: when the backup fails, and after SIGTERM,
# SIGINT or SIGHUP (passed on to the backup command as SIGTERM, which is waited for first; a signal during
# pre or post is deferred until that step finished). When pre fails nothing else runs.
# Exit code: the backup's when it failed, else cgsnap's when the snapshot or the release failed,
# 128+N after signal N, 0 when all succeeded.
set -uo pipefail
group=${1:?usage: cgsnap-backup-wrapper.sh GROUP -- COMMAND...}
shift
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "cgsnap-backup-wrapper: no backup command given" >&2; exit 2; }
cgsnap=${CGSNAP:-cgsnap}

# Signal handling and `run` (installed next to this script).
# shellcheck source=hooks/cgsnap-run.sh
. "$(dirname "${BASH_SOURCE[0]}")/cgsnap-run.sh" || exit 1

run 0 "$cgsnap" hook pre --group "$group"
[ $rc -eq 0 ] || exit $rc
backup_rc=0
if [ -z "$signal" ]; then
  run 1 "$@"
  backup_rc=$rc
fi
run 0 "$cgsnap" hook post --group "$group"
post_rc=$rc
[ -n "$signal" ] && exit "$(signal_code)"
[ $backup_rc -ne 0 ] && exit $backup_rc
exit $post_rc
