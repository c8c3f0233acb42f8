# Shared by the bench scripts in tests/bench/ (sourced, not run): the work
# directory and its teardown, timing, dropping caches, ratios, unmounting.
#
#   bench_workdir NAME   make $work under /var/tmp; on exit, everything mounted
#                        below it is unmounted and it is removed
#   log MSG...           a timestamped line on stderr
#   drop                 sync, then drop the page, dentry and inode caches
#   t CMD...             run CMD (stdout discarded); wall seconds in $secs
#   ratio A B            A / B as "1.23x" ("-" when B is 0)
#   calc FMT EXPR        awk arithmetic, printf-formatted
#   median               the median of the numbers on stdin
#   server_pid MNT       the process serving MNT (the daemons benched here all
#                        take the mountpoint as their last argument)
#   unmount MNT          umount, then wait (bounded, 10 s) for its server to end

bench_workdir() {
	work=$(mktemp -d "/var/tmp/stella-bench-$1.XXXXXX")
	chmod 755 "$work"
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
}

# Deepest first, so that a mount inside another goes before it.
bench_cleanup() {
	set +e
	local m
	for m in $(awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r); do
		umount "$m" 2>/dev/null || umount -l "$m"
	done
	sleep 0.2
	rm -rf --one-file-system "$work"
}

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }

# Fork-free clock: $EPOCHREALTIME before and after.
t() {
	local s=$EPOCHREALTIME
	"$@" >/dev/null
	secs=$(awk -v a="$s" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.6f", b - a }')
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2fx", a / b }'; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

server_pid() { pgrep -f -- " $1\$" | head -n1; }

unmount() {
	mountpoint -q "$1" || return 0
	local pid i
	pid=$(server_pid "$1" || true)
	umount "$1"
	for ((i = 0; i < 200; i++)); do
		[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.05
	done
	echo "$(basename "$0"): server $pid of $1 still running 10 s after umount" >&2
}
