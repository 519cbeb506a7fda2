# shellcheck shell=bash
# Sourced by the hook scripts (not run): runs a backup between `cgsnap hook pre` and
# `cgsnap hook post` without letting a signal skip the release, and without releasing while
# any process of the backup may still read the frozen images.
#
# Contract: after sourcing, SIGTERM, SIGINT and SIGHUP no longer kill the script; the first one
# is remembered in `signal` (its name, e.g. TERM). `run FORWARD COMMAND...` runs COMMAND in a
# process group of its own (stdin /dev/null, as for any background command), so a Ctrl-C on
# the terminal reaches only this script, and sets `rc` to COMMAND's exit code.
# With FORWARD=1 a signal, also one remembered before COMMAND started, is passed on to
# COMMAND's whole process group as SIGTERM (the backup stops early, including the borg or
# restic a backup script runs in the foreground), and `run` returns only once that process
# group is empty: nothing started by COMMAND still reads the images when post runs. With
# FORWARD=0 a signal is only remembered (cgsnap pre and post are never interrupted).
# The caller checks `signal` after each step and exits with 128+N (`signal_code`) when it is
# set. `new_token` prints a token unique to this run, for `cgsnap hook pre|post --token`.

signal=""
# Process group of the running command (its leader's pid) while signals go to it.
pgid=""
forward=0

on_signal() {
  [ -n "$signal" ] || signal=$1
  if [ "$forward" = 1 ] && [ -n "$pgid" ]; then
    kill -s TERM -- "-$pgid" 2>/dev/null
  fi
}
for s in TERM INT HUP; do
  # shellcheck disable=SC2064
  trap "on_signal $s" "$s"
done

run() {
  forward=$1
  shift
  # Job control only for this line: the command becomes the leader of a new process group.
  set -m
  "$@" </dev/null &
  local child=$!
  set +m
  if [ "$forward" = 1 ]; then
    pgid=$child
    # A signal that came after the caller's last check of `signal` and before `pgid` was
    # set was only remembered: pass it on now.
    [ -n "$signal" ] && kill -s TERM -- "-$pgid" 2>/dev/null
  fi
  local done_pid
  while :; do
    done_pid=""
    # A trapped signal ends `wait` early with no pid: keep waiting for the child itself.
    wait -n -p done_pid "$child"
    rc=$?
    [ -n "${done_pid:-}" ] && break
  done
  if [ "$forward" = 1 ]; then
    # The leader is gone; what it started in the foreground or background may not be
    # (a backup script killed by the signal leaves its borg running). Signals still go to
    # the group meanwhile.
    if kill -0 -- "-$pgid" 2>/dev/null; then
      echo "cgsnap-run: $1 exited; waiting for the processes it started (process group $pgid) to end" >&2
      while kill -0 -- "-$pgid" 2>/dev/null; do
        sleep 0.2
      done
    fi
  fi
  pgid=""
  forward=0
}

# The exit code for the remembered signal: 128 + its number.
signal_code() {
  echo $((128 + $(kill -l "$signal")))
}

# A token naming this run alone (a random UUID from the kernel).
new_token() {
  local uuid
  uuid=$(cat /proc/sys/kernel/random/uuid 2>/dev/null) || uuid=""
  [ -n "$uuid" ] || uuid=$$-$(date +%s%N)-$RANDOM$RANDOM
  echo "$uuid"
}
