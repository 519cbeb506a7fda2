# Edits of cassandra.yaml shared by the image build (host) and the guest's init (every boot).
# Only top-level keys are edited. A key is removed with its indented block (a list or a nested
# mapping) wherever it is *active*; commented-out examples stay, they are harmless. Setting a
# key removes it first and appends it, so applying the same edit twice changes nothing.
# Needs sh, grep, sed and awk (POSIX), nothing else: it also runs in the minimal guest.

# yaml_unset FILE KEY
yaml_unset() {
  awk -v k="$2" '
    skip && /^([ \t]|-)/ { next }
    { skip = 0 }
    index($0, k ":") == 1 { skip = 1; next }
    { print }
  ' "$1" > "$1.cgsnap-tmp" && cat "$1.cgsnap-tmp" > "$1" && rm -f "$1.cgsnap-tmp"
}

# yaml_set FILE KEY VALUE        (a scalar)
yaml_set() {
  yaml_unset "$1" "$2"
  printf '%s: %s\n' "$2" "$3" >> "$1"
}

# yaml_set_list FILE KEY ITEM    (a one-item list)
yaml_set_list() {
  yaml_unset "$1" "$2"
  printf '%s:\n    - %s\n' "$2" "$3" >> "$1"
}

# yaml_knows FILE KEY: the shipped file mentions KEY (active or commented) - how a setting is
# spelled differs between Cassandra versions (4.1 renamed `*_in_ms` keys to unit-suffixed ones).
yaml_knows() {
  grep -Eq "^#?[[:space:]]*$2:" "$1"
}

# yaml_apply FILE EDITS: the edits of an edits file written by cgsnap (cass_config.rs):
# "set KEY VALUE", "list KEY ITEM", "unset KEY"; its other lines are read with edits_value.
yaml_apply() {
  while read -r op key val; do
    case "$op" in
      set) yaml_set "$1" "$key" "$val" ;;
      list) yaml_set_list "$1" "$key" "$val" ;;
      unset) yaml_unset "$1" "$key" ;;
    esac
  done < "$2"
}

# edits_value EDITS NAME: the value of the edits file's "NAME VALUE" line (empty if none).
edits_value() {
  sed -n "s/^$2 //p" "$1" | sed -n 1p
}

# cass_sync FILE WINDOW MODE PERIOD_MS: commit log sync mode. WINDOW is the batch window in ms
# this version requires in batch mode (the edits file's batch_window_ms), empty for none.
# Cassandra refuses a period with batch and a batch window with periodic, so the other mode's
# keys (either spelling) go.
cass_sync() {
  f=$1 window=$2 mode=$3 period=$4
  # Spelling first: the removals below may take the only mention of the key with them.
  if yaml_knows "$f" commitlog_sync_period; then
    pkey=commitlog_sync_period pval=${period}ms
  else
    pkey=commitlog_sync_period_in_ms pval=$period
  fi
  for k in commitlog_sync_period commitlog_sync_period_in_ms commitlog_sync_batch_window_in_ms \
           commitlog_sync_group_window commitlog_sync_group_window_in_ms; do
    yaml_unset "$f" "$k"
  done
  # ... and kept known for the next boot, which may ask for periodic after a batch one.
  marker="# $pkey: spelling kept by cgsnap"
  grep -qxF "$marker" "$f" || echo "$marker" >> "$f"
  yaml_set "$f" commitlog_sync "$mode"
  case "$mode" in
    periodic) yaml_set "$f" "$pkey" "$pval" ;;
    batch)
      # Only versions before 4.0 get a window (cass_config.rs): 4.0 syncs every batch
      # write at once and deprecates the key.
      if [ -n "$window" ]; then yaml_set "$f" commitlog_sync_batch_window_in_ms "$window"; fi ;;
  esac
}
