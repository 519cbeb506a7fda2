# Watching the Cassandra server while the guest's init waits for its CQL port, so a server
# that exits or logs a fatal start-up error is reported within a second or two, in its own
# words, rather than after the whole wait. Sourced by the init; POSIX sh plus grep, sed, tail,
# cut, tr (all in the minimal guest) and bash for the port probe.

# Fatal start-up lines, most telling first (extended regexps, tried in this order).
# A commit log the node cannot replay: the exception's line says what is wrong with which
# segment; with commit_failure_policy stop_on_startup the server stays up without CQL, so its
# "Failed to recover" line is the only sign.
CASS_FATAL_1='Invalid yaml|CommitLogReplayException: '
CASS_FATAL_2='Exception.*encountered during startup|Cannot start node|Failed to recover from commitlog corruption'
CASS_FATAL_3='ERROR.*Fatal|Fatal configuration error|Error occurred during initialization of VM|Could not find or load main class|Unrecognized VM option'

# cass_alive PID: the process exists and is not a zombie (PID 1 reaps it only now and then).
cass_alive() {
  s=$(sed -n 's/^[0-9]* (.*) \([A-Z]\) .*/\1/p' "/proc/$1/stat" 2>/dev/null)
  [ -n "$s" ] && [ "$s" != Z ]
}

# cass_line: stdin's first line without carriage returns, at most 400 characters.
cass_line() {
  sed -n 1p | tr -d '\r' | cut -c1-400
}

# cass_fatal LOG: prints the server's fatal start-up line from LOG, with the exception's root
# cause when the trace has one (an ExceptionInInitializerError says only "null"); false if
# there is none.
cass_fatal() {
  for p in "$CASS_FATAL_1" "$CASS_FATAL_2" "$CASS_FATAL_3"; do
    l=$(grep -E -m1 -- "$p" "$1" 2>/dev/null | tr -d '\r')
    [ -n "$l" ] || continue
    c=$(grep -E '^Caused by: ' "$1" 2>/dev/null | tail -n 1 | tr -d '\r')
    case "$l" in *"${c#Caused by: }"*) c= ;; esac
    [ -n "$c" ] && l="$l; c${c#C}"
    printf '%s\n' "$l" | cass_line
    return 0
  done
  return 1
}

# cass_last LOG: the last non-blank line of LOG.
cass_last() {
  grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 | cass_line
}

# cass_wait PID LOG ADDR PORT SECONDS: waits until ADDR:PORT accepts a connection while the
# server PID runs; prints "ready", or "error: WHY" (the server's own line where it has one)
# and is false. Checked once a second.
cass_wait() {
  pid=$1 log=$2 addr=$3 port=$4 limit=$5 i=0
  while :; do
    bash -c "exec 3<>/dev/tcp/$addr/$port" 2>/dev/null && { echo ready; return 0; }
    if cass_fatal "$log" > /dev/null; then
      # The most telling line often comes just after the first fatal one (an ERROR line,
      # then the exception): give it a moment.
      sleep 1
      echo "error: $(cass_fatal "$log")"
      return 1
    fi
    if ! cass_alive "$pid"; then
      # Let the last output through the console pipe before reading it.
      sleep 1
      if l=$(cass_fatal "$log"); then
        echo "error: $l"
      else
        echo "error: the Cassandra server exited before its CQL port opened; its last line: $(cass_last "$log")"
      fi
      return 1
    fi
    i=$((i + 1))
    if [ "$i" -gt "$limit" ]; then
      echo "error: CQL port not open after $limit s; the server's last line: $(cass_last "$log")"
      return 1
    fi
    sleep 1
  done
}
