#!/usr/bin/env bash
# Benchmark, focused: a sequential read of one large file from a mounted
# .tar.zst kit against `zstd -dc` of the same kit, side by side in one run
# (the measurement of mount.sh item 7, without the rest of its data).
# Two figures per run: the kit in the page cache for both sides, and caches
# dropped before each side (the issue's "cold" figure).
# Also the CPU each side spent per run (the daemon's user+system time over
# the read, from /proc; zstd's from its rusage): on a machine shared with
# other work the wall figures swing, the CPU per byte much less.
# Prints one table "measurement | stellafs | reference | ratio | goal".
# Not a test: no assertion, the exit status says only whether the run worked.
#
#   tests/bench/zstdread.sh [--size MIB] [--runs N] [--perf FILE]
#     default: a 1024 MiB base64 file (~1.3x compressible), 3 runs, medians
#     --perf FILE: also record the daemon with `perf record -g` during one
#       more cold read, into FILE (read it with perf report -i FILE)
# STELLAFS=..., STELLAKIT=... override the binaries (default build/...).
# Needs root (mounts, drop_caches).  Data lives under /var/tmp and is removed,
# and everything mounted is unmounted, on exit, failure included.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")/../.." && pwd)
sfs=${STELLAFS:-$here/build/fs/stellafs}
sk=${STELLAKIT:-$here/build/tools/stellakit}
size=1024 runs=3 perf_out=
while [ $# -gt 0 ]; do
	case $1 in
	--size) size=$2; shift ;;
	--runs) runs=$2; shift ;;
	--perf) perf_out=$2; shift ;;
	-h|--help) sed -n '2,16p' "$0"; exit 0 ;;
	*) echo "usage: $0 [--size MIB] [--runs N] [--perf FILE]" >&2; exit 2 ;;
	esac
	shift
done
[ "$(id -u)" -eq 0 ] || { echo "zstdread.sh: needs root (mounts, drop_caches)" >&2; exit 2; }
for b in "$sfs" "$sk" zstd; do command -v "$b" >/dev/null || { echo "zstdread.sh: $b: not found" >&2; exit 2; }; done
[ -z "$perf_out" ] || command -v perf >/dev/null || { echo "zstdread.sh: perf: not found" >&2; exit 2; }

. "$here/tests/bench/lib.sh"
bench_workdir zstd
m=$work/mnt
mkdir -p "$m" "$work/cache" "$work/text/feeds"
mbps() { calc %.0f "$1 / $2 / 1e6"; }  # bytes seconds -> MB/s (10^6)
# cpu_of PID: user+system seconds of the whole process so far
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"; }
# sfs_read FILE: time a dd of it, and the daemon's CPU over it in $cpu
sfs_read() {
	local pid c0
	pid=$(server_pid "$m") c0=$(cpu_of "$pid")
	t dd if="$1" of=/dev/null bs=1M status=none
	cpu=$(awk -v a="$c0" -v b="$(cpu_of "$pid")" 'BEGIN { printf "%.2f", b - a }')
}
# zstd_read: time zstd -dc of the kit, its CPU in $cpu
zstd_read() {
	t /usr/bin/time -o "$work/zt" -f '%U %S' zstd -dc "$kit"
	cpu=$(awk '{ printf "%.2f", $1 + $2 }' "$work/zt")
}
mount_kit() {
	unmount "$m"
	"$sfs" -o "trust=$work/k.pub,cache=$work/cache" "$kit" "$m"
}

log "data: ${size} MiB base64 file, packed as a zstd kit"
"$sk" keygen --type ed25519 "$work/k" >/dev/null
rel=feeds/text.b64
head -c "$((size * 3 / 4 << 20))" /dev/urandom | base64 -w 76 > "$work/text/$rel"
truncate -s "$((size << 20))" "$work/text/$rel"
bytes=$((size << 20))
kit=$work/text.tar.zst
SOURCE_DATE_EPOCH=1736899200 "$sk" pack -k "$work/k.key" --version bench --sequence 1 --expires-in 3650 \
	--compress zstd "$work/text" "$kit" >/dev/null
rm -rf "$work/text"
unc=$(zstd -dc "$kit" | wc -c)

printf 'stellafs zstd read benchmark  %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
printf 'CPUs: %s, kernel %s; %d MiB file, kit %d bytes (%s); median of %d runs\n' "$(nproc)" "$(uname -r)" \
	"$size" "$(stat -c %s "$kit")" "$(zstd --version | head -n1)" "$runs"

warm_o=() warm_r=() cold_o=() cold_r=() cpu_o=() cpu_r=()
for ((i = 0; i < runs; i++)); do
	log "run $((i + 1))/$runs"
	cat "$kit" >/dev/null
	mount_kit
	sfs_read "$m/current/$rel"; warm_o+=("$secs") cpu_o+=("$cpu")
	zstd_read; warm_r+=("$secs") cpu_r+=("$cpu")
	mount_kit
	drop
	sfs_read "$m/current/$rel"; cold_o+=("$secs") cpu_o+=("$cpu")
	drop
	zstd_read; cold_r+=("$secs") cpu_r+=("$cpu")
	log "  warm $(mbps $bytes "${warm_o[-1]}") vs $(mbps "$unc" "${warm_r[-1]}") MB/s;" \
		"cold $(mbps $bytes "${cold_o[-1]}") vs $(mbps "$unc" "${cold_r[-1]}") MB/s;" \
		"CPU s warm ${cpu_o[-2]} vs ${cpu_r[-2]}, cold ${cpu_o[-1]} vs ${cpu_r[-1]}"
done

if [ -n "$perf_out" ]; then
	log "perf record -g of the daemon during one more cold read"
	mount_kit
	drop
	pid=$(server_pid "$m")
	perf record -q -g -p "$pid" -o "$perf_out" -- sleep 3600 2>/dev/null &
	ppid=$!
	sleep 0.5
	dd if="$m/current/$rel" of=/dev/null bs=1M status=none
	kill -INT "$ppid"
	wait "$ppid" || true
fi

row() { printf '%-44s | %9s | %22s | %6s | %s\n' "$@"; }
printf '\n'
row measurement stellafs reference ratio goal
for kind in warm cold; do
	declare -n O=${kind}_o R=${kind}_r
	o=$(printf '%s\n' "${O[@]}" | median) r=$(printf '%s\n' "${R[@]}" | median)
	lo=$(printf '%s\n' "${O[@]}" | sort -g | tail -n1) hi=$(printf '%s\n' "${O[@]}" | sort -g | head -n1)
	row "seq read ${size} MiB, .tar.zst, $kind" "$(mbps $bytes "$o") MB/s" "$(mbps "$unc" "$r") MB/s zstd -dc" \
		"$(ratio "$(mbps $bytes "$o")" "$(mbps "$unc" "$r")")" \
		">= 0.8x (stellafs range $(mbps $bytes "$lo")-$(mbps $bytes "$hi") MB/s)"
	unset -n O R
done
o=$(printf '%s\n' "${cpu_o[@]}" | median) r=$(printf '%s\n' "${cpu_r[@]}" | median)
row "CPU per read (daemon; zstd -dc), all runs" "$o s" "$r s zstd -dc" "$(ratio "$r" "$o")" \
	"daemon CPU range $(printf '%s\n' "${cpu_o[@]}" | sort -g | head -n1)-$(printf '%s\n' "${cpu_o[@]}" | sort -g | tail -n1) s"
