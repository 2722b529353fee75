#!/usr/bin/env bash
# Installs what building, running and testing snapfleet needs on a fresh Debian machine,
# skipping whatever is already there. Safe to run again.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# librocksdb-sys generates its bindings with bindgen, which needs libclang.
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
# Export/import tests load scripts into a real PostgreSQL server.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)

if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The repository tests run against a real S3-compatible server: moto's, from PyPI.
if ! python3 -c "import moto.server, flask" >/dev/null 2>&1; then
  command -v pip3 >/dev/null 2>&1 || python3 -m ensurepip >/dev/null 2>&1 || true
  echo "setup: installing moto[server] (S3-compatible test server)" >&2
  python3 -m pip install -q 'moto[server]' >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is missing; install Rust with rustup (https://rustup.rs) and run again" >&2
  exit 1
fi
