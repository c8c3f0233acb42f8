#!/usr/bin/env bash
# Benchmark: `stellakit verify` of a kit holding one large file, against the
# reference work an operator would otherwise do on the extracted file:
# `openssl dgst -sha256 FILE` followed by `fsverity digest FILE`.
# Prints both times and the ratio (goal: <= 0.60).  Not a test: no assertion.
#
#   tests/bench/verify.sh [SIZE_MIB] [RUNS]      (defaults 512, 3)
# STELLAKIT=path/to/stellakit overrides the binary (default build/tools/stellakit).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
sk=${STELLAKIT:-$here/build/tools/stellakit}
size=${1:-512}
runs=${2:-3}
work=$(mktemp -d /var/tmp/stella-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/src/feeds"
head -c "$((size << 20))" /dev/urandom > "$work/src/feeds/big.bin"
"$sk" keygen --type ecdsa-p256 "$work/k" >/dev/null
SOURCE_DATE_EPOCH=1736899200 "$sk" pack -k "$work/k.key" --version bench --sequence 1 \
	--expires-in 3650 "$work/src" "$work/kit.tar" >/dev/null
ref_file="$work/src/feeds/big.bin"

# Warm the page cache for both inputs: we compare CPU work, not the disk.
cat "$work/kit.tar" "$ref_file" >/dev/null

best() { sort -g | head -n1; }
timeit() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); awk -v a="$s" -v b="$e" 'BEGIN { print b - a }'; }
# Peak RSS in MiB of one run (GNU time's %M is KiB), from /proc when time(1) is absent.
peak_rss() {
	if [ -x /usr/bin/time ]; then
		/usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -n1 | awk '{ printf "%.1f", $1 / 1024 }'
	else
		echo "n/a"
	fi
}

ours=(); refs=()
for ((i = 0; i < runs; i++)); do
	ours+=("$(timeit "$sk" verify -t "$work/k.pub" "$work/kit.tar")")
	refs+=("$(timeit sh -c 'openssl dgst -sha256 "$1" && fsverity digest "$1"' _ "$ref_file")")
done
o=$(printf '%s\n' "${ours[@]}" | best)
r=$(printf '%s\n' "${refs[@]}" | best)
printf 'verify benchmark: one %d MiB file, best of %d runs, %d CPUs\n' "$size" "$runs" "$(nproc)"
printf '  %-44s %8.3f s\n' "stellakit verify kit.tar" "$o"
printf '  %-44s %8.3f s\n' "openssl dgst -sha256 + fsverity digest" "$r"
printf '  ratio (goal <= 0.60)                         %8.2f\n' "$(awk -v a="$o" -v b="$r" 'BEGIN { print a / b }')"
rm -f "$work/kit2.tar"
printf '  peak RSS: verify %s MiB, pack %s MiB (file: %d MiB)\n' \
	"$(peak_rss "$sk" verify -t "$work/k.pub" "$work/kit.tar")" \
	"$(SOURCE_DATE_EPOCH=1736899200 peak_rss "$sk" pack -k "$work/k.key" --version bench --sequence 1 \
		--expires-in 3650 "$work/src" "$work/kit2.tar")" "$size"
