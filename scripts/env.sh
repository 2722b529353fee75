# Sourced by the scripts: one shared build cache outside the clone, so a second clone, CI
# and the demo reuse the (slow, C++) RocksDB build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/snapfleet/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
