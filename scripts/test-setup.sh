#!/usr/bin/env bash
# Proves that scripts/setup.sh detects exactly what the build needs, with the things hidden:
# in a private mount namespace, a tmpfs laid over a directory makes its files vanish for
# the commands run inside (and for nothing else on the machine). Needs root (CI runs as
# root); skipped with a message otherwise.
#
# Cases:
#  1. libclang hidden, with only libclang-cpp.so.N left beside it (the fresh-Debian case
#     that broke the first run): --check must fail and name libclang.so.
#  2. protoc hidden: --check must fail and name protoc.
#  3. PostgreSQL's server binaries hidden: --check must fail and name postgres.
#  4. Nothing hidden: --check must pass.
#  5. libclang hidden and the install made a no-op (dpkg believes it is installed): a full
#     setup.sh must stop with an error instead of letting the build fail 20 minutes later.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null || ! unshare -m true 2>/dev/null; then
  echo "test-setup: skipped (needs root and a private mount namespace: unshare -m)" >&2
  exit 0
fi

fail=0
expect() { # expect pass|fail PATTERN DESCRIPTION -- script to run in the namespace
  local want=$1 pattern=$2 what=$3; shift 4
  local out rc=0
  out=$(unshare -m bash -c "$*" 2>&1) || rc=$?
  if [ "$want" = fail ] && [ $rc = 0 ]; then
    echo "FAIL $what: exited 0" >&2; echo "$out" >&2; fail=1; return
  fi
  if [ "$want" = pass ] && [ $rc != 0 ]; then
    echo "FAIL $what: exited $rc" >&2; echo "$out" >&2; fail=1; return
  fi
  if [ -n "$pattern" ] && ! grep -q -- "$pattern" <<<"$out"; then
    echo "FAIL $what: output lacks '$pattern'" >&2; echo "$out" >&2; fail=1; return
  fi
  echo "ok   $what" >&2
}

# Every libclang the build could load, shadowed by an empty file (libclang-cpp stays).
hide_libclang='set -e; : > /tmp/sf-empty
for f in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
         /usr/lib/*-linux-gnu/libclang.so* /usr/lib/*-linux-gnu/libclang-[0-9]*.so*; do
  [ -e "$f" ] && mount --bind /tmp/sf-empty "$(readlink -f "$f")" || true
done'
hide_postgres='set -e; for d in /usr/lib/postgresql/*/bin; do mount -t tmpfs none "$d"; done'

expect fail "libclang.so" "libclang hidden (libclang-cpp left): --check names libclang.so" -- \
  "$hide_libclang; bash scripts/setup.sh --check"
# protoc shadowed by an empty file: it exists but does not run.
expect fail "protoc" "protoc hidden: --check names protoc" -- \
  "set -e; : > /tmp/sf-empty; mount --bind /tmp/sf-empty $(readlink -f "$(command -v protoc)"); bash scripts/setup.sh --check"
expect fail "postgres" "PostgreSQL server hidden: --check names postgres" -- \
  "$hide_postgres; bash scripts/setup.sh --check"
expect pass "" "nothing hidden: --check passes" -- "bash scripts/setup.sh --check"
# dpkg still lists libclang-dev as installed, so apt-get installs nothing: the re-check
# after installing must catch it. apt-get is replaced by a no-op to stay offline and fast.
expect fail "did not provide everything" "install that does not produce libclang.so: setup stops" -- \
  "$hide_libclang; printf '#!/bin/sh\nexit 0\n' > /tmp/sf-apt; chmod +x /tmp/sf-apt; mount --bind /tmp/sf-apt \$(command -v apt-get); bash scripts/setup.sh"

exit $fail
