#!/usr/bin/env bash
# Benchmark: store mode, printing our figures beside references measured in
# the same run.  Not a test: no assertion.
#   1. switch latency: `echo activate V` returning, p50/p99 over 200 switches
#      while 8 readers loop over files of the mounted store (goal p99 <= 10 ms)
#   2. import of a SIZE MiB kit vs copying the kit file plus `stellakit
#      verify` of it (goal <= 1.3x)
#   3. a kit that differs from the current one in ~1 % of its bytes: how much
#      the store grows (goal: about 1 %)
#
#   tests/bench/store.sh [SIZE_MIB]      (default 1024)
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
sk=${STELLAKIT:-$here/build/tools/stellakit}
sfs=${STELLAFS:-$here/build/fs/stellafs}
size=${1:-1024}
work=$(mktemp -d /var/tmp/stella-store-bench.XXXXXX)
mnt="$work/mnt"
cleanup() {
	mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
	[ -n "${readers:-}" ] && kill $readers 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
export SOURCE_DATE_EPOCH=1736899200
mkdir -p "$work/src/feeds" "$mnt"
"$sk" keygen --type ed25519 "$work/k" >/dev/null

# 100 files of size/100 MiB each, so that 1 file is about 1 % of the bytes.
per=$(( size * 1024 / 100 ))
for i in $(seq -w 1 100); do head -c "${per}K" /dev/urandom >"$work/src/feeds/f$i.bin"; done
pack() { "$sk" pack -k "$work/k.key" --version "$1" --sequence "$2" --expires-in 3650 "$work/src" "$3" >/dev/null; }
pack v1 1 "$work/v1.tar"
head -c "${per}K" /dev/urandom >"$work/src/feeds/f050.bin"
pack v2 2 "$work/v2.tar"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# 2. import vs copy + verify
sync; echo 3 >/proc/sys/vm/drop_caches
t0=$(now); "$sk" import -s "$work/store" -t "$work/k.pub" "$work/v1.tar" >/dev/null; t1=$(now)
sync; echo 3 >/proc/sys/vm/drop_caches
t2=$(now); cp "$work/v1.tar" "$work/copy.tar"; sync; "$sk" verify -t "$work/k.pub" "$work/copy.tar" >/dev/null; t3=$(now)
imp=$(elapsed "$t0" "$t1"); ref=$(elapsed "$t2" "$t3")
rm -f "$work/copy.tar"

# 3. growth for a 1 % change
before=$(du -sk "$work/store" | cut -f1)
"$sk" import -s "$work/store" -t "$work/k.pub" "$work/v2.tar" >/dev/null
after=$(du -sk "$work/store" | cut -f1)
growth=$(awk -v a="$before" -v b="$after" 'BEGIN { printf "%.2f", (b - a) * 100 / a }')

# 1. switch latency under 8 readers
"$sfs" -o "trust=$work/k.pub" "$work/store" "$mnt"
readers=""
for r in $(seq 1 8); do
	( while :; do cat "$mnt/current/feeds/f0$((r % 9 + 1))0.bin" >/dev/null 2>&1 || true; done ) &
	readers="$readers $!"
done
lat=$(python3 - "$mnt" <<'PY'
import os, sys, time
mnt = sys.argv[1]
ts = []
for i in range(200):
    v = b"activate v1\n" if i % 2 else b"activate v2\n"
    t = time.perf_counter()
    fd = os.open(f"{mnt}/control", os.O_WRONLY)
    os.write(fd, v)
    os.close(fd)
    ts.append((time.perf_counter() - t) * 1000)
ts.sort()
print(f"{ts[len(ts)//2]:.2f} {ts[int(len(ts)*0.99)-1]:.2f}")
PY
)
kill $readers 2>/dev/null; wait 2>/dev/null || true; readers=""
p50=${lat% *}; p99=${lat#* }

printf 'store benchmark: %d MiB kits of 100 files, %d CPUs, %s\n' "$size" "$(nproc)" "$(uname -r)"
printf '  %-44s %10s %10s %8s  %s\n' measurement stellafs reference ratio goal
printf '  %-44s %9ss %9ss %8.2f  %s\n' "import (cold) vs cp + stellakit verify" "$imp" "$ref" \
	"$(awk -v a="$imp" -v b="$ref" 'BEGIN { print a / b }')" "<= 1.3"
printf '  %-44s %9s%% %10s %8s  %s\n' "store growth for a kit 1 % different" "$growth" "1 %" "" "about 1 %"
printf '  %-44s %8sms %10s %8s  %s\n' "switch latency p50 (8 readers)" "$p50" "" "" ""
printf '  %-44s %8sms %10s %8s  %s\n' "switch latency p99 (8 readers)" "$p99" "10 ms" "" "<= 10 ms"
