#!/usr/bin/env bash
# Export/import throughput, side by side with PostgreSQL's own tools on the same data:
#   snapfleet export (tabletdb → SQL)   vs  pg_dump (PostgreSQL → SQL)
#   snapfleet import (SQL → tabletdb)   vs  psql -f  (SQL → PostgreSQL)
# Usage: bench/dump.sh [ROWS] [ROW_SIZE]   (called by bench/run.sh dump)
set -euo pipefail
rows="${1:-200000}"; row_size="${2:-256}"
bin="$CARGO_TARGET_DIR/debug/snapfleet"
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
tmp=$(mktemp -d /tmp/snapfleet-bench-dump.XXXXXX); chmod 777 "$tmp"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() { kill -INT "$db_pid" 2>/dev/null || true; wait "$db_pid" 2>/dev/null || true; as_pg "$pgbin/pg_ctl" -D "$tmp/pg" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$tmp"; }
trap cleanup EXIT
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }

port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
"$bin" db up --nodes 3 --data "$tmp/db" --master-listen "127.0.0.1:$port" >/dev/null 2>&1 & db_pid=$!
for _ in $(seq 600); do "$bin" db status --master "127.0.0.1:$port" 2>/dev/null | grep -q "node   3" && break; sleep 0.1; done
M=(--master "127.0.0.1:$port")
"$bin" db load "${M[@]}" --db b --tables 1 --rows "$rows" --row-size "$row_size" --concurrency 16 >/dev/null 2>&1

as_pg "$pgbin/initdb" -D "$tmp/pg" -A trust -U postgres --no-sync >/dev/null
pgport=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
as_pg "$pgbin/pg_ctl" -D "$tmp/pg" -o "-p $pgport -k $tmp -c listen_addresses=127.0.0.1 -c fsync=off" -l "$tmp/pg.log" -w start >/dev/null
P=(-h 127.0.0.1 -p "$pgport" -U postgres)

t0=$(now); "$bin" export "${M[@]}" --db b -o "$tmp/export.sql" 2>/dev/null; t1=$(now)
size=$(stat -c %s "$tmp/export.sql")
"$pgbin/psql" "${P[@]}" -q -c "CREATE DATABASE b" postgres
t2=$(now); "$pgbin/psql" "${P[@]}" -q -v ON_ERROR_STOP=1 -f "$tmp/export.sql" b >/dev/null; t3=$(now)
t4=$(now); "$pgbin/pg_dump" "${P[@]}" -f "$tmp/pgdump.sql" b; t5=$(now)
t6=$(now); "$bin" import "${M[@]}" --db b2 "$tmp/pgdump.sql" 2>/dev/null; t7=$(now)

e=$(secs "$t0" "$t1"); p=$(secs "$t2" "$t3"); d=$(secs "$t4" "$t5"); i=$(secs "$t6" "$t7")
mb=$(echo "$size / 1000000" | bc -l)
row() { printf "| %s | %.2f | %.0f | %.1f |\n" "$1" "$2" "$(echo "$rows / $2" | bc -l)" "$(echo "$mb / $2" | bc -l)"; }
echo "## export/import: $rows rows of ~$row_size B, script $(printf %.1f "$mb") MB"
echo
echo "| step | seconds | rows/s | MB/s |"
echo "|---|---|---|---|"
row "snapfleet export (tabletdb → SQL)" "$e"
row "pg_dump (PostgreSQL → SQL)" "$d"
row "snapfleet import (pg_dump SQL → tabletdb)" "$i"
row "psql -f (snapfleet SQL → PostgreSQL)" "$p"
echo
printf "export / pg_dump speed: **%.2f×**; import / psql speed: **%.2f×**\n" "$(echo "$d / $e" | bc -l)" "$(echo "$p / $i" | bc -l)"
