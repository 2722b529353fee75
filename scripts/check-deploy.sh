#!/usr/bin/env bash
# Checks the systemd units in deploy/systemd against the binary they start:
#  - every ExecStart, with its variables filled in, parses as a snapfleet command line (the
#    arguments are followed by --help, which clap only reaches when everything before it is
#    valid), so a renamed or removed flag fails here, not on an operator's host;
#  - `systemd-analyze verify` (when systemd is installed) accepts each unit with no warning,
#    so a misspelt sandboxing key does not silently disable itself.
# Usage: scripts/check-deploy.sh PATH/TO/snapfleet
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:?usage: check-deploy.sh PATH/TO/snapfleet}")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
for unit in deploy/systemd/*.service; do
  name=$(basename "$unit")
  exec_line=$(sed -n 's/^ExecStart=//p' "$unit")
  [ -n "$exec_line" ] || { echo "check-deploy: $name has no ExecStart" >&2; fail=1; continue; }
  # Example values for the variables the units read from /etc/default/*.
  args=$(echo "$exec_line" | sed \
    -e 's#^/usr/local/bin/snapfleet ##' \
    -e 's#%i#1#g' \
    -e 's#${LISTEN}#127.0.0.1:7000#g' \
    -e 's#${PEERS}#1=127.0.0.1:7000#g' \
    -e 's#${COORDINATOR}#127.0.0.1:7000#g' \
    -e 's#${DB_NODE}#127.0.0.1:7200#g' \
    -e 's#${MASTER}#127.0.0.1:7100#g' \
    -e 's#${ADVERTISE}#127.0.0.1:7200#g')
  if echo "$args" | grep -q '\${'; then
    echo "check-deploy: $name uses a variable this check does not know: $args" >&2
    fail=1
    continue
  fi
  # shellcheck disable=SC2086
  if ! out=$("$bin" $args --help 2>&1); then
    echo "check-deploy: $name: \`snapfleet $args\` does not parse:" >&2
    echo "$out" | head -5 >&2
    fail=1
  fi
  if command -v systemd-analyze >/dev/null 2>&1; then
    # Templates are verified as instance 1, with the binary under test.
    copy="$tmp/${name/@./@1.}"
    sed "s#/usr/local/bin/snapfleet#$bin#" "$unit" >"$copy"
    if ! out=$(systemd-analyze verify --man=no "$copy" 2>&1) || [ -n "$out" ]; then
      echo "check-deploy: systemd-analyze verify $name:" >&2
      echo "$out" >&2
      fail=1
    fi
  fi
done
[ "$fail" = 0 ] && echo "check-deploy: $(ls deploy/systemd/*.service | wc -l) units parse and verify" >&2
exit "$fail"
