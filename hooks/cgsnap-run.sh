# shellcheck shell=bash
# Sourced by the hook scripts (not run): runs a backup between `cgsnap hook pre` and
# `cgsnap hook post` without letting a signal skip the release.
#
# Contract: after sourcing, SIGTERM, SIGINT and SIGHUP no longer kill the script; the first one
# is remembered in `signal` (its name, e.g. TERM). `run FORWARD COMMAND...` runs COMMAND and
# waits until it has exited, also when a signal interrupts the wait, and sets `rc` to its exit
# code. With FORWARD=1 a signal is passed on to COMMAND as SIGTERM (the backup stops early);
# with FORWARD=0 it is only remembered (cgsnap pre and post are never interrupted). The caller
# checks `signal` after each step and exits with 128+N (`signal_code`) when it is set.

signal=""
child=""
forward=0

on_signal() {
  [ -n "$signal" ] || signal=$1
  if [ "$forward" = 1 ] && [ -n "$child" ]; then
    kill -s TERM "$child" 2>/dev/null
  fi
}
for s in TERM INT HUP; do
  # shellcheck disable=SC2064
  trap "on_signal $s" "$s"
done

run() {
  forward=$1
  shift
  "$@" &
  child=$!
  local done_pid
  while :; do
    done_pid=""
    # A trapped signal ends `wait` early with no pid: keep waiting for the child itself.
    wait -n -p done_pid "$child"
    rc=$?
    [ -n "${done_pid:-}" ] && break
  done
  child=""
  forward=0
}

# The exit code for the remembered signal: 128 + its number.
signal_code() {
  echo $((128 + $(kill -l "$signal")))
}
