#!/bin/sh
# Run every libFuzzer target for SECONDS each (default 60).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Builds build-fuzz (clang, -Dfuzzing=true) when missing.  Each target starts
# from its seeds in tests/fuzz/corpus/<target>/ (never written to) and grows a
# working corpus in build-fuzz/fuzz-corpus/<target>/.  Crash reproducers go to
# tests/fuzz/crashes/<target>-crash-<sha1>; the exit status is 1 if any target
# found one.  Replay one with: build-fuzz/tests/fuzz/<target> FILE
#
#   scripts/fuzz.sh --smoke SECONDS TARGET...
#
# is CI's short run (scripts/test.sh), which builds build-fuzz itself and runs
# two of these at once: nothing is built here, the working corpus is a
# throwaway one (so every run starts from the seeds alone), and the log is
# build-fuzz/fuzz-smoke-<target>.log.  Flags, crash reproducers and the exit
# status are as above.
set -eu

smoke=false
if [ "${1:-}" = --smoke ]; then
	smoke=true
	shift
	smoke_work=$(mktemp -d /tmp/stella-fuzz-smoke.XXXXXX)
	trap 'rm -rf "$smoke_work"' EXIT
fi

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
secs=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-fuzz_manifest fuzz_sig fuzz_kit fuzz_merkle fuzz_source fuzz_trust fuzz_control fuzz_options fuzz_index fuzz_http fuzz_ociref fuzz_ocimanifest}
bd=build-fuzz

if [ ! -f "$bd/build.ninja" ]; then
	CC=clang meson setup "$bd" -Dfuzzing=true -Dbuildtype=debugoptimized -Db_lundef=false
fi
# (--smoke: built by the caller; two ninjas at once in one tree would race)
$smoke || for t in $targets; do
	ninja -C "$bd" "tests/fuzz/$t" >/dev/null || {
		echo "fuzz.sh: cannot build $t (is tests/fuzz in meson.build, and -Dfuzzing=true?)" >&2
		exit 1
	}
done

mkdir -p tests/fuzz/crashes
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for t in $targets; do
	work=$bd/fuzz-corpus/$t
	mkdir -p "$work"
	extra=""
	case $t in
	fuzz_manifest) extra="-dict=tests/fuzz/json.dict -max_len=16384" ;;
	fuzz_sig)      extra="-max_len=4096" ;;
	fuzz_merkle)   extra="-max_len=16384" ;;
	fuzz_kit)      extra="-dict=tests/fuzz/tar.dict -max_len=65536 -rss_limit_mb=2048" ;;
	fuzz_source)   extra="-max_len=65536 -rss_limit_mb=2048" ;;
	fuzz_trust)    extra="-dict=tests/fuzz/pem.dict -max_len=16384" ;;
	fuzz_http)     extra="-max_len=1024" ;;
	fuzz_ociref)   extra="-dict=tests/fuzz/oci.dict -max_len=1024" ;;
	fuzz_ocimanifest) extra="-dict=tests/fuzz/oci.dict -max_len=16384" ;;
	fuzz_control)  extra="-dict=tests/fuzz/control.dict -max_len=8192" ;;
	fuzz_options)  extra="-dict=tests/fuzz/options.dict -max_len=4096" ;;
	fuzz_index)    extra="-max_len=65536 -rss_limit_mb=2048" ;;
	esac
	log=$bd/fuzz-$t.log
	if $smoke; then
		work=$smoke_work/$t
		log=$bd/fuzz-smoke-$t.log
		mkdir -p "$work"
	fi
	echo "== $t: ${secs}s (log: $log)"
	# shellcheck disable=SC2086
	if "$bd/tests/fuzz/$t" "$work" "tests/fuzz/corpus/$t" $extra \
		-max_total_time="$secs" -timeout=25 -print_final_stats=1 \
		-artifact_prefix="tests/fuzz/crashes/$t-" >"$log" 2>&1; then
		:
	else
		status=1
		echo "   FAILED: see $log and tests/fuzz/crashes/"
		grep -m1 -E 'ERROR: |runtime error|==ERROR|deadly signal' "$log" | sed 's/^/   /' || true
	fi
	grep -E '^#[0-9]+' "$log" | tail -1 | sed 's/^/   last: /' || true
	grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" \
		| sed 's/^/   /' || true
done
# (--smoke: another run may still need it; the caller removes it if empty)
$smoke || rmdir tests/fuzz/crashes 2>/dev/null || true
exit $status
