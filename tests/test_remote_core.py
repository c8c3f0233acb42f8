"""Kits on site mirrors, through `stellakit verify URL` and `stellakit import URL`
(docs/mirrors.md, stellakit(1)): real nginx (http, https with a CA made here, basic
auth), and serverlib.FaultServer for every way a mirror fails.  Each failure gives exit 1
(unreachable, refused) or 4 (bad bytes) with one line, or fails over to a good mirror;
never a kit accepted from wrong bytes.  The mount-level behaviour is test_remote_mount*.py's.
"""

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import kitlib
import serverlib
from kitlib import assert_fail, assert_ok


@pytest.fixture
def www(tmp_path, packed):
    """A directory of kits (none, gzip, zstd) for nginx to serve: name -> PackedKit."""
    d = tmp_path / "www"
    d.mkdir()
    kits = {}
    for comp, name in (("none", "kit.tar"), ("gzip", "kit.tar.gz"), ("zstd", "kit.tar.zst")):
        pk = packed(comp)
        shutil.copy(pk.path, d / name)
        kits[name] = pk
    return d, kits


@pytest.fixture
def nginx(tmp_path, www):
    with serverlib.Nginx(tmp_path / "nginx", www[0]) as ng:
        yield ng


def verify(url, keys, *extra, timeout=120):
    return kitlib.run("verify", "-t", keys["ed25519"].pub, *extra, url, timeout=timeout)


def fault(pk):
    return serverlib.FaultServer({"/kit.tar": pk.path.read_bytes()})


# --------------------------------------------------------------------------- nginx

@pytest.mark.parametrize("name", ["kit.tar", "kit.tar.gz", "kit.tar.zst"])
def test_verify_url_over_http(nginx, www, keys, name):
    cp = verify(nginx.url(name), keys)
    assert_ok(cp)
    assert "valid" in cp.stdout and cp.stderr == ""
    # a local verify of the same file says the same, but for the name
    local = verify(str(www[0] / name), keys)
    assert cp.stdout.replace(nginx.url(name), "K") == local.stdout.replace(str(www[0] / name), "K")
    # every request was a range request answered 206, and the kit came about once
    log = [e for e in nginx.log() if e.path == "/" + name]
    assert log and all(e.status == 206 and e.range.startswith("bytes=") for e in log)
    size = (www[0] / name).stat().st_size
    assert size <= sum(e.bytes for e in log) <= size + 2 * 1024 * 1024


def test_verify_url_over_https_with_cacert(tmp_path, www, keys):
    tls = serverlib.make_ca(tmp_path / "ca")
    with serverlib.Nginx(tmp_path / "ngs", www[0], tls=tls) as ng:
        assert_ok(verify(ng.url("kit.tar.zst"), keys, "--cacert", tls.ca))
        # without the CA the certificate is not trusted: runtime failure, one line
        cp = verify(ng.url("kit.tar.zst"), keys)
        assert_fail(cp, 1, ("certificate", "ssl", "tls"))


def test_verify_url_with_basic_auth(tmp_path, www, keys):
    with serverlib.Nginx(tmp_path / "nga", www[0], basic=("scan", "s3cret")) as ng:
        assert_ok(verify(ng.url("kit.tar", userinfo="scan:s3cret"), keys))
        assert_fail(verify(ng.url("kit.tar"), keys), 1, ("401", "refused"))
        assert_fail(verify(ng.url("kit.tar", userinfo="scan:wrong"), keys), 1, ("401", "refused"))


def test_passwords_in_urls_are_never_shown(tmp_path, www, keys):
    """user:password@ in a source or mirror URL goes to the server, never into a message:
    every URL shown loses its userinfo."""
    port = serverlib.free_port()
    with serverlib.Nginx(tmp_path / "ngp", www[0], basic=("scan", "s3cret")) as ng:
        cp = verify(f"http://scan:hunter2@127.0.0.1:{port}/kit.tar", keys,
                    "--mirror", ng.url("kit.tar", userinfo="scan:wrongpw"))
        assert_fail(cp, 1, "no mirror answers")
        assert "hunter2" not in cp.stderr + cp.stdout, cp.stderr
        assert "wrongpw" not in cp.stderr + cp.stdout, cp.stderr
        assert f"127.0.0.1:{port}/kit.tar" in cp.stderr, cp.stderr


def test_verify_url_netrc(tmp_path, www, keys):
    with serverlib.Nginx(tmp_path / "ngn", www[0], basic=("scan", "s3cret")) as ng:
        home = tmp_path / "home"
        home.mkdir()
        (home / ".netrc").write_text(f"machine 127.0.0.1 login scan password s3cret\n")
        (home / ".netrc").chmod(0o600)
        cp = kitlib.run("verify", "-t", keys["ed25519"].pub, ng.url("kit.tar"), env={"HOME": str(home)})
        assert_ok(cp)


def test_import_url(tmp_path, nginx, www, keys):
    store = tmp_path / "store"
    cp = kitlib.run("import", "-s", store, "-t", keys["ed25519"].pub, nginx.url("kit.tar.gz"))
    assert_ok(cp)
    assert "imported" in cp.stdout
    # the same kit, local, is then not newer: the store holds what the URL gave
    local = kitlib.run("import", "-s", store, "-t", keys["ed25519"].pub, www[1]["kit.tar.gz"].path)
    assert_fail(local, 7, ("sequence", "newer", "stale"))


def test_unreachable_and_missing(nginx, keys):
    port = serverlib.free_port()
    cp = verify(f"http://127.0.0.1:{port}/kit.tar", keys)
    assert_fail(cp, 1, ("connect", "refused", "failed"))
    assert_fail(verify(nginx.url("nothere.tar"), keys), 1, "404")


def test_oci_unreachable(keys):
    # a registry nobody answers for: a runtime failure naming it, one line
    cp = verify("oci://127.0.0.1:1/repo:tag", keys)
    assert_fail(cp, 1, "127.0.0.1:1")


def test_without_libcurl_local_kits_work_and_urls_fail_in_one_line(tmp_path, packed, keys):
    """libcurl is loaded only when a URL needs it (core/curlapi.h): in a mount namespace
    where its file is empty, a local kit still verifies, imports and mounts, and every
    use of a URL fails with exit 1 and one line naming libcurl."""
    lib = subprocess.run(["sh", "-c", "ldconfig -p | sed -n 's/^.*libcurl\\.so\\.4 (libc6,x86-64) => //p'"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert lib, "libcurl.so.4 not found by ldconfig"
    real = os.path.realpath(lib[0])
    pk = packed("zstd")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    pub = keys["ed25519"].pub
    script = f"""
set -u
mount --bind /dev/null {real} || exit 90
run() {{ "$@" >"$OUT/$n.out" 2>"$OUT/$n.err"; echo $? >"$OUT/$n.rc"; n=$((n + 1)); }}
n=0
run {kitlib.BIN} verify -t {pub} {pk.path}
run {kitlib.BIN} import -s {tmp_path}/store -t {pub} {pk.path}
run {kitlib.FS_BIN} -o trust={pub},cache={tmp_path}/cache {pk.path} {mnt}
run sh -c 'cat {mnt}/status | head -1'
umount {mnt}
run {kitlib.BIN} verify -t {pub} http://127.0.0.1:9/kit.tar
run {kitlib.BIN} verify -t {pub} oci://127.0.0.1:9/r/kit:1
run {kitlib.FS_BIN} -o trust={pub} http://127.0.0.1:9/kit.tar {mnt}
"""
    out = tmp_path / "out"
    out.mkdir()
    cp = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                        env=dict(os.environ, OUT=str(out)), capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    res = [((out / f"{i}.rc").read_text().strip(), (out / f"{i}.out").read_text(), (out / f"{i}.err").read_text())
           for i in range(7)]
    for rc, so, se in res[:4]:
        assert rc == "0" and se == "", (rc, se)
    assert "valid" in res[0][1] and "imported" in res[1][1]
    assert res[3][1].strip(), "status of the mount made without libcurl is empty"
    for rc, so, se in res[4:]:
        assert rc == "1", (rc, se)
        assert len(se.strip().splitlines()) == 1 and "cannot load libcurl" in se, se
    assert not os.path.ismount(mnt)


def test_mirror_needs_url(packed, keys):
    cp = verify(str(packed("none").path), keys, "--mirror", "http://127.0.0.1:1/kit.tar")
    assert_fail(cp, 2, "mirror")


def test_oci_mirror_only_beside_oci(keys):
    # a plain URL has no registry to resolve an oci:// mirror through: refused, one line
    cp = verify("http://127.0.0.1:1/kit.tar", keys, "--mirror", "oci://127.0.0.1:1/r/k:1")
    assert_fail(cp, 2, "mirror", "only beside an oci")


# --------------------------------------------------------------------------- faults, one mirror

@pytest.mark.parametrize("fault_name,setting,words", [
    ("ignore_range", True, ("200", "range")),
    ("truncate", 1000, ("short", "partial", "transfer")),
    ("reset", True, ("reset", "recv", "empty", "connection", "failure")),
    ("status", 503, "503"),
    ("redirect_loop", True, "redirect"),
])
def test_faulty_mirror_alone_fails_in_one_line(packed, keys, fault_name, setting, words):
    pk = packed("none")
    with fault(pk) as fs:
        setattr(fs, fault_name, setting)
        cp = verify(fs.url("kit.tar"), keys, "--timeout", "10")
        assert_fail(cp, 1, words)


def test_mid_read_fault_fails_in_one_line(packed, keys):
    # the first request (the kit's head) is answered, every later one is a 503
    pk = packed("none")
    with fault(pk) as fs:
        fs.status = 503
        fs.fail_after = 1
        cp = verify(fs.url("kit.tar"), keys, "--timeout", "5")
        assert_fail(cp, 1, "no mirror could serve")
        assert fs.requests[0].status == 206 and fs.count >= 2


def test_hanging_mirror_times_out(packed, keys):
    pk = packed("none")
    with fault(pk) as fs:
        fs.hang = 60
        t0 = time.monotonic()
        cp = verify(fs.url("kit.tar"), keys, "--timeout", "2", timeout=30)
        assert_fail(cp, 1, ("timed out", "timeout", "time"))
        assert time.monotonic() - t0 < 10
        # and in the middle of the kit: the read fails in time too
        fs.clear_log()
        fs.fail_after = 1
        t0 = time.monotonic()
        cp = verify(fs.url("kit.tar"), keys, "--timeout", "2", timeout=30)
        assert_fail(cp, 1, "no mirror could serve")
        assert time.monotonic() - t0 < 10


def test_flipped_bytes_are_exit_4(packed, keys):
    pk = packed("none")
    data = pk.path.read_bytes()
    # inside the biggest file's data, well past the head
    off = len(data) // 2
    with fault(pk) as fs:
        fs.flip = (off, 16)
        cp = verify(fs.url("kit.tar"), keys)
        assert_fail(cp, 4, ("sha-256", "sha256", "digest", "mismatch", "differ"))


def test_redirect_followed_and_credentials_stay_home(packed, keys):
    pk = packed("none")
    with fault(pk) as target, fault(pk) as front:
        front.auth = ("scan", "s3cret")
        front.redirect = target.origin
        cp = verify(front.url("kit.tar", userinfo="scan:s3cret"), keys)
        assert_ok(cp)
        assert front.count >= 1 and target.count >= 1
        # the front saw the credentials, the host it redirected to never did
        assert any("Authorization" in r.headers for r in front.requests)
        assert not any("Authorization" in r.headers or "authorization" in r.headers
                       for r in target.requests)


# --------------------------------------------------------------------------- failover

@pytest.mark.parametrize("fault_name,setting", [
    ("ignore_range", True),
    ("truncate", 1000),
    ("reset", True),
    ("status", 503),
    ("redirect_loop", True),
    ("hang", 30),
])
def test_failover_to_a_good_mirror(packed, keys, nginx, fault_name, setting):
    pk = packed("zstd")
    with fault(pk) as bad:
        setattr(bad, fault_name, setting)
        cp = verify(bad.url("kit.tar"), keys, "--mirror", nginx.url("kit.tar.zst"), "--timeout", "6",
                    timeout=60)
        assert_ok(cp)
        assert cp.stderr == ""
        assert bad.count >= 1
        # the failing mirror is skipped for a while, not asked for every chunk (a
        # redirect loop is one attempt of up to 9 requests)
        assert bad.count <= (3 * 9 if fault_name == "redirect_loop" else 3)
        assert nginx.bytes_served("kit.tar.zst") >= pk.path.stat().st_size


def test_failover_when_first_mirror_is_down(packed, keys, nginx):
    port = serverlib.free_port()
    cp = verify(f"http://127.0.0.1:{port}/kit.tar", keys, "--mirror", nginx.url("kit.tar"))
    assert_ok(cp)


def test_mirror_of_another_size_is_refused(tmp_path, packed, keys, nginx):
    # a mirror whose file is not the same kit is not used for chunks of this one
    pk = packed("none")
    with serverlib.FaultServer({"/kit.tar": pk.path.read_bytes()}) as good, \
            serverlib.FaultServer({"/kit.tar": pk.path.read_bytes() + b"\0" * 512}) as other:
        good.fail_first = 0     # no faults
        cp = verify(good.url("kit.tar"), keys, "--mirror", other.url("kit.tar"))
        assert_ok(cp)


# --------------------------------------------------------------------------- remote.c itself
#
# tests/remote/remotectl drives core/remote.c directly: reads, concurrent reads, reports
# of bad bytes, binding to a key and the disk cache, with the fault server counting what
# was asked of it.

BUILD = Path(os.environ.get("STELLA_BUILD") or (kitlib.REPO / "build"))
REMOTECTL = BUILD / "tests" / "remote" / "remotectl"
MiB = 1024 * 1024


def remotectl(urls, *cmds, cache=None, cache_size=None, timeout_ms=None, wait=120, proxy="",
              bearer=None, opts=()):
    if not REMOTECTL.is_file():
        pytest.fail(f"{REMOTECTL} missing: build it with meson (or set STELLA_BUILD)", pytrace=False)
    args = [str(REMOTECTL)]
    if cache:
        args += ["--cache", str(cache)]
    if cache_size:
        args += ["--cache-size", str(cache_size)]
    if timeout_ms:
        args += ["--timeout", str(timeout_ms)]
    if bearer:
        args += ["--bearer", bearer]
    args += [str(o) for o in opts]
    args += list(urls) + ["--"] + [str(c) for c in cmds]
    cp = subprocess.run(args, capture_output=True, text=True, timeout=wait,
                        env={**os.environ, "http_proxy": proxy, "https_proxy": proxy,
                             "no_proxy": ""})
    # under ASan/UBSan (STELLA_BUILD=build-asan) a finding fails the test
    assert "Sanitizer" not in cp.stderr and "runtime error:" not in cp.stderr, cp.stderr
    return cp.stdout.splitlines()


def digest(data):
    return hashlib.sha256(data).hexdigest()


def stats(lines):
    """{url: {state, failures, bytes, ok, ...}}, and the cache line's numbers."""
    mirrors, cache = {}, {}
    for l in lines:
        f = l.split()
        if f[0] == "mirror":
            d = {"state": f[2]}
            for kv in f[3:]:
                k, v = kv.split("=", 1)
                d[k] = int(v) if v.isdigit() else v
            mirrors[f[1]] = d
        elif f[0] == "cache":
            cache = {k: int(v) for k, v in (kv.split("=") for kv in f[1:])}
    return mirrors, cache


@pytest.fixture
def blob():
    """7.5 MiB of random bytes: a kit as far as remote.c knows."""
    return os.urandom(7 * MiB + MiB // 2)


def test_reads_are_the_bytes_and_concurrent_fetches_merge(blob):
    with serverlib.FaultServer({"/k": blob}) as fs:
        fs.delay_per_mib = 0.3   # slow enough that the 8 readers overlap
        out = remotectl([fs.url("k")], "size", "read", 5, 100, "read", MiB - 10, 20,
                        "threads", 8, 3 * MiB + 5, 4096, "read", len(blob) - 7, 7, "stats")
        assert out[0] == str(len(blob))
        assert out[1] == "ok " + digest(blob[5:105])
        assert out[2] == "ok " + digest(blob[MiB - 10:MiB + 10])
        assert out[3] == "ok " + digest(blob[3 * MiB + 5:3 * MiB + 5 + 4096])
        assert out[4] == "ok " + digest(blob[-7:])
        # chunk 0 (the open), 1, 3 (once for 8 readers), 7: four range requests
        ranges = sorted(r.range for r in fs.requests)
        assert len(ranges) == 4, ranges
        assert all(r.status == 206 for r in fs.requests)
        assert f"bytes={3 * MiB}-{4 * MiB - 1}" in ranges


def test_local_only_reads_never_touch_the_network(blob, tmp_path):
    """remote_local_only (what the FUSE threads read with): bytes in memory or in the
    disk cache are served; a chunk that would need a mirror is EWOULDBLOCK at once,
    with no request made and no failure counted; turned off, the same read fetches (once)."""
    with serverlib.FaultServer({"/k": blob}) as fs:
        out = remotectl([fs.url("k")], "read", 10, 100, "local", "on",
                        "read", 20, 100,              # chunk 0: in memory since the open
                        "read", 4 * MiB, 100,         # chunk 4: nowhere yet
                        "local", "off", "read", 4 * MiB, 100, "stats", cache=tmp_path / "c")
        assert out[0] == "ok " + digest(blob[10:110])
        assert out[2] == "ok " + digest(blob[20:120])
        assert out[3] == "error EWOULDBLOCK"
        assert out[5] == "ok " + digest(blob[4 * MiB:4 * MiB + 100])
        mirrors, _ = stats(out[6:])
        assert all(m["failures"] == 0 for m in mirrors.values()), mirrors
        ranges = [r.range for r in fs.requests]
        assert ranges.count(f"bytes={4 * MiB}-{5 * MiB - 1}") == 1, ranges


def test_sequential_read_fetches_ahead(blob):
    with serverlib.FaultServer({"/k": blob}) as fs:
        out = remotectl([fs.url("k")], "seq", "stats")
        assert out[0] == "ok " + digest(blob)
        # every chunk once: read ahead does not fetch twice
        assert fs.count == 8 and fs.bytes_sent == len(blob)


def test_bad_bytes_fail_over_and_are_never_trusted_again(blob):
    with serverlib.FaultServer({"/k": blob}) as bad, serverlib.FaultServer({"/k": blob}) as good:
        bad.flip = (2 * MiB + 100, 10)
        out = remotectl([bad.url("k"), good.url("k")],
                        "read", 2 * MiB, 4096,          # wrong bytes, from bad
                        "bad", 2 * MiB, 4096,           # the layer above says so
                        "read", 2 * MiB, 4096,          # from good now
                        "bad", 2 * MiB, 4096,           # good's were "bad" too: none left
                        "read", 5 * MiB, 10,            # other chunks: bad still serves
                        "stats")
        flipped = bytearray(blob[2 * MiB:2 * MiB + 4096])
        for i in range(100, 110):
            flipped[i] ^= 0xFF
        assert out[0] == "ok " + digest(bytes(flipped))
        assert out[1] == "ok"
        assert out[2] == "ok " + digest(blob[2 * MiB:2 * MiB + 4096])
        assert out[3] == "error EIO"
        assert out[4] == "ok " + digest(blob[5 * MiB:5 * MiB + 10])
        m, c = stats(out[5:])
        assert m[bad.url("k")]["bad_bytes"] == 1 and m[good.url("k")]["bad_bytes"] == 1
        assert c["unserved"] == 1
        # bad was asked for chunk 2 once, and for chunk 5 after
        assert sum(1 for r in bad.requests if r.range == f"bytes={2 * MiB}-{3 * MiB - 1}") == 1
        assert any(r.range == f"bytes={5 * MiB}-{6 * MiB - 1}" for r in bad.requests)


def test_bad_bytes_distrust_only_their_range(blob):
    """One mirror, one bad block: that block fails (EUCLEAN below the verification
    layer: nowhere to get it right), and the blocks beside it in the same 1 MiB chunk
    still read."""
    with serverlib.FaultServer({"/k": blob}) as fs:
        fs.flip = (2 * MiB + 4096 + 7, 1)
        out = remotectl([fs.url("k")],
                        "read", 2 * MiB + 4096, 4096,   # wrong bytes
                        "bad", 2 * MiB + 4096, 4096,    # no other mirror
                        "read", 2 * MiB, 4096,          # the block before: fetched again, good
                        "read", 2 * MiB + 8192, 4096,   # the block after
                        "read", 2 * MiB + 4096, 4096,   # never asked of it again
                        "stats")
        assert out[1] == "error EIO"
        assert out[2] == "ok " + digest(blob[2 * MiB:2 * MiB + 4096])
        assert out[3] == "ok " + digest(blob[2 * MiB + 8192:2 * MiB + 12288])
        assert out[4] == "error EUCLEAN"
        m, c = stats(out[5:])
        assert m[fs.url("k")]["bad_bytes"] == 1 and c["unserved"] == 1


def test_read_ahead_follows_what_was_read_in_a_row(blob):
    """Small reads near each other (a walk over tar headers) fetch nothing ahead; a
    reader that has gone through a chunk's worth in a row gets the next one fetched."""
    with serverlib.FaultServer({"/k": blob}) as fs:
        cmds = []
        for i in range(16):
            cmds += ["read", i * 20000, 512]
        out = remotectl([fs.url("k")], *cmds)
        assert all(l.startswith("ok ") for l in out)
        assert fs.count == 1      # chunk 0 only
        fs.clear_log()
        cmds = []
        for i in range(12):
            cmds += ["read", 2 * MiB + i * 128 * 1024, 128 * 1024]
        cmds += ["sleep", 500]
        out = remotectl([fs.url("k")], *cmds)
        assert all(l.startswith("ok ") for l in out[:-1])
        got = {r.range for r in fs.requests}
        # chunks 2 and 3 read, 4 fetched ahead
        assert f"bytes={4 * MiB}-{5 * MiB - 1}" in got, got


def test_failing_mirror_backs_off(blob):
    with serverlib.FaultServer({"/k": blob}) as bad, serverlib.FaultServer({"/k": blob}) as good:
        bad.status = 503
        bad.fail_after = 1     # the open is served, then 503s
        cmds = []
        for i in range(1, 7):
            cmds += ["read", i * MiB, 10]
        out = remotectl([bad.url("k"), good.url("k")], *cmds, "stats")
        assert all(l.startswith("ok ") for l in out[:6])
        # one 503, then skipped (backoff) for the following reads
        assert bad.count == 2
        m, _ = stats(out[6:])
        assert m[bad.url("k")]["state"] == "failing" and m[bad.url("k")]["http_error"] == 1
        assert m[good.url("k")]["state"] == "ok" and m[good.url("k")]["ok"] == 6


def test_read_bound_by_timeout_under_hanging_mirrors(blob):
    with serverlib.FaultServer({"/k": blob}) as a, serverlib.FaultServer({"/k": blob}) as b:
        for s in (a, b):
            s.hang = 30
        a.fail_after = 1   # the open is answered, by a
        t0 = time.monotonic()
        out = remotectl([a.url("k"), b.url("k")], "read", 4 * MiB, 10, "stats", timeout_ms=2000)
        took = time.monotonic() - t0
        assert out[0] == "error EHOSTDOWN"
        assert took < 5, took
        m, _ = stats(out[1:])
        assert m[a.url("k")]["timeout"] == 1


def test_disk_cache_serves_offline_and_is_keyed_by_kit(tmp_path, blob):
    key = "ab" * 32
    cache = tmp_path / "cache"
    with serverlib.FaultServer({"/k": blob}) as fs:
        # the head is read (and verified, above) before the bind, as a mount does
        out = remotectl([fs.url("k")], "read", 0, 2 * MiB + 1, "bind", key, 2 * MiB + 1,
                        "read", 6 * MiB, 100, "identity", cache=cache)
        assert out[1] == "ok" and out[3] == "remote:" + key
        port = fs.port
    # every mirror down: the cache that knows the URL serves, head and the cached chunk
    url = f"http://127.0.0.1:{port}/k"
    out = remotectl([url], "size", "read", 0, 3 * MiB, "read", 6 * MiB, 100, "read", 4 * MiB, 1,
                    "stats", cache=cache, timeout_ms=1500)
    assert out[0] == str(len(blob))
    assert out[1] == "ok " + digest(blob[:3 * MiB])
    assert out[2] == "ok " + digest(blob[6 * MiB:6 * MiB + 100])
    assert out[3] == "error EHOSTDOWN"   # never fetched, nowhere to fetch it from
    _, c = stats(out[4:])
    assert c["hits"] >= 4 and c["bytes"] == 4 * MiB
    # another URL of the same kit shares the entries once bound to the key
    with serverlib.FaultServer({"/other": blob}) as fs2:
        out = remotectl([fs2.url("other")], "bind", key, 2 * MiB + 1, "read", 6 * MiB, 100, cache=cache)
        assert out[1] == "ok " + digest(blob[6 * MiB:6 * MiB + 100])
        assert not any(r.range == f"bytes={6 * MiB}-{7 * MiB - 1}" for r in fs2.requests)


def test_damaged_cache_entry_is_never_served(tmp_path, blob):
    key = "cd" * 32
    cache = tmp_path / "cache"
    with serverlib.FaultServer({"/k": blob}) as fs:
        assert remotectl([fs.url("k")], "bind", key, 1, "read", 5 * MiB, 10, cache=cache)[1].startswith("ok")
        entry = cache / "remote" / "kits" / key / "c5"
        raw = bytearray(entry.read_bytes())
        raw[64 + 3] ^= 0x01
        entry.write_bytes(bytes(raw))
        fs.clear_log()
        out = remotectl([fs.url("k")], "bind", key, 1, "read", 5 * MiB, 10, cache=cache)
        assert out[1] == "ok " + digest(blob[5 * MiB:5 * MiB + 10])
        assert any(r.range == f"bytes={5 * MiB}-{6 * MiB - 1}" for r in fs.requests)
        # torn: cut short, as a crash between rename and data could leave it
        with open(entry, "r+b") as f:
            f.truncate(1000)
        fs.clear_log()
        out = remotectl([fs.url("k")], "bind", key, 1, "read", 5 * MiB, 10, cache=cache)
        assert out[1] == "ok " + digest(blob[5 * MiB:5 * MiB + 10])
        assert any(r.range == f"bytes={5 * MiB}-{6 * MiB - 1}" for r in fs.requests)


def test_cache_bound_with_pinned_head(tmp_path, blob):
    key = "ef" * 32
    cache = tmp_path / "cache"
    with serverlib.FaultServer({"/k": blob}) as fs:
        out = remotectl([fs.url("k")], "bind", key, MiB + 1, "seq", "stats",
                        cache=cache, cache_size=3 * MiB)
        assert out[1] == "ok " + digest(blob)
        _, c = stats(out[2:])
        d = cache / "remote" / "kits" / key
        entries = sorted(p.name for p in d.iterdir() if p.name.startswith("c"))
        data = sum((p.stat().st_size - 64) for p in d.iterdir() if p.name.startswith("c")
                   and p.name not in ("c0", "c1"))
        # the head's chunks (0 and 1) stay; the rest within the bound
        assert "c0" in entries and "c1" in entries
        assert data <= 3 * MiB
        assert c["bytes"] == sum(p.stat().st_size - 64 for p in d.iterdir() if p.name.startswith("c"))


def test_many_readers_through_one_squid_fetch_the_kit_about_once(tmp_path, blob):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "kit.tar").write_bytes(blob)
    with serverlib.Nginx(tmp_path / "ng", tmp_path / "www") as ng, \
            serverlib.Squid(tmp_path / "sq") as sq:
        for i in range(4):
            out = remotectl([ng.url("kit.tar")], "seq", proxy=sq.proxy)
            assert out[0] == "ok " + digest(blob)
        served = ng.bytes_served("kit.tar")
        assert len(blob) <= served <= 1.5 * len(blob), (served, sq.log())


def test_probe_conditional(blob):
    with serverlib.FaultServer({"/k": blob}) as fs:
        fs.etag = '"v1"'
        out = remotectl([fs.url("k")], "probe", "", "probe", '"v1"')
        assert out == ['changed "v1"', "unchanged"]
        assert fs.requests[-1].headers.get("If-None-Match") == '"v1"'
        fs.etag = '"v2"'
        assert remotectl([fs.url("k")], "probe", '"v1"') == ['changed "v2"']
        # Last-Modified only
        fs.etag = ""
        lm = "Wed, 15 Jan 2025 00:00:00 GMT"
        out = remotectl([fs.url("k")], "probe", lm)
        assert out == ["unchanged"]
        assert fs.requests[-1].headers.get("If-Modified-Since") == lm


def test_authorization_header_stays_with_its_origin(blob):
    """Auth ops (a registry's token): sent to the endpoint, renewed once on a 401
    challenge, and never sent where a redirect leads (another port of the same host)."""
    with serverlib.FaultServer({"/k": blob}) as storage, serverlib.FaultServer({"/k": blob}) as reg:
        reg.bearer = "fresh"
        reg.redirect = storage.origin
        out = remotectl([reg.url("k")], "read", 3 * MiB, 10, bearer="stale,fresh")
        assert out[0] == "ok " + digest(blob[3 * MiB:3 * MiB + 10])
        assert out[-1] == "challenges=1"
        # the registry saw the stale token, then the fresh one; storage neither
        assert [r.headers.get("Authorization") for r in reg.requests][:2] == ["Bearer stale", "Bearer fresh"]
        assert storage.count >= 2
        assert not any("Authorization" in r.headers for r in storage.requests)
        # a token the challenge cannot renew: refused, in one result
        reg.bearer = "other"
        out = remotectl([reg.url("k")], bearer="stale,fresh")
        assert out[0].startswith("open error EACCES"), out


def test_https_client_certificate(tmp_path, blob):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "k").write_bytes(blob)
    tls = serverlib.make_ca(tmp_path / "ca", client=True)
    with serverlib.Nginx(tmp_path / "ng", tmp_path / "www", tls=tls, client_cert=True) as ng:
        ok = remotectl([ng.url("k")], "read", 2 * MiB, 10,
                       opts=["--cacert", tls.ca, "--client-cert", tls.client_cert,
                             "--client-key", tls.client_key])
        assert ok == ["ok " + digest(blob[2 * MiB:2 * MiB + 10])]
        # without it nginx answers 400: refused in one result, never bytes
        out = remotectl([ng.url("k")], "size", opts=["--cacert", tls.ca])
        assert out[0].startswith("open error"), out
        # a CA that did not sign the server's certificate: no bytes either
        other = serverlib.make_ca(tmp_path / "other")
        out = remotectl([ng.url("k")], "size", opts=["--cacert", other.ca])
        assert out[0].startswith("open error") and "certificate" in out[0].lower(), out


def test_explicit_proxy_option(tmp_path, blob):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "k").write_bytes(blob)
    with serverlib.Nginx(tmp_path / "ng", tmp_path / "www") as ng, \
            serverlib.Squid(tmp_path / "sq") as sq:
        out = remotectl([ng.url("k")], "read", 0, 10, opts=["--proxy", sq.proxy])
        assert out == ["ok " + digest(blob[:10])]
        assert any(url.endswith("/k") for _, _, _, url in sq.log())


def test_a_lone_read_is_not_read_ahead_for(blob):
    """Once bound, one read at a random offset fetches its chunk and nothing more: read-ahead
    would share the network with the read that is waited for (issue 15: the first read deep
    in a file)."""
    with serverlib.FaultServer({"/k": blob}) as fs:
        out = remotectl([fs.url("k")], "bind", "34" * 32, 4096, "read", 5 * MiB + 100, 4096, "sleep", 300)
        assert out[1] == "ok " + digest(blob[5 * MiB + 100:5 * MiB + 4196]), out
        assert sorted(r.range for r in fs.requests) == [f"bytes=0-{MiB - 1}", f"bytes={5 * MiB}-{6 * MiB - 1}"]


def test_stream_read_ahead_is_bounded_and_stops_at_the_kits_end(tmp_path):
    """A reader going on where it stopped earns read-ahead (a chunk per 256 KiB read, 8 at
    most), whatever other reads (a tree block in the head) come between; each chunk is asked
    for once; nothing past the kit's end."""
    big = os.urandom(16 * MiB + 12345)
    with serverlib.FaultServer({"/k": big}) as fs:
        reads = []
        for i in range(16):   # [MiB, 3 MiB) in 128 KiB reads, a head read between each
            reads += ["read", MiB + i * 128 * 1024, 128 * 1024, "read", 100 + i, 10]
        out = remotectl([fs.url("k")], "bind", "56" * 32, 4096, *reads, "sleep", 500)
        assert all(l.startswith("ok") for l in out), out
        chunks = sorted(int(r.range.split("=")[1].split("-")[0]) // MiB for r in fs.requests)
        assert len(chunks) == len(set(chunks)), chunks
        # read: 0 (the open), 1, 2; ahead of chunk 2 by 8 at most
        assert 3 in chunks and max(chunks) <= 2 + 8, chunks
        fs.clear_log()
        out = remotectl([fs.url("k")], "bind", "56" * 32, 4096, "seq", "sleep", 300)
        assert out[1] == "ok " + digest(big), out
        ends = [int(r.range.split("-")[1]) for r in fs.requests]
        assert max(ends) == len(big) - 1 and len(ends) == len(set(ends)) == 17, ends


def test_close_does_not_wait_for_hanging_read_ahead(blob):
    """Fetches ahead that hang end when the bytes are closed (an umount does not wait
    for timeout=)."""
    with serverlib.FaultServer({"/k": blob}) as fs:
        fs.hang = 60
        fs.fail_after = 1          # the open (chunk 0) is answered
        t0 = time.monotonic()
        # bound first, then a reader that goes on where it stopped (two reads in a row:
        # a lone read is never read ahead for), all inside chunk 0, which the open has
        out = remotectl([fs.url("k")], "bind", "12" * 32, 4096, "read", 4096, 4096, "read", 8192, 512 * 1024,
                        "sleep", 300, timeout_ms=30000)
        took = time.monotonic() - t0
        assert out[2] == "ok " + digest(blob[8192:8192 + 512 * 1024]), out
        assert fs.count >= 2       # read ahead asked for chunk 1 (and hangs there)
        assert took < 8, took


def test_remount_reads_the_head_from_the_cache(tmp_path, blob):
    """A mirror that serves the kit the cache last saw from it (same size, same ETag):
    the head comes from disk; only the open's first chunk is fetched.  Another ETag: the
    cache is not trusted for the head, it is fetched again."""
    key = "12" * 32
    cache = tmp_path / "cache"
    head = 3 * MiB + 5
    with serverlib.FaultServer({"/k": blob}) as fs:
        fs.etag = '"one"'
        out = remotectl([fs.url("k")], "read", 0, head, "bind", key, head, cache=cache)
        assert out[1] == "ok"
        fs.clear_log()
        out = remotectl([fs.url("k")], "read", 0, head, "stats", cache=cache)
        assert out[0] == "ok " + digest(blob[:head])
        assert [r.range for r in fs.requests] == [f"bytes=0-{MiB - 1}"]
        _, c = stats(out[1:])
        assert c["hits"] >= 3
        fs.etag = '"two"'
        fs.clear_log()
        out = remotectl([fs.url("k")], "read", 0, head, cache=cache)
        assert out[0] == "ok " + digest(blob[:head])
        assert len(fs.requests) == 4
