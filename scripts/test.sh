#!/usr/bin/env bash
# Sets up a fresh machine and runs every test: unit tests and the multi-process end-to-end
# tests (real tabletdb processes on loopback ports). Extra arguments go to nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# setup.sh's detection, tested with each artefact hidden in a mount namespace.
bash scripts/test-setup.sh
source scripts/env.sh

start=$(date +%s)
cargo fmt --all -- --check
# Crate boundaries and no import circles between a crate's files (docs/architecture.md).
python3 scripts/check-layout.py
cargo build --workspace --bins --tests
echo "build: $(( $(date +%s) - start )) s" >&2
# The systemd units in deploy/ parse against this binary and pass systemd-analyze verify.
bash scripts/check-deploy.sh "${CARGO_TARGET_DIR:-target}/debug/snapfleet"
cargo clippy --workspace --all-targets -- -D warnings

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test: cargo-nextest missing, installing it" >&2
  cargo install cargo-nextest --locked >/dev/null 2>&1 || true
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "test: falling back to cargo test" >&2
  cargo test --workspace --no-fail-fast
fi
echo "total: $(( $(date +%s) - start )) s" >&2
