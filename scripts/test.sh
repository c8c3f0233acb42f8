#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs what is
# missing, builds (optimised, warnings are errors), runs the C unit tests and
# the pytest suite, then does it all again under AddressSanitizer +
# UndefinedBehaviorSanitizer.  Ends with one line: "total: N passed, N failed".
#
#   scripts/test.sh [PYTEST_ARGS...]
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

scripts/deps.sh || { echo "total: 0 passed, 1 failed"; exit 1; }

# pytest from Debian (python3-pytest), whatever python3 is first on PATH.
PY=/usr/bin/python3
results=$(mktemp -d)
trap 'rm -rf "$results"' EXIT
status=0

run_suite() { # NAME BUILD_DIR MESON_OPTIONS...
	local name=$1 dir=$2
	shift 2
	echo "=== $name: build ($dir)"
	if [ ! -f "$dir/build.ninja" ]; then
		meson setup "$dir" "$@" >"$results/$name-setup.log" 2>&1 ||
			{ cat "$results/$name-setup.log"; status=1; return; }
	else
		meson configure "$dir" "$@" >/dev/null 2>&1
	fi
	meson compile -C "$dir" >"$results/$name-build.log" 2>&1 ||
		{ cat "$results/$name-build.log"; status=1; return; }
	if grep -q "warning:" "$results/$name-build.log"; then
		grep "warning:" "$results/$name-build.log"; status=1
	fi
	echo "=== $name: unit tests"
	meson test -C "$dir" --print-errorlogs 2>&1 | tee "$results/$name-unit.log" | grep -E "^ *[0-9]+/[0-9]+ |^(Ok|Fail|Timeout):"
	echo "=== $name: pytest"
	STELLA_BUILD="$top/$dir" STELLAKIT="$top/$dir/tools/stellakit" STELLAFS="$top/$dir/fs/stellafs" "$PY" -m pytest -q -p no:cacheprovider \
		--junitxml="$results/$name-pytest.xml" "${PYTEST_ARGS[@]}" tests/ || status=1
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
run_suite release build "${werror[@]}"
run_suite sanitizers build-asan -Dbuildtype=debugoptimized -Db_sanitize=address,undefined \
	-Db_lundef=false "${werror[@]}"

if ls "$asan_dir"/* >/dev/null 2>&1; then
	echo "=== sanitizer reports"
	cat "$asan_dir"/*
	status=1
	echo "sanitizer: 0 passed, 1 failed" >"$results/sanitizer-reports.txt"
fi
rm -rf "$asan_dir"

# One closing line over everything that ran: meson's unit tests (their "Ok:"
# and "Fail:" lines) and pytest's junit reports.
"$PY" - "$results" <<'PYEOF'
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
expected = 4  # two setups x (unit log + pytest report)
found = len(glob.glob(f"{d}/*-unit.log")) + len(glob.glob(f"{d}/*-pytest.xml"))
failed += max(0, expected - found)
print(f"total: {passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
sys.exit(1 if failed or passed == 0 else 0)
PYEOF
rc=$?
[ $status -ne 0 ] && rc=1
exit $rc
