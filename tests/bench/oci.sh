#!/usr/bin/env bash
# Benchmark: kits in an OCI registry (docs/mirrors.md, "OCI registries"),
# against references measured in the same run on the same kit:
#   1. `stellakit push` of the kit to an empty docker-registry (CNCF
#      distribution), against `skopeo copy` of the same artifact from an OCI
#      layout directory to another empty instance;
#   2. a cold `stellakit verify oci://...` from that registry, against a cold
#      `stellakit verify http://...` of the same kit from nginx;
#   3. a mount of `oci://...` and a cold sequential read of the kit's big
#      file, against the same from nginx;
#   4. the servers alone: curl asking the same 1 MiB ranges of the registry's
#      blob and of nginx's file (what the ratios above are made of).
# Prints one table "measurement | registry | reference | ratio" (registry: stellakit
# push, or the oci:// read); not a test: no
# assertion, the exit status says only whether the run worked.
#
#   tests/bench/oci.sh [--size MIB] [--runs N]     (default: 1024 MiB, 1 run)
# STELLAKIT=..., STELLAFS=... override the binaries (default build/...).
# Needs root (drop_caches, mounts).  Servers on 127.0.0.1 only, stopped by PID;
# data under /var/tmp, removed on exit, failure included.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")/../.." && pwd)
sk=${STELLAKIT:-$here/build/tools/stellakit}
sfs=${STELLAFS:-$here/build/fs/stellafs}
size=1024 runs=1
while [ $# -gt 0 ]; do
	case $1 in
	--size) size=$2; shift ;;
	--runs) runs=$2; shift ;;
	-h|--help) sed -n '2,17p' "$0"; exit 0 ;;
	*) echo "usage: $0 [--size MIB] [--runs N]" >&2; exit 2 ;;
	esac
	shift
done
[ "$(id -u)" -eq 0 ] || { echo "oci.sh: needs root (drop_caches, mounts)" >&2; exit 2; }
for b in "$sk" "$sfs" /usr/bin/docker-registry /usr/bin/skopeo /usr/sbin/nginx; do
	[ -x "$b" ] || { echo "oci.sh: $b: missing" >&2; exit 2; }
done
work=$(mktemp -d /var/tmp/stella-bench-oci.XXXXXX)
export STELLAKIT=$sk STELLAFS=$sfs BENCH_WORK=$work BENCH_SIZE=$size BENCH_RUNS=$runs
cleanup() {
	set +e
	local m
	for m in "$work"/mnt-*; do
		mountpoint -q "$m" 2>/dev/null && { umount "$m" 2>/dev/null || umount -l "$m"; }
	done
	rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PYTHONPATH=$here/tests python3 - <<'EOF'
import os, statistics, subprocess, sys, time
from pathlib import Path
import ocilib, serverlib

work, size, runs = Path(os.environ["BENCH_WORK"]), int(os.environ["BENCH_SIZE"]), int(os.environ["BENCH_RUNS"])
sk, sfs = os.environ["STELLAKIT"], os.environ["STELLAFS"]
env = dict(os.environ, HOME=str(work), REGISTRY_AUTH_FILE=str(work / "none.json"))
rows = []

def log(*a):
    print(f"[{time.strftime('%T')}]", *a, file=sys.stderr, flush=True)

def sh(*cmd, **kw):
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, env=env, **kw)

def drop():
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")

def timed(*cmd, cold=False):
    if cold:
        drop()
    t = time.monotonic()
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL, env=env)
    return time.monotonic() - t

def median(f):
    return statistics.median(f() for _ in range(runs))

def row(what, mine, ref, unit="s"):
    rows.append((what, mine, ref, mine / ref if ref else float("nan"), unit))

# the kit: one big random file and a small one, uncompressed
src = work / "src"
(src / "feeds").mkdir(parents=True)
log(f"making a {size} MiB kit")
with open(src / "feeds/big.bin", "wb") as f:
    for _ in range(size):
        f.write(os.urandom(1 << 20))
(src / "feeds/v.txt").write_text("bench\n")
sh(sk, "keygen", work / "k")
kitdir = work / "www"
kitdir.mkdir(mode=0o755)
kit = kitdir / "kit.tar"
sh(sk, "pack", "-k", work / "k.key", "--kit-id", "bench", "--version", "1", "--sequence", "1",
   "--expires-in", "30", "--compress", "none", src, kit)
os.chmod(kit, 0o644)
ksize = kit.stat().st_size

# 1. push vs skopeo copy, each into an empty registry
n = [0]
def fresh_registry():
    n[0] += 1
    return ocilib.Registry(work / f"reg{n[0]}").start()

def push_once():
    r = fresh_registry()
    try:
        drop()
        return timed(sk, "push", kit, r.ref("bench/kit:1"))
    finally:
        r.stop()

log("stellakit push")
t_push = median(push_once)
r = fresh_registry()
sh(sk, "push", kit, r.ref("bench/kit:1"))
layout = work / "layout"
sh("skopeo", "copy", "--src-tls-verify=false", f"docker://{r.host}/bench/kit:1", f"oci:{layout}:k")
r.stop()

def skopeo_once():
    r = fresh_registry()
    try:
        return timed("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:k",
                     f"docker://{r.host}/bench/kit:1", cold=True)
    finally:
        r.stop()

log("skopeo copy")
t_skopeo = median(skopeo_once)
row(f"push {ksize >> 20} MiB kit (s)", t_push, t_skopeo)

# 2. and 3.: one registry holding the kit, nginx serving the same file
reg = fresh_registry()
sh(sk, "push", kit, reg.ref("bench/kit:1"))
ng = serverlib.Nginx(work / "ng", root=kitdir).start()
try:
    oci, url = reg.ref("bench/kit:1"), ng.url("kit.tar")
    pub = work / "k.pub"
    log("verify oci:// vs http://")
    t_vo = median(lambda: timed(sk, "verify", "-t", pub, oci, cold=True))
    t_vh = median(lambda: timed(sk, "verify", "-t", pub, url, cold=True))
    row("cold verify (s)", t_vo, t_vh)

    # the servers alone: curl asking the same aligned 1 MiB ranges in order
    # over one connection, what remote.c asks (explains the rows above)
    import hashlib
    digest = "sha256:" + hashlib.sha256(kit.read_bytes()).hexdigest()
    def curl_ranges(u):
        cfg = work / "ranges.cfg"
        with open(cfg, "w") as f:
            for off in range(0, ksize, 1 << 20):
                f.write(f'url = "{u}"\nrange = {off}-{min(ksize, off + (1 << 20)) - 1}\noutput = /dev/null\n')
        return timed("curl", "-s", "-K", cfg, cold=True)
    row("curl, 1 MiB ranges in order (s)",
        median(lambda: curl_ranges(f"http://{reg.host}/v2/bench/kit/blobs/{digest}")),
        median(lambda: curl_ranges(url)))

    def mount_read(source, tag):
        mnt, cache = work / f"mnt-{tag}", work / f"cache-{tag}"
        mnt.mkdir(exist_ok=True)
        cache.mkdir(exist_ok=True)
        t0 = time.monotonic()
        sh(sfs, "-o", f"trust={pub},cache={cache},cache_size=8G", source, mnt)
        t_mount = time.monotonic() - t0
        try:
            drop()
            t_read = timed("cat", mnt / "current/feeds/big.bin", cold=False)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        subprocess.run(["rm", "-rf", str(cache)], check=True)
        return t_mount, t_read

    log("mount and cold read: oci:// vs http://")
    mo = [mount_read(oci, f"oci{i}") for i in range(runs)]
    mh = [mount_read(url, f"http{i}") for i in range(runs)]
    row("mount (s)", statistics.median(m for m, _ in mo), statistics.median(m for m, _ in mh))
    row("cold sequential read (s)", statistics.median(r for _, r in mo), statistics.median(r for _, r in mh))
finally:
    ng.stop()
    reg.stop()

print(f"{'measurement':32} | {'registry':>9} | {'reference':>9} | {'ratio':>6}")
for what, mine, ref, ratio, _ in rows:
    print(f"{what:32} | {mine:9.2f} | {ref:9.2f} | {ratio:6.2f}")
mib = ksize / (1 << 20)
print(f"(kit {mib:.0f} MiB; push {mib / rows[0][1]:.0f} MiB/s, skopeo {mib / rows[0][2]:.0f} MiB/s; "
      f"references: push vs skopeo copy from an OCI layout, the rest vs the same kit over http from nginx)")
EOF
