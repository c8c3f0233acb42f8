#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what is
# missing, builds (optimised, warnings are errors), runs the C unit tests and
# the pytest suite, then does it all again under AddressSanitizer +
# UndefinedBehaviorSanitizer; then the concurrency tests under ThreadSanitizer
# and a short run of every libFuzzer target (docs/hardening.md); then the
# shipped units, fstab line, udev rule and USB helper under a real systemd in a
# Debian 12 container (tests/systemd/).  Ends with one line: "total: N passed,
# N failed".
#
#   scripts/test.sh [PYTEST_ARGS...]      (PYTEST_ARGS: the release and ASan runs)
#   STAGES="tsan fuzz" scripts/test.sh    (only some of: release asan tsan fuzz systemd)
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

scripts/deps.sh || { echo "total: 0 passed, 1 failed"; exit 1; }

# pytest from Debian (python3-pytest), whatever python3 is first on PATH.
PY=/usr/bin/python3
results=$(mktemp -d)
systemd_run=
trap 'systemd_cleanup; rm -rf "$results"' EXIT
trap 'exit 143' TERM INT HUP # so that the EXIT trap runs (a booted container)
status=0

STAGES=${STAGES:-release asan tsan fuzz systemd}
stage() { [[ " $STAGES " == *" $1 "* ]]; }

build_tree() { # NAME BUILD_DIR CC ("": meson's choice) MESON_OPTIONS...
	local name=$1 dir=$2 cc=$3
	shift 3
	echo "=== $name: build ($dir)"
	if [ ! -f "$dir/build.ninja" ]; then
		env ${cc:+CC="$cc"} meson setup "$dir" "$@" >"$results/$name-setup.log" 2>&1 ||
			{ cat "$results/$name-setup.log"; status=1; return 1; }
	else
		meson configure "$dir" "$@" >/dev/null 2>&1
	fi
	meson compile -C "$dir" >"$results/$name-build.log" 2>&1 ||
		{ cat "$results/$name-build.log"; status=1; return 1; }
	if grep -q "warning:" "$results/$name-build.log"; then
		grep "warning:" "$results/$name-build.log"; status=1
	fi
	return 0
}

run_suite() { # NAME BUILD_DIR MESON_OPTIONS...
	local name=$1 dir=$2
	shift 2
	build_tree "$name" "$dir" "" "$@" || return
	echo "=== $name: unit tests"
	meson test -C "$dir" --print-errorlogs 2>&1 | tee "$results/$name-unit.log" | grep -E "^ *[0-9]+/[0-9]+ |^(Ok|Fail|Timeout):"
	echo "=== $name: pytest"
	STELLA_BUILD="$top/$dir" STELLAKIT="$top/$dir/tools/stellakit" STELLAFS="$top/$dir/fs/stellafs" "$PY" -m pytest -q -p no:cacheprovider \
		--junitxml="$results/$name-pytest.xml" "${PYTEST_ARGS[@]}" tests/ || status=1
}

# ThreadSanitizer over the tests where the daemon's and stellakit's threads
# meet: readers during 500 switches, control commands racing each other, many
# readers of one file, imports (stellakit, incoming/) while reads go on.  clang,
# for LLVM's newer TSan runtime and because the fuzz stage needs it anyway.
# The detached daemon's stderr is /dev/null: reports go to files, and any
# report fails the run.
TSAN_TESTS="switch_storm or concurrent or while_mounted or incoming_directory"
# and a kit on mirrors: fetch threads, their watchdog, merged fetches and
# the fetches ahead (tests/test_remote_mount.py)
TSAN_REMOTE="mounted_tree_equals_source or tamper_on_server or hanging_server or failover_to_second_mirror"
# and the unit tests of core's own threads: the zstd decode-ahead workers
# with concurrent readers, fork and close while they decode.
TSAN_UNIT="unit-frames unit-source"
run_tsan() {
	build_tree tsan build-tsan clang -Dbuildtype=debugoptimized -Db_sanitize=thread \
		-Db_lundef=false "${werror[@]}" || return
	local dir tsan_opts norand=() rc=0
	dir=$(mktemp -d /tmp/stella-tsan.XXXXXX)
	tsan_opts="exitcode=88 halt_on_error=0 second_deadlock_stack=1 log_path=$dir/tsan"
	[ -f tests/tsan.supp ] && tsan_opts+=" suppressions=$top/tests/tsan.supp"
	# LLVM 14's TSan cannot lay out its shadow memory when the kernel
	# randomises mmap with more than 28 bits: then run without ASLR.
	[ "$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 28)" -gt 28 ] &&
		norand=(setarch "$(uname -m)" -R)
	echo "=== tsan: pytest -k \"$TSAN_TESTS\""
	TSAN_OPTIONS=$tsan_opts STELLA_BUILD="$top/build-tsan" STELLAKIT="$top/build-tsan/tools/stellakit" \
		STELLAFS="$top/build-tsan/fs/stellafs" "${norand[@]}" "$PY" -m pytest -q -p no:cacheprovider \
		--junitxml="$results/tsan-pytest.xml" -k "$TSAN_TESTS" tests/test_store.py tests/test_mount.py tests/test_resources.py || rc=$?
	echo "=== tsan: pytest -k \"$TSAN_REMOTE\""
	TSAN_OPTIONS=$tsan_opts STELLA_BUILD="$top/build-tsan" STELLAKIT="$top/build-tsan/tools/stellakit" \
		STELLAFS="$top/build-tsan/fs/stellafs" "${norand[@]}" "$PY" -m pytest -q -p no:cacheprovider \
		--junitxml="$results/tsan-remote-pytest.xml" -k "$TSAN_REMOTE" tests/test_remote_mount.py || rc=$?
	[ $rc -ne 0 ] && status=1
	[ $rc -eq 5 ] && echo "tsan-selection failed" >>"$results/tsan.count" # nothing matched -k
	echo "=== tsan: unit tests $TSAN_UNIT"
	TSAN_OPTIONS=$tsan_opts "${norand[@]}" meson test -C build-tsan --print-errorlogs $TSAN_UNIT 2>&1 |
		tee "$results/tsan-unit.log" | grep -E "^ *[0-9]+/[0-9]+ |^(Ok|Fail|Timeout):"
	[ "${PIPESTATUS[0]}" -ne 0 ] && status=1
	if ls "$dir"/* >/dev/null 2>&1; then
		echo "=== ThreadSanitizer reports"
		cat "$dir"/*
		status=1
		echo "tsan-reports failed" >>"$results/tsan.count"
	fi
	rm -rf "$dir"
}

# A short libFuzzer run of every target in build-fuzz/tests/fuzz/ (a glob: new
# targets join by themselves) over its seeds plus up to 30 s of new inputs, two
# at a time; scripts/fuzz.sh --smoke runs each with its own flags.  One test per
# target in the total; a crash fails it, and its reproducer is kept in
# tests/fuzz/crashes/ and printed.  FUZZ_SMOKE_SECS overrides the time.
fuzz_smoke_one() { # TARGET SECONDS
	if [ ! -d "tests/fuzz/corpus/$1" ]; then
		echo "== $1: no seed corpus tests/fuzz/corpus/$1/"
		return 1
	fi
	# fuzz.sh's own sanitizer options, not the ASan stage's log files; a
	# target that hangs past its time is killed
	env -u ASAN_OPTIONS -u UBSAN_OPTIONS timeout -k 10 $(($2 + 120)) scripts/fuzz.sh --smoke "$2" "$1" ||
		{ local rc=$?; [ $rc -ge 124 ] && echo "   FAILED: killed after $(($2 + 120)) s"; return $rc; }
}
run_fuzz_smoke() {
	build_tree fuzz build-fuzz clang -Dfuzzing=true -Dbuildtype=debugoptimized \
		-Db_lundef=false "${werror[@]}" ||
		{ echo "fuzz-build failed" >>"$results/fuzz.count"; return; }
	local targets=() f t n secs running=0
	for f in build-fuzz/tests/fuzz/fuzz_*; do
		[ -f "$f" ] && [ -x "$f" ] && targets+=("${f##*/}")
	done
	n=${#targets[@]}
	if [ "$n" -eq 0 ]; then
		echo "no fuzz targets in build-fuzz/tests/fuzz/"
		echo "fuzz-targets failed" >>"$results/fuzz.count"
		status=1
		return
	fi
	# about 2 min of fuzzing in all: 30 s each while there are few targets
	secs=$((120 / ((n + 1) / 2)))
	[ $secs -gt 30 ] && secs=30
	[ $secs -lt 10 ] && secs=10
	secs=${FUZZ_SMOKE_SECS:-$secs}
	echo "=== fuzz smoke: $n targets, ${secs}s each, two at a time"
	for t in "${targets[@]}"; do
		if [ $running -ge 2 ]; then
			wait -n
			running=$((running - 1))
		fi
		rm -f "build-fuzz/fuzz-smoke-$t.log"
		{
			fuzz_smoke_one "$t" "$secs" >"$results/fuzz-$t.out" 2>&1
			echo $? >"$results/fuzz-$t.rc"
		} &
		running=$((running + 1))
	done
	wait
	for t in "${targets[@]}"; do
		sed 's/^/  /' "$results/fuzz-$t.out"
		if [ "$(cat "$results/fuzz-$t.rc" 2>/dev/null)" = 0 ]; then
			echo "fuzz-$t passed" >>"$results/fuzz.count"
			continue
		fi
		status=1
		echo "fuzz-$t failed" >>"$results/fuzz.count"
		local log=build-fuzz/fuzz-smoke-$t.log art
		[ -f "$log" ] || continue
		echo "--- $t: $log"
		grep -m1 -A40 -E "==ERROR|runtime error|deadly signal|ERROR: libFuzzer|^==[0-9]+== ERROR" "$log" |
			sed 's/^/    /'
		art=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
		if [ -n "$art" ] && [ -f "$art" ]; then
			echo "--- reproducer $art, $(stat -c %s "$art") bytes (replay: build-fuzz/tests/fuzz/$t $art);"
			echo "    base64 (first 64 KiB):"
			head -c 65536 "$art" | base64 | sed 's/^/    /'
		fi
	done
	rmdir tests/fuzz/crashes 2>/dev/null || true
}

# The units under a real systemd: the build installed as docs/runbook.md says
# (meson setup --prefix=/usr, meson install --destdir) into an overlay on a
# cached minimal Debian 12 tree (scripts/systemd-tree.sh, made once per
# package list), booted with systemd-nspawn -b, no network.  A container that
# does not boot fails the stage.  Whatever the run leaves (the container, its
# overlay, loop devices) is undone here even when pytest was killed.
systemd_cleanup() {
	[ -n "$systemd_run" ] || return 0
	"$PY" -c 'import sys; sys.path.insert(0, sys.argv[1]); import machine
errs = machine.cleanup_all(sys.argv[2])
print(*errs, sep="\n"); sys.exit(1 if errs else 0)' "$top/tests/systemd" "$systemd_run" ||
		{ echo "systemd: cleanup left something behind: $systemd_run kept"; systemd_run=; return 1; }
	rm -rf "$systemd_run"
	systemd_run=
}
run_systemd() {
	build_tree systemd build-systemd "" --prefix=/usr "${werror[@]}" ||
		{ echo "systemd-build failed" >>"$results/systemd.count"; return; }
	echo "=== systemd: Debian 12 tree"
	local tree rc=0
	if ! tree=$(scripts/systemd-tree.sh); then
		echo "systemd-tree failed" >>"$results/systemd.count"
		status=1
		return
	fi
	systemd_run=$(mktemp -d /var/tmp/stellafs-systemd.XXXXXX)
	echo "=== systemd: pytest tests/systemd (container on $tree)"
	STELLA_SYSTEMD_TREE=$tree STELLA_SYSTEMD_RUN=$systemd_run STELLA_SYSTEMD_BUILD="$top/build-systemd" \
		STELLA_BUILD="$top/build-systemd" STELLAKIT="$top/build-systemd/tools/stellakit" \
		STELLAFS="$top/build-systemd/fs/stellafs" timeout -k 30 600 "$PY" -m pytest -q -p no:cacheprovider \
		--junitxml="$results/systemd-pytest.xml" tests/systemd/ || rc=$?
	[ $rc -ne 0 ] && status=1
	[ $rc -ge 124 ] && echo "systemd-timeout failed" >>"$results/systemd.count"
	systemd_cleanup || { status=1; echo "systemd-cleanup failed" >>"$results/systemd.count"; }
}

PYTEST_ARGS=("$@")
# A sanitizer report must fail the run, with an exit code no program of ours
# uses, and print a stack.
# The daemon's stderr is /dev/null once it detaches, so reports also go to
# files, and any report fails the run below.
asan_dir=$(mktemp -d /tmp/stella-asan.XXXXXX)
export ASAN_OPTIONS=exitcode=86:detect_leaks=1:abort_on_error=0:log_path=$asan_dir/asan
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:exitcode=87:log_path=$asan_dir/ubsan
werror=()
[ "${CI:-}" = "true" ] && werror=(-Dwerror=true)
stage release && run_suite release build "${werror[@]}"
stage asan && run_suite sanitizers build-asan -Dbuildtype=debugoptimized -Db_sanitize=address,undefined \
	-Db_lundef=false "${werror[@]}"

if ls "$asan_dir"/* >/dev/null 2>&1; then
	echo "=== sanitizer reports"
	cat "$asan_dir"/*
	status=1
	echo "sanitizer: 0 passed, 1 failed" >"$results/sanitizer-reports.txt"
fi
rm -rf "$asan_dir"

stage tsan && run_tsan
stage fuzz && run_fuzz_smoke
stage systemd && run_systemd

# What each stage must leave: a unit log and a pytest report per full suite,
# the TSan run's and the systemd stage's pytest reports (a missing one is a
# failure below).
expected=0
stage release && expected=$((expected + 2))
stage asan && expected=$((expected + 2))
stage tsan && expected=$((expected + 3)) # its pytest runs, its unit tests
stage systemd && expected=$((expected + 1))

# One closing line over everything that ran: meson's unit tests (their "Ok:"
# and "Fail:" lines), pytest's junit reports, and *.count files (one line per
# test, ending "passed" or "failed": the fuzz targets, TSan's reports).
"$PY" - "$results" "$expected" <<'PYEOF'
import glob, re, sys, xml.etree.ElementTree as ET
d = sys.argv[1]
passed = failed = skipped = 0
for log in glob.glob(f"{d}/*-unit.log"):
    text = open(log).read()
    ok = re.search(r"^Ok:\s+(\d+)", text, re.M)
    bad = [int(x) for x in re.findall(r"^(?:Fail|Timeout|Unexpected Pass):\s+(\d+)", text, re.M)]
    passed += int(ok.group(1)) if ok else 0
    failed += sum(bad) if ok else 1
for xml in glob.glob(f"{d}/*-pytest.xml"):
    for s in ET.parse(xml).getroot().iter("testsuite"):
        t, f, e, sk = (int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        passed += t - f - e - sk; failed += f + e; skipped += sk
for rep in glob.glob(f"{d}/sanitizer-reports.txt"):
    failed += 1
for cnt in glob.glob(f"{d}/*.count"):
    for line in open(cnt):
        if line.split():
            if line.split()[-1] == "passed":
                passed += 1
            else:
                failed += 1
expected = int(sys.argv[2])
found = len(glob.glob(f"{d}/*-unit.log")) + len(glob.glob(f"{d}/*-pytest.xml"))
failed += max(0, expected - found)
print(f"total: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
sys.exit(1 if failed or passed == 0 else 0)
PYEOF
rc=$?
[ $status -ne 0 ] && rc=1
exit $rc
