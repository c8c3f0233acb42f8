#!/usr/bin/env bash
# Benchmark: kits on a site mirror (docs/mirrors.md), on loopback, side by side
# in one run against references measured on the same data and server:
#   1. bytes nginx served before the mount was ready, against the kit's size
#   2. a cold sequential read of a SIZE MiB file through the mount, against
#      `curl -o /dev/null` of the whole kit from the same nginx (goal >= 0.8x)
#   3. the first 4 KiB read at a random offset deep in that file right after
#      a mount (goal <= 10 ms; the median of three fresh mounts)
#   4. N mounts reading the same kit through one squid: bytes nginx served,
#      against the kit's size (goal <= 1.5x)
# Prints one table "measurement | stellafs | reference | ratio | goal".
# Not a test: no assertion; the exit status says only whether the run worked.
#
#   tests/bench/remote.sh [--size MIB] [--squid-size MIB] [--mounts N]
#     default: a 1024 MiB file; 256 MiB for the squid part; 8 mounts
# STELLAFS=..., STELLAKIT=... override the binaries (default build/...).
# Needs root (mounts).  nginx and squid from tests/serverlib.py, on 127.0.0.1;
# everything lives under /var/tmp and is removed, and unmounted, on exit.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")/../.." && pwd)
export STELLAFS=${STELLAFS:-$here/build/fs/stellafs}
export STELLAKIT=${STELLAKIT:-$here/build/tools/stellakit}
size=1024 squid_size=256 mounts=8
while [ $# -gt 0 ]; do
	case $1 in
	--size) size=$2; shift ;;
	--squid-size) squid_size=$2; shift ;;
	--mounts) mounts=$2; shift ;;
	-h|--help) sed -n '2,18p' "$0"; exit 0 ;;
	*) echo "usage: $0 [--size MIB] [--squid-size MIB] [--mounts N]" >&2; exit 2 ;;
	esac
	shift
done
[ "$(id -u)" -eq 0 ] || { echo "remote.sh: needs root (mounts)" >&2; exit 2; }
for b in "$STELLAFS" "$STELLAKIT"; do [ -x "$b" ] || { echo "remote.sh: $b: not built" >&2; exit 2; }; done
work=$(mktemp -d /var/tmp/stella-bench-remote.XXXXXX)
cleanup() {
	set +e
	local m
	for m in "$work"/mnt*; do
		mountpoint -q "$m" 2>/dev/null || continue
		umount "$m" 2>/dev/null || umount -l "$m"
	done
	sleep 0.2
	rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
chmod 755 "$work"

PYTHONPATH="$here/tests" python3 - "$work" "$size" "$squid_size" "$mounts" <<'EOF'
import os, random, subprocess, sys, threading, time
from pathlib import Path
import kitlib, serverlib

work, size, squid_size, nmounts = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
FS = os.environ["STELLAFS"]
MiB = 1 << 20
NOW = "now=2025-01-16T00:00:00Z"
rows = []

def log(*a):
    print(time.strftime("[%H:%M:%S]"), *a, file=sys.stderr, flush=True)

def make_kit(name, mib):
    src = work / f"src-{name}"
    (src / "data").mkdir(parents=True)
    with open(src / "data" / "big.bin", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))
    (src / "small.txt").write_text("small\n")
    kits = work / "kits"
    kits.mkdir(exist_ok=True)
    os.chmod(kits, 0o755)
    cp = kitlib.pack(src, kits / f"{name}.tar", [key], compress="none")
    assert cp.returncode == 0, cp.stderr
    return kits / f"{name}.tar", src

n_mnt = 0
def mount(url, *opts, cache=None):
    global n_mnt
    n_mnt += 1
    mnt = work / f"mnt{n_mnt}"
    mnt.mkdir()
    cache = cache or work / f"cache{n_mnt}"
    cache.mkdir(mode=0o700, exist_ok=True)
    o = ",".join([f"trust={key.pub}", f"cache={cache}", NOW, *opts])
    t0 = time.monotonic()
    cp = subprocess.run([FS, "-o", o, url, str(mnt)], capture_output=True, text=True, timeout=1800)
    assert cp.returncode == 0, cp.stderr
    return mnt, time.monotonic() - t0

def umount(mnt):
    subprocess.run(["umount", str(mnt)], check=True, timeout=60)

def row(what, ours, ref, ratio, goal):
    rows.append((what, ours, ref, ratio, goal))

key = kitlib.gen_key(str(work / "key"), "ed25519")
log(f"packing a kit of one {size} MiB file")
kit, src = make_kit("big", size)
ksize = kit.stat().st_size

with serverlib.Nginx(work / "nginx", root=kit.parent) as ng:
    url = ng.url(kit.name)
    # reference: curl of the whole kit from the same nginx (after one warm-up, so that
    # both read nginx's page cache)
    subprocess.run(["curl", "-s", "-o", "/dev/null", url], check=True)
    t0 = time.monotonic()
    subprocess.run(["curl", "-s", "-o", "/dev/null", url], check=True)
    curl_s = time.monotonic() - t0
    curl_mbs = ksize / MiB / curl_s

    # 1. bytes before ready (a first mount: kit format 1.0 builds its index from a full
    # pass; a detached mount opens the kit twice, before and after the fork)
    before = ng.bytes_served()
    mnt, secs = mount(url, "cache_size=1M")
    first = ng.bytes_served() - before
    umount(mnt)
    row("first mount: bytes served before ready", f"{first / MiB:.1f} MiB", f"kit {ksize / MiB:.1f} MiB",
        f"{first / ksize:.3f}x", "head only")
    # a remount (the index in cache=, kit format 1.0): what a mount costs after the first
    cache = work / "cache-re"
    mnt, _ = mount(url, "cache_size=1M", cache=cache)
    umount(mnt)
    before = ng.bytes_served()
    mnt, secs = mount(url, "cache_size=1M", cache=cache)
    re_b = ng.bytes_served() - before
    row("remount: bytes served before ready", f"{re_b / MiB:.2f} MiB", f"kit {ksize / MiB:.1f} MiB",
        f"{re_b / ksize:.4f}x", "head only")

    # 3. first 4 KiB at a random deep offset right after the mount (open + pread), on
    # three fresh mounts (the same cache=: the head from disk), at three offsets: a
    # single figure is at the mercy of the scheduler on a busy machine
    rnd = random.Random(7)
    firsts = []
    for i in range(3):
        if i:
            mnt, _ = mount(url, "cache_size=1M", cache=cache)
        off = (rnd.randrange(size // 2, size) * MiB) + rnd.randrange(0, 256) * 4096
        t0 = time.monotonic()
        fd = os.open(mnt / "current" / "data" / "big.bin", os.O_RDONLY)
        os.pread(fd, 4096, off)
        firsts.append((time.monotonic() - t0) * 1000)
        os.close(fd)
        umount(mnt)
    firsts.sort()
    row("first 4 KiB at a deep random offset after mount", f"{firsts[1]:.1f} ms",
        f"min {firsts[0]:.1f}, max {firsts[2]:.1f}", "-", "<= 10 ms (median of 3)")

    # 2. cold sequential read through a fresh mount (cache_size=1M: from the network)
    mnt, _ = mount(url, "cache_size=1M", cache=cache)
    before = ng.bytes_served()
    t0 = time.monotonic()
    with open(mnt / "current" / "data" / "big.bin", "rb", buffering=0) as f:
        while f.read(4 * MiB):
            pass
    read_s = time.monotonic() - t0
    read_b = ng.bytes_served() - before
    umount(mnt)
    mbs = size / read_s
    row(f"cold sequential read, {size} MiB file", f"{mbs:.0f} MB/s", f"curl {curl_mbs:.0f} MB/s",
        f"{mbs / curl_mbs:.2f}x", ">= 0.8x")
    row("  bytes fetched for it", f"{read_b / MiB:.1f} MiB", f"file {size} MiB", f"{read_b / MiB / size:.2f}x", "~1x")

# 4. N mounts through one squid
log(f"packing a kit of one {squid_size} MiB file for {nmounts} mounts through squid")
kit2, _ = make_kit("shared", squid_size)
k2 = kit2.stat().st_size
with serverlib.Nginx(work / "nginx2", root=kit2.parent) as ng, serverlib.Squid(work / "squid") as sq:
    url = ng.url(kit2.name)
    mnts = []
    t0 = time.monotonic()
    for i in range(nmounts):
        m, _ = mount(url, "cache_size=1M", f"proxy={sq.proxy}", "timeout=60")
        mnts.append(m)
    errs = []
    def readit(m):
        try:
            with open(m / "current" / "data" / "big.bin", "rb", buffering=0) as f:
                while f.read(4 * MiB):
                    pass
        except OSError as e:
            errs.append(e)
    ths = [threading.Thread(target=readit, args=(m,)) for m in mnts]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    secs = time.monotonic() - t0
    served = ng.bytes_served(kit2.name)
    for m in mnts:
        umount(m)
    row(f"{nmounts} mounts + full reads through one squid ({squid_size} MiB kit)",
        f"nginx {served / MiB:.1f} MiB", f"kit {k2 / MiB:.1f} MiB", f"{served / k2:.2f}x",
        "<= 1.5x" + (f" ({len(errs)} read errors)" if errs else ""))
    row("  wall time for them", f"{secs:.1f} s", "-", "-", "-")

w = [max(len(str(r[i])) for r in rows + [("measurement", "stellafs", "reference", "ratio", "goal")]) for i in range(5)]
hdr = ("measurement", "stellafs", "reference", "ratio", "goal")
print(" | ".join(h.ljust(w[i]) for i, h in enumerate(hdr)))
print("-+-".join("-" * x for x in w))
for r in rows:
    print(" | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)))
EOF
