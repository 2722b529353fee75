#!/usr/bin/env bash
# Sets up a fresh machine, builds snapfleet and runs `snapfleet demo` (extra arguments are
# passed on, e.g. --keep or --json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
cargo build --bin snapfleet
exec "$CARGO_TARGET_DIR/debug/snapfleet" demo "$@"
