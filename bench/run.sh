#!/usr/bin/env bash
# Runs the benchmarks and writes bench/out/<name>.md (repo: bench/results/repo.md).
# Usage: bench/run.sh [db|dump|repo|fleet|coordinator|pitr|scale] [ARGS…]
# Not part of the tests: numbers depend on the machine; compare ratios within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
cargo build --bin snapfleet
bin="$CARGO_TARGET_DIR/debug/snapfleet"
mkdir -p bench/out
what="${1:-db}"
shift || true
case "$what" in
  db)
    {
      echo "# tabletdb benchmark — $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores"
      echo
      "$bin" bench db "$@"
    } | tee bench/out/db.md
    ;;
  dump)
    {
      echo "# export/import benchmark — $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores"
      echo
      bash bench/dump.sh "$@"
    } | tee bench/out/dump.md
    ;;
  fleet)
    {
      echo "# fleet backup/restore benchmark — $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores"
      echo
      "$bin" bench fleet "$@"
    } | tee bench/out/fleet.md
    ;;
  pitr)
    {
      echo "# off-cluster PITR benchmark — $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores"
      echo
      "$bin" bench pitr "$@"
    } | tee bench/out/pitr.md
    ;;
  scale)
    {
      echo "# scale benchmark — $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores"
      echo
      SNAPFLEET_CHILD_LOG="${SNAPFLEET_CHILD_LOG:-warn}" "$bin" bench scale "$@"
    } | tee bench/out/scale.md
    ;;
  coordinator)
    # Replica logs at warn: info logs one line per submitted job and would be measured too.
    export SNAPFLEET_CHILD_LOG="${SNAPFLEET_CHILD_LOG:-warn}"
    {
      echo "# coordinator benchmark — $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores"
      echo
      "$bin" bench coordinator "$@"
    } | tee bench/out/coordinator.md
    ;;
  repo)
    mkdir -p bench/results
    {
      echo "# repository benchmark — $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores"
      echo
      bash bench/repo.sh "$bin" "$@"
    } | tee bench/results/repo.md
    ;;
  *) echo "unknown benchmark $what (have: db, dump, repo, fleet, coordinator, pitr)" >&2; exit 2 ;;
esac
