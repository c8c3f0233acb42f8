#!/usr/bin/env bash
# Benchmark: reading a mounted kit through stellafs, against references
# measured in the same run on the same data: the native files, bindfs of the
# source tree, squashfuse_ll on an uncompressed squashfs image of the same tree,
# archivemount of the same tar, and gzip/zstd decompressing the kit.
# Prints one table "measurement | stellafs | reference | ratio | goal | context".
# Not a test: no assertion, the exit status says only whether the run worked.
#
#   tests/bench/mount.sh [--quick] [--size MIB] [--files N] [--runs N]
#     default: a 1024 MiB file, 100000 small files, 3 runs (median reported)
#     --quick: a 128 MiB file, 10000 small files
# STELLAFS=..., STELLAKIT=... override the binaries (default build/...);
# ONLY="7" runs only the items named by number.
# Needs root (mounts, drop_caches).  Data lives under /var/tmp and is removed,
# and everything mounted is unmounted, on exit, failure included.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")/../.." && pwd)
sfs=${STELLAFS:-$here/build/fs/stellafs}
sk=${STELLAKIT:-$here/build/tools/stellakit}
py=${PYTHON:-python3}

size=1024 nfiles=100000 runs=3
while [ $# -gt 0 ]; do
	case $1 in
	--quick) size=128 nfiles=10000 ;;
	--size) size=$2; shift ;;
	--files) nfiles=$2; shift ;;
	--runs) runs=$2; shift ;;
	-h|--help) sed -n '2,15p' "$0"; exit 0 ;;
	*) echo "usage: $0 [--quick] [--size MIB] [--files N] [--runs N]" >&2; exit 2 ;;
	esac
	shift
done
[ "$(id -u)" -eq 0 ] || { echo "mount.sh: needs root (mounts, /proc/sys/vm/drop_caches)" >&2; exit 2; }
"$here/scripts/deps.sh" --bench
for b in "$sfs" "$sk"; do [ -x "$b" ] || { echo "mount.sh: $b: not built" >&2; exit 2; }; done

csize=$((size / 2))                    # the compressible file of item 7, MiB
pread_runs=5
. "$here/tests/bench/lib.sh"
bench_workdir mount
mkdir -p "$work"/{mnt,cache}
rows=$work/rows
: > "$rows"

# ---- helpers ----------------------------------------------------------------
mbps() { calc %.0f "$1 / $2 / 1e6"; }  # bytes seconds -> MB/s (10^6)
ms() { calc %.2f "$1 * 1000"; }
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$rows"; }
mnt() { mkdir -p "$work/mnt/$1"; echo "$work/mnt/$1"; }
# sfs_mount KIT MNT CACHE_DIR: mount, wall seconds of the stellafs call in $secs.
sfs_mount() {
	unmount "$2"
	mkdir -p "$3"
	local s=$EPOCHREALTIME
	"$sfs" -o "trust=$work/k.pub,cache=$3" "$1" "$2"
	secs=$(awk -v a="$s" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.6f", b - a }')
}
sq_mount() { unmount "$2"; squashfuse_ll "$1" "$2"; }
rss_kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
# Items run in a subshell each, errexit on: one that fails is reported and the
# others still run; its rows are whatever it wrote before failing.
failed=()
item() {
	local name=$1; shift
	# ONLY="7 4": run those items alone (their number, as in the table)
	[ -z "${ONLY:-}" ] || [[ " $ONLY " == *" ${name%%.*} "* ]] || return 0
	log "$name"
	set +e
	( set -e; "$@" )
	local rc=$?
	set -e
	[ $rc -eq 0 ] || { log "!! $name failed (exit $rc)"; failed+=("$name"); row "$name" "FAILED (exit $rc)" "" "" "" ""; }
}
pack() { # SRC OUT [pack options...]
	local src=$1 out=$2; shift 2
	SOURCE_DATE_EPOCH=1736899200 "$sk" pack -k "$work/k.key" --version bench --sequence 1 \
		--expires-in 3650 "$@" "$src" "$out" >/dev/null
}

# ---- header --------------------------------------------------------------------
printf 'stellafs mount benchmark  %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
printf 'CPUs: %s (%s), kernel %s, %s MiB RAM; data on %s (%s)\n' "$(nproc)" \
	"$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" "$(uname -r)" \
	"$(awk '/^MemTotal/ { print int($2 / 1024) }' /proc/meminfo)" /var/tmp "$(df --output=source /var/tmp | tail -n1)"
printf '%s; %s\n' "$("$sfs" --version 2>&1 | head -n1)" "$(squashfuse_ll --version 2>&1 | head -n1 || true)"
printf 'sizes: %d MiB random file (kit none; squashfs -noI -noD -noF -noX), %d files of 0-2 KiB in 100 dirs,\n' "$size" "$nfiles"
printf '       %d MiB base64 file (kits gzip, zstd); median of %d runs unless noted; MB = 10^6 bytes\n' "$csize" "$runs"

# ---- data -------------------------------------------------------------------
log "data in $work: ${size} MiB random file, $nfiles small files, ${csize} MiB compressible file"
"$sk" keygen --type ed25519 "$work/k" >/dev/null

# A: one big random file, as an uncompressed kit and an uncompressed squashfs.
mkdir -p "$work/big/feeds"
big_rel=feeds/big.bin
head -c "$((size << 20))" /dev/urandom > "$work/big/$big_rel"
big_bytes=$((size << 20))
pack "$work/big" "$work/big.tar" --compress none
mksquashfs "$work/big" "$work/big.sqfs" -noI -noD -noF -noX -noappend -quiet >/dev/null

# B: many small files (0-2 KiB, 100 directories), as a kit and a squashfs.
"$py" - "$work/many/feeds" "$nfiles" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(20250115)
for d in range(100):
    os.makedirs(os.path.join(root, "d%02d" % d))
for i in range(n):
    with open(os.path.join(root, "d%02d" % (i % 100), "f%06d" % i), "wb") as f:
        f.write(rnd.randbytes(rnd.randint(0, 2048)))
EOF
pack "$work/many" "$work/many.tar" --compress none
mksquashfs "$work/many" "$work/many.sqfs" -noI -noD -noF -noX -noappend -quiet >/dev/null

# C: a compressible file (base64 of random bytes, ~1.3x), as gzip and zstd kits.
mkdir -p "$work/text/feeds"
txt_rel=feeds/text.b64
head -c "$((csize * 3 / 4 << 20))" /dev/urandom | base64 -w 76 > "$work/text/$txt_rel"
truncate -s "$((csize << 20))" "$work/text/$txt_rel"
txt_bytes=$((csize << 20))
pack "$work/text" "$work/text.tar.gz" --compress gzip
pack "$work/text" "$work/text.tar.zst" --compress zstd
sync

# ---- 1. cold sequential read --------------------------------------------------
cold_read() { # FILE: drop caches, time a dd of it
	drop
	t dd if="$1" of=/dev/null bs=1M status=none
	echo "$secs"
}
item1() {
	local m_s m_q m_b o=() q=() b=() n=() i big_first
	m_s=$(mnt sfs-big) m_q=$(mnt sq-big) m_b=$(mnt bind-big)
	sfs_mount "$work/big.tar" "$m_s" "$work/cache/big"       # first mount: builds the index
	big_first=$secs
	for ((i = 0; i < runs; i++)); do
		sfs_mount "$work/big.tar" "$m_s" "$work/cache/big"
		o+=("$(cold_read "$m_s/current/$big_rel")")
		sq_mount "$work/big.sqfs" "$m_q"
		q+=("$(cold_read "$m_q/$big_rel")")
		unmount "$m_b"; bindfs -r "$work/big" "$m_b"
		b+=("$(cold_read "$m_b/$big_rel")")
		n+=("$(cold_read "$work/big/$big_rel")")
	done
	o=$(printf '%s\n' "${o[@]}" | median) q=$(printf '%s\n' "${q[@]}" | median)
	b=$(printf '%s\n' "${b[@]}" | median) n=$(printf '%s\n' "${n[@]}" | median)
	row "1. cold seq read ${size} MiB (none kit)" "$(mbps $big_bytes "$o") MB/s" \
		"$(mbps $big_bytes "$q") MB/s squashfuse_ll" "$(ratio "$(mbps $big_bytes "$o")" "$(mbps $big_bytes "$q")")" \
		">= 1.0x" "native $(mbps $big_bytes "$n"), bindfs $(mbps $big_bytes "$b") MB/s; first mount $(calc %.3f "$big_first") s"
}

# ---- 2. warm re-read ----------------------------------------------------------
# Where the page cache lands decides this figure on a VM: the same FUSE file
# read warm at 5.4 GB/s after one fill and 11 GB/s after another.  So each
# of $runs rounds drops the caches, fills every file's cache again (in a
# rotating order), then times one re-read of each; medians of the rounds.
warm_rounds() { # FILE...: one line per round, seconds per file in argument order
	local r i k n=$# f=("$@") w=()
	for ((r = 0; r < runs; r++)); do
		drop
		for ((i = 0; i < n; i++)); do cat "${f[(i + r) % n]}" >/dev/null; done
		for ((i = 0; i < n; i++)); do
			k=$(( (i + r) % n ))
			t dd if="${f[k]}" of=/dev/null bs=1M status=none
			w[k]=$secs
		done
		echo "${w[*]}"
	done
}
item2() {
	local m_s m_q m_b o n q b rounds
	m_s=$(mnt sfs-big) m_q=$(mnt sq-big) m_b=$(mnt bind-big)
	mountpoint -q "$m_s" || sfs_mount "$work/big.tar" "$m_s" "$work/cache/big"
	mountpoint -q "$m_q" || sq_mount "$work/big.sqfs" "$m_q"
	mountpoint -q "$m_b" || bindfs -r "$work/big" "$m_b"
	rounds=$(warm_rounds "$m_s/current/$big_rel" "$work/big/$big_rel" "$m_q/$big_rel" "$m_b/$big_rel")
	o=$(awk '{ print $1 }' <<<"$rounds" | median) n=$(awk '{ print $2 }' <<<"$rounds" | median)
	q=$(awk '{ print $3 }' <<<"$rounds" | median) b=$(awk '{ print $4 }' <<<"$rounds" | median)
	row "2. warm re-read ${size} MiB" "$(mbps $big_bytes "$o") MB/s" "$(mbps $big_bytes "$n") MB/s native" \
		"$(ratio "$(mbps $big_bytes "$o")" "$(mbps $big_bytes "$n")")" ">= 0.75x" \
		"squashfuse_ll $(mbps $big_bytes "$q"), bindfs $(mbps $big_bytes "$b") MB/s; caches refilled each round"
	unmount "$m_q"; unmount "$m_b"
}

# ---- 6. first 4 KiB read deep in the file, right after mounting ---------------
# PREAD FILE OFFSET: "open_seconds pread_seconds" of one open + os.pread(4096).
pread1() {
	"$py" - "$1" "$2" <<'EOF'
import os, sys, time
t0 = time.perf_counter()
fd = os.open(sys.argv[1], os.O_RDONLY)
t1 = time.perf_counter()
b = os.pread(fd, 4096, int(sys.argv[2]))
t2 = time.perf_counter()
assert len(b) == 4096, len(b)
print("%.6f %.6f" % (t1 - t0, t2 - t1))
EOF
}
item6() {
	local m_s m_q i off r o=() oo=() q=() n=() on
	m_s=$(mnt sfs-big) m_q=$(mnt sq-big)
	for ((i = 0; i < pread_runs; i++)); do
		# 85-90% into the file (870-920 MiB of 1 GiB), a random 4 KiB block each run
		off=$(( big_bytes / 100 * 85 / 4096 * 4096 + RANDOM % (big_bytes / 20 / 4096) * 4096 ))
		unmount "$m_s"; unmount "$m_q"
		drop
		sfs_mount "$work/big.tar" "$m_s" "$work/cache/big"
		r=$(pread1 "$m_s/current/$big_rel" "$off"); oo+=("${r% *}"); o+=("${r#* }")
		unmount "$m_s"
		drop
		sq_mount "$work/big.sqfs" "$m_q"
		r=$(pread1 "$m_q/$big_rel" "$off"); q+=("${r#* }")
		unmount "$m_q"
		drop
		r=$(pread1 "$work/big/$big_rel" "$off"); n+=("${r#* }")
	done
	o=$(printf '%s\n' "${o[@]}" | median) oo=$(printf '%s\n' "${oo[@]}" | median)
	q=$(printf '%s\n' "${q[@]}" | median) n=$(printf '%s\n' "${n[@]}" | median)
	row "6. first 4 KiB pread @85-90% after mount" "$(ms "$o") ms" "$(ms "$q") ms squashfuse_ll" "$(ratio "$o" "$q")" \
		"<= 5 ms" "median of $pread_runs cold mounts; native $(ms "$n") ms; stellafs open $(ms "$oo") ms"
}

# ---- 3. stat every file, warm -------------------------------------------------
# WALK DIR: walk + os.stat every entry twice; "seconds_of_second_pass files".
walk() {
	"$py" - "$1" <<'EOF'
import os, sys, time
def once(top):
    n = 0
    for d, dirs, files in os.walk(top):
        for name in dirs + files:
            os.stat(os.path.join(d, name))
        n += len(files)
    return n
once(sys.argv[1] + "/")
t0 = time.perf_counter()
n = once(sys.argv[1] + "/")
print("%.6f %d" % (time.perf_counter() - t0, n))
EOF
}
item3() {
	local m_s m_q o n q v on nn qn
	m_s=$(mnt sfs-many) m_q=$(mnt sq-many)
	mountpoint -q "$m_s" || sfs_mount "$work/many.tar" "$m_s" "$work/cache/many"
	mountpoint -q "$m_q" || sq_mount "$work/many.sqfs" "$m_q"
	read -r o on < <(walk "$m_s/current")
	read -r v _ < <(walk "$m_s/snapshots/bench")   # same tree, without the top-level symlink
	read -r n nn < <(walk "$work/many")
	read -r q qn < <(walk "$m_q")
	[ "$on" = "$nfiles" ] || log "!! stellafs walk saw $on files, expected $nfiles"
	[ "$qn" = "$nfiles" ] && [ "$nn" = "$nfiles" ] || log "!! walk counts: native $nn squashfuse $qn"
	row "3. stat all $nfiles files (warm, 2nd pass)" "$(calc %.3f "$o") s" "$(calc %.3f "$n") s native" "$(ratio "$o" "$n")" \
		"<= 1.3x" "via snapshots/bench $(calc %.3f "$v") s; squashfuse_ll $(calc %.3f "$q") s; files seen $on"
	unmount "$m_q"
}

# ---- 4. mount time of the many-file kit ----------------------------------------
am_mount() { # KIT MNT: archivemount + a first ls, seconds in $secs
	unmount "$2"
	local s=$EPOCHREALTIME
	archivemount -o ro "$1" "$2"
	ls "$2" >/dev/null
	secs=$(awk -v a="$s" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.6f", b - a }')
}
item4() {
	local m_s m_a i kit=$work/many.tar
	local fc=() fw=() ac=() aw=() rc=() rw=()
	m_s=$(mnt sfs-many) m_a=$(mnt am-many)
	for ((i = 0; i < runs; i++)); do
		# cold: kit not in the page cache (just plugged in)
		unmount "$m_s"; rm -rf "$work/cache/first"; drop
		sfs_mount "$kit" "$m_s" "$work/cache/first"; fc+=("$secs")
		unmount "$m_s"; drop
		sfs_mount "$kit" "$m_s" "$work/cache/first"; rc+=("$secs")
		unmount "$m_s"; drop
		am_mount "$kit" "$m_a"; ac+=("$secs"); unmount "$m_a"
		# warm: kit already in the page cache
		cat "$kit" >/dev/null
		rm -rf "$work/cache/first"
		sfs_mount "$kit" "$m_s" "$work/cache/first"; fw+=("$secs")
		unmount "$m_s"
		sfs_mount "$kit" "$m_s" "$work/cache/first"; rw+=("$secs")
		unmount "$m_s"
		am_mount "$kit" "$m_a"; aw+=("$secs"); unmount "$m_a"
	done
	local FC FW AC AW RC RW
	FC=$(printf '%s\n' "${fc[@]}" | median) FW=$(printf '%s\n' "${fw[@]}" | median)
	AC=$(printf '%s\n' "${ac[@]}" | median) AW=$(printf '%s\n' "${aw[@]}" | median)
	RC=$(printf '%s\n' "${rc[@]}" | median) RW=$(printf '%s\n' "${rw[@]}" | median)
	row "4a. first mount, $nfiles files, cold" "$(calc %.3f "$FC") s" "$(calc %.3f "$AC") s archivemount" "$(ratio "$FC" "$AC")" \
		"<= 0.5x" "kit $(( $(stat -c %s "$kit") >> 20 )) MiB; warm kit: $(calc %.3f "$FW") s vs $(calc %.3f "$AW") s = $(ratio "$FW" "$AW")"
	row "4b. remount, cached index, cold" "$(ms "$RC") ms" "-" "-" "a few ms" "warm kit: $(ms "$RW") ms"
}

# ---- 5. daemon RSS after reading every file ------------------------------------
item5() {
	local m_s m_q pid a0 rss hwm qpid qrss
	m_s=$(mnt sfs-many) m_q=$(mnt sq-many)
	unmount "$m_s"; sfs_mount "$work/many.tar" "$m_s" "$work/cache/many"
	pid=$(server_pid "$m_s"); a0=$(rss_kib "$pid" VmRSS)
	find "$m_s/current/" -type f -print0 | xargs -0 cat >/dev/null
	rss=$(rss_kib "$pid" VmRSS) hwm=$(rss_kib "$pid" VmHWM)
	sq_mount "$work/many.sqfs" "$m_q"
	qpid=$(server_pid "$m_q")
	find "$m_q/" -type f -print0 | xargs -0 cat >/dev/null
	qrss=$(rss_kib "$qpid" VmRSS)
	row "5. daemon RSS after reading $nfiles files" "$(calc %.1f "$rss / 1024") MiB" "$(calc %.1f "$qrss / 1024") MiB squashfuse_ll" \
		"$(ratio "$rss" "$qrss")" "<= 32 MiB" "stellafs after mount $(calc %.1f "$a0 / 1024"), peak $(calc %.1f "$hwm / 1024") MiB"
	unmount "$m_q"; unmount "$m_s"
}

# ---- 7. sequential read from compressed kits -----------------------------------
item7() {
	local kind kit tool m i first unc o=() r=() O R k
	for kind in gz zst; do
		kit=$work/text.tar.$kind
		case $kind in gz) tool=gzip ;; zst) tool=zstd ;; esac
		m=$(mnt "sfs-$kind") o=() r=()
		unc=$("$tool" -dc "$kit" | wc -c)
		cat "$kit" >/dev/null                    # both sides read the kit from the page cache
		sfs_mount "$kit" "$m" "$work/cache/$kind"; first=$secs
		for ((i = 0; i < runs; i++)); do
			sfs_mount "$kit" "$m" "$work/cache/$kind"
			t dd if="$m/current/$txt_rel" of=/dev/null bs=1M status=none; o+=("$secs")
			t "$tool" -dc "$kit"; r+=("$secs")
		done
		unmount "$m"
		O=$(printf '%s\n' "${o[@]}" | median) R=$(printf '%s\n' "${r[@]}" | median)
		k=$(stat -c %s "$kit")
		row "7. seq read ${csize} MiB from .tar.$kind kit" "$(mbps $txt_bytes "$O") MB/s" \
			"$(mbps "$unc" "$R") MB/s $tool -dc" "$(ratio "$(mbps $txt_bytes "$O")" "$(mbps "$unc" "$R")")" ">= 0.8x" \
			"uncompressed MB/s; ratio $(calc %.2f "$unc / $k")x; first mount $(calc %.2f "$first") s"
		[ $kind = zst ] || continue
		# the same with the kit read from the disk: caches dropped for both
		o=() r=()
		for ((i = 0; i < runs; i++)); do
			sfs_mount "$kit" "$m" "$work/cache/$kind"
			drop
			t dd if="$m/current/$txt_rel" of=/dev/null bs=1M status=none; o+=("$secs")
			drop
			t "$tool" -dc "$kit"; r+=("$secs")
		done
		unmount "$m"
		O=$(printf '%s\n' "${o[@]}" | median) R=$(printf '%s\n' "${r[@]}" | median)
		row "7c. cold seq read ${csize} MiB from .tar.$kind kit" "$(mbps $txt_bytes "$O") MB/s" \
			"$(mbps "$unc" "$R") MB/s $tool -dc" "$(ratio "$(mbps $txt_bytes "$O")" "$(mbps "$unc" "$R")")" ">= 0.8x" \
			"caches dropped before each read (kit from the disk, index cached)"
	done
}

item "1. cold sequential read" item1
item "2. warm re-read" item2
item "6. first pread after mount" item6
item "3. stat every file" item3
item "4. mount time" item4
item "5. daemon RSS" item5
item "7. compressed kits" item7

# ---- report --------------------------------------------------------------------
printf '\n'
{
	printf 'measurement\tstellafs\treference\tratio\tgoal\tcontext\n'
	cat "$rows"
} | awk -F'\t' '
	{ for (i = 1; i <= NF; i++) { c[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } n = NR; if (NF > nf) nf = NF }
	END {
		for (r = 1; r <= n; r++) {
			line = ""
			for (i = 1; i <= nf; i++) line = line (i > 1 ? " | " : "") sprintf(i < nf ? "%-" w[i] "s" : "%s", c[r, i])
			print line
			if (r == 1) { sep = ""; for (i = 1; i <= nf; i++) { s = ""; for (j = 0; j < w[i]; j++) s = s "-"; sep = sep (i > 1 ? "-|-" : "") s } print sep }
		}
	}'
if [ ${#failed[@]} -ne 0 ]; then
	printf '\nfailed:'; printf ' [%s]' "${failed[@]}"; printf '\n'
	exit 1
fi
