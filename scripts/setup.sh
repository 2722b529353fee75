#!/usr/bin/env bash
# Installs what building, running and testing snapfleet needs on a fresh Debian machine,
# skipping whatever is already there, and checks afterwards that each artefact the build or
# the tests load is really present (not just a package with a similar name). Safe to run again.
#
#   scripts/setup.sh           install what is missing, then check
#   scripts/setup.sh --check   only check; exit 1 and name every missing artefact
set -euo pipefail

check_only=0
[ "${1:-}" = "--check" ] && check_only=1

# bindgen (through clang-sys) loads exactly one of these: libclang.so, libclang-N.so,
# libclang.so.N or libclang-N.so.N. libclang-cpp.so (installed with llvm) is a different
# library and does not count.
# A candidate counts only if it resolves to a real ELF file (not a dangling link, not empty).
have_libclang() {
  local d f
  for d in ${LIBCLANG_PATH:-} /usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib; do
    for f in "$d"/libclang.so "$d"/libclang.so.[0-9]* "$d"/libclang-[0-9]*.so "$d"/libclang-[0-9]*.so.[0-9]*; do
      [ -f "$f" ] && [ "$(head -c 4 "$f" 2>/dev/null | tail -c 3)" = ELF ] && return 0
    done
  done
  return 1
}
# Each binary must run, not merely exist.
have_postgres() {
  local b
  for b in /usr/lib/postgresql/*/bin/postgres; do "$b" --version >/dev/null 2>&1 && return 0; done
  return 1
}
have_initdb() {
  local b
  for b in /usr/lib/postgresql/*/bin/initdb; do "$b" --version >/dev/null 2>&1 && return 0; done
  return 1
}
have_cmd() { command -v "$1" >/dev/null 2>&1; }
runs() { "$@" >/dev/null 2>&1; }
have_moto() { python3 -c "import moto.server, flask" >/dev/null 2>&1; }

# artefact | how to check | Debian package that provides it
missing() {
  local out=()
  runs protoc --version || out+=("protoc:protobuf-compiler")
  have_libclang || out+=("libclang.so (bindgen, for RocksDB's bindings):libclang-dev")
  runs cc --version || out+=("cc:gcc")
  runs c++ --version || out+=("c++:g++")
  runs make --version || out+=("make:make")
  runs pkg-config --version || out+=("pkg-config:pkg-config")
  # Export/import tests load scripts into a real PostgreSQL server.
  { have_postgres && have_initdb; } || out+=("postgres + initdb (export tests):postgresql")
  printf '%s\n' "${out[@]}"
}

report_missing() {
  local m
  m=$(missing)
  have_moto || m+=$'\n'"python moto[server] (S3 test server):pip"
  have_cmd cargo || m+=$'\n'"cargo:rustup"
  m=$(printf '%s\n' "$m" | sed '/^$/d')
  if [ -n "$m" ]; then
    echo "setup: missing:" >&2
    printf '%s\n' "$m" | sed 's/^\(.*\):\(.*\)$/  - \1  (from \2)/' >&2
    return 1
  fi
  return 0
}

if ((check_only)); then
  report_missing && echo "setup: everything the build and the tests need is present" >&2
  exit $?
fi

mapfile -t need < <(missing | sed '/^$/d' | sed 's/^.*://' | sort -u)
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The repository tests run against a real S3-compatible server: moto's, from PyPI.
if ! have_moto; then
  have_cmd pip3 || python3 -m ensurepip >/dev/null 2>&1 || true
  echo "setup: installing moto[server] (S3-compatible test server)" >&2
  python3 -m pip install -q 'moto[server]' >/dev/null
fi

if ! have_cmd cargo; then
  echo "setup: cargo is missing; install Rust with rustup (https://rustup.rs) and run again" >&2
  exit 1
fi

# Re-check: an install that did not produce the artefact must stop here, not 20 minutes
# into the build.
if ! report_missing; then
  echo "setup: the install above did not provide everything; install the packages named and run again" >&2
  exit 1
fi

target="${CARGO_TARGET_DIR:-$HOME/.cache/snapfleet/target}"
if [ ! -d "$target/debug/build" ] || ! compgen -G "$target/debug/build/librocksdb-sys-*/out" >/dev/null; then
  echo "setup: first build — compiling RocksDB's C++ takes 15–35 minutes on 2 cores; later builds take seconds" >&2
fi
