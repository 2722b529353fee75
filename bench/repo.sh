#!/usr/bin/env bash
# `snapfleet repo put/get` side by side with cp -r, tar | zstd and restic on one generated
# mixed data set (incompressible + text), in one run; prints a Markdown report with ratios.
# Usage: bench/repo.sh BIN [--size MiB] [--small-files N] [--work DIR]
#   --size         data set size in MiB (default 512; the issue's reference run is 2048)
#   --small-files  files for the max-RSS run (default 100000; the target is 1000000)
#   --work         scratch directory (default: a temp dir, removed at the end; on a slow or
#                  shared virtual disk, a tmpfs such as /dev/shm/x gives repeatable ratios)
# Caches are warm for every tool alike (nothing drops the page cache: the machine is shared).
set -euo pipefail
bin="$1"; shift
size_mib=512
small_files=100000
work=""
while (($#)); do
  case "$1" in
    --size) size_mib="$2"; shift 2 ;;
    --small-files) small_files="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$work" ]; then
  work="$(mktemp -d /tmp/snapfleet-bench-repo.XXXXXX)"
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"
data="$work/data"
export SNAPFLEET_PASSWORD="bench passphrase" RESTIC_PASSWORD="bench passphrase"
unset SNAPFLEET_PASSWORD_FILE SNAPFLEET_REPO

have_restic=1
if ! command -v restic >/dev/null 2>&1; then
  if apt-cache policy restic 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    echo "bench: installing restic from apt" >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq restic >/dev/null || echo "bench: apt-get install restic failed" >&2
  fi
  command -v restic >/dev/null 2>&1 || have_restic=0
fi

# --- data set: 3/4 of the bytes in large files (like SSTs), 1/4 in small ones; half
# incompressible, half text. Deterministic (seeded).
python3 - "$data" "$size_mib" <<'EOF'
import os, random, sys
root, size = sys.argv[1], int(sys.argv[2]) << 20
rng = random.Random(42)
vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
         for _ in range(5000)]
def text(n):
    out, have = [], 0
    while have < n:
        line = " ".join(rng.choices(vocab, k=4096)) + "\n"
        out.append(line); have += len(line)
    return "".join(out).encode()[:n]
def write(rel, data):
    p = os.path.join(root, rel); os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f: f.write(data)
plan = [("rand-big", 8 << 20, 3 * size // 8, os.urandom),
        ("text-big", 2 << 20, 3 * size // 8, text),
        ("rand-small", 16 << 10, size // 8, os.urandom),
        ("text-small", 16 << 10, size // 8, text)]
for name, fsize, total, gen in plan:
    for i in range(max(1, total // fsize)):
        write(f"{name}/d{i % 16:02}/f{i:06}", gen(fsize))
EOF
total_bytes=$(du -sb "$data" | cut -f1)
nfiles=$(find "$data" -type f | wc -l)

# Runs a command, records "seconds maxrss_kib" in $work/last. `sync` first: every step
# starts with no dirty pages of the steps before it, which a slow virtual disk otherwise
# makes the later tools pay for (writeback throttling); the page cache stays warm.
measure() { sync; /usr/bin/time -f "%e %M" -o "$work/last" "$@"; }
secs() { cut -d' ' -f1 "$work/last"; }
rss() { cut -d' ' -f2 "$work/last"; }
mibs() { python3 -c "print(f'{$total_bytes/1048576/max($1,1e-3):.1f}')"; }
ratio() { python3 -c "print(f'{$1/max($2,1e-9):.2f}')"; }
rows=()
row() { rows+=("| $1 | $2 | $(mibs "$2") | $3 |"); }

# --- cp -r
rm -rf "$work/cp"; measure cp -r "$data" "$work/cp"; t_cp=$(secs); row "cp -r" "$t_cp" "$(du -sb "$work/cp" | cut -f1)"
rm -rf "$work/cp"

# --- tar | zstd -3 (all cores)
measure bash -c "tar -C '$data' -cf - . | zstd -q -3 -T0 -o '$work/data.tar.zst'"; t_tar=$(secs)
row "tar \\| zstd -3 (create)" "$t_tar" "$(stat -c %s "$work/data.tar.zst")"
mkdir -p "$work/untar"
measure bash -c "zstd -q -d -c '$work/data.tar.zst' | tar -C '$work/untar' -xf -"; t_untar=$(secs)
row "zstd -d \\| tar (extract)" "$t_untar" "-"
rm -rf "$work/untar" "$work/data.tar.zst"

# --- snapfleet, compression on (zstd 3) and off, encrypted; then neither
sf_put() { # repo-dir compression → json in $work/put.json
  measure "$bin" --json repo put "$data" --repo "file://$1" --compression "$2" >"$work/put.json"
}
field() { python3 -c "import json,sys; print(json.load(open('$1'))['$2'])"; }
"$bin" repo init --repo "file://$work/sf3" 2>/dev/null
sf_put "$work/sf3" 3; t_sf3=$(secs); rss_sf3=$(rss)
row "snapfleet repo put (zstd 3 + AES-GCM)" "$t_sf3" "$(du -sb "$work/sf3" | cut -f1)"
measure "$bin" repo get latest "$work/restore" --repo "file://$work/sf3"; t_sf3_get=$(secs)
cmp_out=$(diff -rq "$data" "$work/restore" && echo identical || echo DIFFERENT)
row "snapfleet repo get (zstd 3)" "$t_sf3_get" "-"
rm -rf "$work/restore"
"$bin" repo init --repo "file://$work/sf0" 2>/dev/null
sf_put "$work/sf0" 0; t_sf0=$(secs)
row "snapfleet repo put (no compression, AES-GCM)" "$t_sf0" "$(du -sb "$work/sf0" | cut -f1)"
measure "$bin" repo get latest "$work/restore" --repo "file://$work/sf0"; t_sf0_get=$(secs)
row "snapfleet repo get (no compression)" "$t_sf0_get" "-"
rm -rf "$work/restore" "$work/sf0"
# Compression and encryption off: an unencrypted repository (no passphrase, no Argon2).
# (No passphrase may be set for it: a passphrase means encryption is expected.)
env -u SNAPFLEET_PASSWORD "$bin" repo init --encryption none --repo "file://$work/sfn" 2>/dev/null
measure env -u SNAPFLEET_PASSWORD "$bin" --json repo put "$data" --repo "file://$work/sfn" \
  --compression 0 >"$work/put.json"
t_sfn=$(secs)
row "snapfleet repo put (no compression, no encryption)" "$t_sfn" "$(du -sb "$work/sfn" | cut -f1)"
measure env -u SNAPFLEET_PASSWORD "$bin" repo get latest "$work/restore" --repo "file://$work/sfn"
t_sfn_get=$(secs)
row "snapfleet repo get (no compression, no encryption)" "$t_sfn_get" "-"
rm -rf "$work/restore" "$work/sfn"

# --- restic (compression auto = zstd, AES-256 + Poly1305)
if ((have_restic)); then
  restic_version=$(restic version | head -1)
  restic init -q --repository-version 2 -r "$work/restic" >/dev/null
  measure restic backup -q -r "$work/restic" "$data"; t_restic=$(secs)
  row "restic backup ($restic_version)" "$t_restic" "$(du -sb "$work/restic" | cut -f1)"
  measure restic restore -q -r "$work/restic" latest --target "$work/restore"; t_restic_get=$(secs)
  row "restic restore" "$t_restic_get" "-"
  rm -rf "$work/restore"
fi

# --- 5% of the files change: 4 KiB overwritten in the middle of every 20th file
python3 - "$data" <<'EOF'
import os, sys
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(sys.argv[1]) for f in fs)
for p in files[::20]:
    n = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.seek(n // 2); f.write(os.urandom(min(4096, n)))
EOF
changed=$(( (nfiles + 19) / 20 ))
sf_put "$work/sf3" 3; t_inc=$(secs)
inc_sf=$(field "$work/put.json" bytes_uploaded)
if ((have_restic)); then
  restic backup --json -r "$work/restic" "$data" >"$work/restic.json"
  inc_restic=$(python3 -c "
import json
for l in open('$work/restic.json'):
    d = json.loads(l)
    if d.get('message_type') == 'summary': print(d['data_added'])")
fi
rm -rf "$work/sf3" "$work/restic"

# --- many small files: max RSS of one put
small="$work/small"
python3 - "$small" "$small_files" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"{i // 1000:05}")
    if i % 1000 == 0: os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:07}"), "wb") as f:
        f.write(os.urandom(64) + b"x" * (i % 2048))
EOF
"$bin" repo init --repo "file://$work/sfsmall" 2>/dev/null
measure "$bin" --json repo put "$small" --repo "file://$work/sfsmall" >"$work/small.json"
t_small=$(secs); rss_small=$(rss)
small_objects=$(find "$work/sfsmall/chunks" -type f | wc -l)
rm -rf "$small" "$work/sfsmall"

# --- report
echo "Data set: $(python3 -c "print(f'{$total_bytes/1048576:.0f}')") MiB in $nfiles files (3/4 of the bytes in 8 MiB / 2 MiB files, 1/4 in 16 KiB files; half os.urandom, half text), work directory on $(df -T "$work" | awk 'NR==2 {print $2}'), warm page cache, $(nproc) cores."
echo
echo "| step | seconds | MiB/s | bytes stored |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "Restore check: snapfleet get vs source: **$cmp_out**."
echo
echo "Ratios (throughput, higher is better for snapfleet):"
echo "- put without compression or encryption / cp -r: **$(ratio "$t_cp" "$t_sfn")×** (target ≥ 0.8×); get / cp -r: **$(ratio "$t_cp" "$t_sfn_get")×**; with AES-GCM on: put **$(ratio "$t_cp" "$t_sf0")×**"
echo "- put zstd 3 / tar | zstd -3: **$(ratio "$t_tar" "$t_sf3")×**; get / extract: **$(ratio "$t_untar" "$t_sf3_get")×**"
if ((have_restic)); then
  echo "- put zstd 3 / restic backup: **$(ratio "$t_restic" "$t_sf3")×** (target ≥ 2×); get / restic restore: **$(ratio "$t_restic_get" "$t_sf3_get")×**"
else
  echo "- restic: not installed and not installable here (apt-cache policy restic has no candidate): skipped"
fi
echo
echo "After changing $changed of $nfiles files (5%, 4 KiB each): snapfleet uploaded $inc_sf bytes = **$(python3 -c "print(f'{100*$inc_sf/$total_bytes:.1f}')")%** of the data (target ≤ 6%) in $t_inc s$( ((have_restic)) && echo "; restic added $inc_restic bytes = $(python3 -c "print(f'{100*$inc_restic/$total_bytes:.1f}')")%")."
echo
echo "Max RSS: put of the $(python3 -c "print(f'{$total_bytes/1048576:.0f}')") MiB set **$(( rss_sf3 / 1024 )) MiB**; put of $small_files small files (64 B–2 KiB, $small_objects chunk objects) **$(( rss_small / 1024 )) MiB** in $t_small s (target < 256 MiB for 1 000 000 files)."
