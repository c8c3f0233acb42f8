#!/usr/bin/env bash
# Benchmark: kits of many small files (kit format 1.1, the kit carries its
# index).  For each tree size, side by side in one run:
#   - first mount (empty index cache), caches dropped, vs archivemount of the
#     same tar (the kit is a tar), caches dropped;
#   - the first `find -printf %s` after a mount, caches dropped, vs a cold
#     walk of the source tree on the local disk;
#   - a warm walk vs a warm walk of the source tree;
#   - the daemon's RSS after walking everything and reading 100,000 files
#     (or all of them, when fewer), goal 32 MiB;
#   - pack's peak RSS (goal 512 MiB) with an Ed25519 key (which maps the
#     manifest and the kit to sign them, dropping the pages read behind the
#     signer: core/mapview.c) and with an ECDSA key (streamed), verify's and
#     import's peak RSS (goal 128 MiB: both stream the manifest,
#     docs/kit-format.md "memory of stellakit verify"), verify's wall time.
# Prints one table "measurement | stellafs | reference | ratio | goal".
# Not a test: no assertion, the exit status says only whether the run worked.
#
#   tests/bench/bigkit.sh [--quick] [--files N[,N...]] [--keep DIR]
#                         [--mount-only] [--runs R]
#     default: 1000000 and 100000 files; --quick: 100000 and 20000
#     --mount-only: only the first mount beside archivemount (no verify,
#     import, walks or reads)
#     --runs R: the first mount and archivemount R times each, alternating
#     (a row per run, and one with the range and the median of the ratio)
#     --keep DIR: keep each tree and its Ed25519 kit (and key) in DIR and
#     reuse them on the next run with the same DIR (generating a million
#     files takes minutes); the pack rows are then measured again only when
#     the kit is made.
# STELLAFS=..., STELLAKIT=... override the binaries (default build/...).
# Needs root (mounts, drop_caches).  Data lives under /var/tmp and is removed,
# and everything mounted is unmounted, on exit, failure included.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")/../.." && pwd)
sfs=${STELLAFS:-$here/build/fs/stellafs}
sk=${STELLAKIT:-$here/build/tools/stellakit}
sizes="1000000 100000"
keep=
mount_only=
runs=1
while [ $# -gt 0 ]; do
	case $1 in
	--quick) sizes="100000 20000" ;;
	--files) sizes=${2//,/ }; shift ;;
	--keep) keep=$(realpath -m "$2"); shift ;;
	--mount-only) mount_only=1 ;;
	--runs) runs=$2; shift ;;
	-h|--help) sed -n '2,32p' "$0"; exit 0 ;;
	*) echo "usage: $0 [--quick] [--files N[,N...]] [--keep DIR] [--mount-only] [--runs R]" >&2; exit 2 ;;
	esac
	shift
done
[ "$(id -u)" -eq 0 ] || { echo "bigkit.sh: needs root (mounts, /proc/sys/vm/drop_caches)" >&2; exit 2; }
for b in "$sfs" "$sk" /usr/bin/time archivemount openssl python3; do
	command -v "$b" >/dev/null || { echo "bigkit.sh: $b: not found" >&2; exit 2; }
done

. "$here/tests/bench/lib.sh"
bench_workdir bigkit
rows=$work/rows
: > "$rows"
# a row of the table, also logged as soon as it is measured
row() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$rows"; log "$1: $2 | $3 | $4 | goal $5"; }
maxrss_mib() { awk '/Maximum resident set size/ { printf "%.0f MiB", $NF / 1024 }' "$1"; }

gen() { # DIR N: N small JSON files, 1000 per directory
	python3 - "$1" "$2" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for d in range((n + 999) // 1000):
    dp = os.path.join(root, "feeds", "d%04d" % d)
    os.makedirs(dp, exist_ok=True)
    for i in range(min(1000, n - d * 1000)):
        k = d * 1000 + i
        with open(os.path.join(dp, "CVE-%07d.json" % k), "w") as f:
            f.write('{"id":"CVE-%07d","score":%d,"summary":"%s"}\n' % (k, k % 10, "x" * (k % 200)))
EOF
}

if [ -n "$keep" ]; then
	mkdir -p "$keep"
	[ -f "$keep/ed.key" ] || openssl genpkey -algorithm ED25519 -out "$keep/ed.key" 2>/dev/null
	cp "$keep/ed.key" "$work/ed.key"
else
	openssl genpkey -algorithm ED25519 -out "$work/ed.key" 2>/dev/null
fi
openssl pkey -in "$work/ed.key" -pubout -out "$work/ed.pub"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/ec.key" 2>/dev/null
openssl pkey -in "$work/ec.key" -pubout -out "$work/ec.pub"
ident=(--version 2025.01.15 --sequence 1 --expires-in 30)

for n in $sizes; do
	d=$work/n$n
	mkdir -p "$d"
	src=$d
	[ -z "$keep" ] || src=$keep/n$n
	mkdir -p "$src"
	if [ ! -f "$src/kit.tar" ]; then
		rm -rf "$src/tree"
		log "$n files: generating the tree"
		gen "$src/tree" "$n"
		log "$n files: pack (Ed25519, then ECDSA)"
		/usr/bin/time -v "$sk" pack -k "$work/ed.key" "${ident[@]}" "$src/tree" "$src/kit.tar.part" >/dev/null 2>"$d/pack-ed.time"
		mv "$src/kit.tar.part" "$src/kit.tar"
		/usr/bin/time -v "$sk" pack -k "$work/ec.key" "${ident[@]}" "$src/tree" "$d/kit-ec.tar" >/dev/null 2>"$d/pack-ec.time"
		row "pack RSS, $n files, Ed25519" "$(maxrss_mib "$d/pack-ed.time")" "-" "-" "<= 512 MiB"
		row "pack RSS, $n files, ECDSA" "$(maxrss_mib "$d/pack-ec.time")" "-" "-" "<= 512 MiB"
		rm -f "$d/kit-ec.tar"*
	else
		log "$n files: reusing $src (tree and kit)"
	fi
	[ "$src" = "$d" ] || { ln -s "$src/tree" "$d/tree"; ln -s "$src/kit.tar" "$d/kit.tar"; }
	if [ -z "$mount_only" ]; then
		log "$n files: verify"
		drop
		s0=$EPOCHREALTIME
		/usr/bin/time -v "$sk" verify -t "$work/ed.pub" "$d/kit.tar" >/dev/null 2>"$d/verify.time"
		vsecs=$(awk -v a="$s0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
		row "verify RSS, $n files" "$(maxrss_mib "$d/verify.time")" "-" "-" "<= 128 MiB"
		row "verify (s), $n files" "$vsecs" "-" "-" "-"
		log "$n files: import"
		/usr/bin/time -v "$sk" import -s "$d/store" -t "$work/ed.pub" "$d/kit.tar" >/dev/null 2>"$d/import.time"
		row "import RSS, $n files" "$(maxrss_mib "$d/import.time")" "-" "-" "<= 128 MiB"
		rm -rf --one-file-system "$d/store"
	fi

	log "$n files: first mount vs archivemount"
	mkdir -p "$d/mnt" "$d/amnt"
	ln -s "$d/mnt" "$work/mnt-s$n"
	ln -s "$d/amnt" "$work/mnt-a$n"
	: > "$d/ratios"
	for ((k = 1; k <= runs; k++)); do
		# an empty index cache each time: the first mount is measured
		rm -rf "$d/cache"
		mkdir -m 0700 "$d/cache"
		drop
		t "$sfs" -o "trust=$work/ed.pub,cache=$d/cache" "$d/kit.tar" "$d/mnt"
		first=$secs
		unmount "$d/mnt"
		drop
		t archivemount -o ro,readonly "$d/kit.tar" "$d/amnt"
		am=$secs
		unmount "$d/amnt"
		echo "$(ratio "$first" "$am")" | tr -d x >> "$d/ratios"
		what="first mount (s), $n files"
		[ "$runs" -eq 1 ] || what="$what, run $k"
		row "$what" "$first" "$am (archivemount)" "$(ratio "$first" "$am")" "<= 0.25x"
	done
	if [ "$runs" -gt 1 ]; then
		# the range, and the median: one run is at the mercy of a busy host
		row "first mount, $n files, $runs runs" "-" "-" "$(sort -g "$d/ratios" | awk '{ v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.2f-%.2fx, median %.2fx", v[1], v[NR], m }')" "<= 0.25x"
	fi
	if [ -n "$mount_only" ]; then
		rm -rf --one-file-system "$d"
		continue
	fi

	log "$n files: walks"
	"$sfs" -o "trust=$work/ed.pub,cache=$d/cache" "$d/kit.tar" "$d/mnt"
	drop
	t find "$d/mnt/current/" -printf '%s\n'
	cold=$secs
	t find "$d/mnt/current/" -printf '%s\n'
	warm=$secs
	drop
	t find "$d/tree/" -printf '%s\n'
	ncold=$secs
	t find "$d/tree/" -printf '%s\n'
	nwarm=$secs
	row "first find -printf %s (s), $n files" "$cold" "$ncold (cold walk, local disk)" "$(ratio "$cold" "$ncold")" "<= 1.5x"
	row "warm find -printf %s (s), $n files" "$warm" "$nwarm (warm, local disk)" "$(ratio "$warm" "$nwarm")" "<= 1.3x"

	log "$n files: reading up to 100000 files"
	# (head ends the pipe early: find's SIGPIPE is expected, not a failure)
	(set +o pipefail; cd "$d/mnt/current" && find . -type f | head -n 100000 | xargs -d '\n' cat > /dev/null)
	pid=$(server_pid "$d/mnt")
	rss=$(awk '/VmRSS/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$pid/status")
	hwm=$(awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$pid/status")
	row "daemon RSS after walk + reads, $n files" "$rss (peak $hwm)" "-" "-" "<= 32 MiB"
	unmount "$d/mnt"
	rm -rf --one-file-system "$d"
done

printf '\n%-44s | %-22s | %-34s | %-7s | %s\n' measurement stellafs reference ratio goal
printf '%s\n' "---------------------------------------------+------------------------+------------------------------------+---------+-----------"
while IFS=$'\t' read -r a b c r g; do
	printf '%-44s | %-22s | %-34s | %-7s | %s\n' "$a" "$b" "$c" "$r" "$g"
done < "$rows"
