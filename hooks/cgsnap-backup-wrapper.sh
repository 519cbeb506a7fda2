#!/usr/bin/env bash
# Run a backup command between `cgsnap hook pre` and `cgsnap hook post` for one group.
# Usage: cgsnap-backup-wrapper.sh GROUP -- BACKUP-COMMAND [ARGS...]
# The release always runs once the snapshot was taken, even when the backup fails; the exit
# code is the backup's, or cgsnap's when the snapshot or the release failed.
set -uo pipefail
group=${1:?usage: cgsnap-backup-wrapper.sh GROUP -- COMMAND...}
shift
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "cgsnap-backup-wrapper: no backup command given" >&2; exit 2; }

cgsnap hook pre --group "$group" || exit $?
"$@"
backup_rc=$?
cgsnap hook post --group "$group"
post_rc=$?
[ $backup_rc -ne 0 ] && exit $backup_rc
exit $post_rc
