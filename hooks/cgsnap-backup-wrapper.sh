#!/usr/bin/env bash
# Run a backup command between `cgsnap hook pre` and `cgsnap hook post` for one group.
# Usage: cgsnap-backup-wrapper.sh GROUP -- BACKUP-COMMAND [ARGS...]
# Environment: CGSNAP (cgsnap executable, default `cgsnap`; global options via CGSNAP_CATALOG,
# CGSNAP_METRICS_DIR and LIBVIRT_DEFAULT_URI).
# Each run passes a token of its own (`--token wrapper-UUID`) to pre and post, so post releases
# only the snapshot this run took. post always runs after pre: when the backup fails, when pre
# failed (a pre that failed half-way may have left this run's snapshot holding overlays; with
# nothing of this run outstanding post changes nothing, also when another job holds the group),
# and after SIGTERM, SIGINT or SIGHUP (passed on to the backup command's whole process group as
# SIGTERM; post waits until every process of it has ended; a signal during pre or post is
# deferred until that step finished). The backup runs only when pre succeeded.
# Exit code: pre's when it failed, else 128+N after signal N, else the backup's when it failed,
# else post's; 0 when all succeeded.
set -uo pipefail
group=${1:?usage: cgsnap-backup-wrapper.sh GROUP -- COMMAND...}
shift
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "cgsnap-backup-wrapper: no backup command given" >&2; exit 2; }
cgsnap=${CGSNAP:-cgsnap}

# Signal handling and `run` (installed next to this script).
# shellcheck source=hooks/cgsnap-run.sh
. "$(dirname "${BASH_SOURCE[0]}")/cgsnap-run.sh" || exit 1
token=wrapper-$(new_token)

run 0 "$cgsnap" hook pre --group "$group" --token "$token"
pre_rc=$rc
backup_rc=0
if [ $pre_rc -eq 0 ] && [ -z "$signal" ]; then
  run 1 "$@"
  backup_rc=$rc
fi
run 0 "$cgsnap" hook post --group "$group" --token "$token"
post_rc=$rc
[ $pre_rc -ne 0 ] && exit $pre_rc
[ -n "$signal" ] && exit "$(signal_code)"
[ $backup_rc -ne 0 ] && exit $backup_rc
exit $post_rc
