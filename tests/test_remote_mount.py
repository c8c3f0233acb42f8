"""Mounts of kits on site mirrors (docs/mirrors.md, stellafs(8)): the real daemon mounting
http:// URLs served by real nginx and squid, and by serverlib.FaultServer for what they
cannot be told to do, all on 127.0.0.1 and started by the tests.  Oracles: the source
tree (sha256sum), nginx's and squid's own access logs, the fault server's request log.

A test that cannot get FUSE or a server fails (serverlib raises; conftest's stellafs_bin
fails), it never skips.  Every wait is bounded.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import struct
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

import kitlib
import serverlib

BLOCK = 4096


# --------------------------------------------------------------------------- helpers

def sha256sum_tree(root: Path) -> dict:
    """path -> sha256 of every regular file under ROOT, by sha256sum(1)."""
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    out = {}
    for i in range(0, len(files), 200):
        cp = subprocess.run(["sha256sum", "--", *files[i:i + 200]], cwd=root, capture_output=True,
                            text=True, timeout=120)
        assert cp.returncode == 0, cp.stderr
        for line in cp.stdout.splitlines():
            digest, name = line.split(None, 1)
            out[name.lstrip("*")] = digest
    return out


def member_offsets(kit: Path) -> dict:
    """name -> (data offset in the tar file, size), for an uncompressed kit (Python's tarfile,
    independent of stellakit)."""
    with tarfile.open(kit, "r:") as t:
        return {m.name: (m.offset_data, m.size) for m in t.getmembers() if m.isfile()}


def read_all(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_errno(path: Path) -> int:
    """0 if the whole file reads, else the errno of the failing read."""
    try:
        read_all(path)
        return 0
    except OSError as e:
        return e.errno


# the sample kit's components were captured at its creation: judged the day after
NOW = "now=2025-01-16T00:00:00Z"


def mount_remote(mounter, url, trust, *opts, cache=None):
    return mounter.mount(url, trust, NOW, *opts, cache=cache)


def pread_errno(path: Path, off: int) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        os.pread(fd, BLOCK, off)
        return 0
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)


def daemon_pid(mnt: Path) -> int | None:
    out = subprocess.run(["pgrep", "-f", "-n", f"stellafs.*{mnt}"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def mirrors_of(m) -> list:
    return m.status()["mirrors"]


def metrics_lines(m) -> list:
    return (m.path / "metrics").read_text().splitlines()


def metric_sum(m, name: str, **labels) -> float:
    """Sum of the samples of NAME whose labels include LABELS (parsed by hand: the
    format is Prometheus text 0.0.4)."""
    total = 0.0
    for line in metrics_lines(m):
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, val = line.rpartition(" ")
        if head != name and not head.startswith(name + "{"):
            continue
        lab = {}
        if "{" in head:
            body = head[head.index("{") + 1:head.rindex("}")]
            for part in body.split('",'):
                k, _, v = part.partition("=")
                lab[k] = v.strip('"')
        if all(lab.get(k) == v for k, v in labels.items()):
            total += float(val)
    return total


@pytest.fixture(scope="module")
def kitdir(tmp_path_factory, packed):
    """The sample tree's kits (none and zstd), in a directory nginx serves."""
    d = tmp_path_factory.mktemp("kits")
    for c, name in (("none", "kit.tar"), ("zstd", "kit.tar.zst")):
        shutil.copy(packed(c).path, d / name)
    os.chmod(d, 0o755)
    return d


@pytest.fixture(scope="module")
def bigkit(tmp_path_factory, keys):
    """An uncompressed kit of six 3 MiB files and one of 40 MiB (more than the daemon
    keeps in memory), and its source tree: (directory nginx serves, source)."""
    d = tmp_path_factory.mktemp("bigkit")
    src = d / "src"
    (src / "data").mkdir(parents=True)
    for i in range(6):
        (src / "data" / f"f{i}.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    (src / "data" / "big.bin").write_bytes(os.urandom(40 * 1024 * 1024))
    kits = d / "kits"
    kits.mkdir()
    os.chmod(d, 0o755)
    os.chmod(kits, 0o755)
    kitlib.pack(src, kits / "big.tar", [keys["ed25519"]], compress="none")
    return kits, src


@pytest.fixture
def nginx(tmp_path, kitdir):
    with serverlib.Nginx(tmp_path / "nginx", root=kitdir) as ng:
        yield ng


# --------------------------------------------------------------------------- the tree

@pytest.mark.parametrize("name", ["kit.tar", "kit.tar.zst"])
def test_mounted_tree_equals_source(name, nginx, mounter, keys, src_tree, kitdir):
    """Every file of the mounted snapshot has the source's bytes (sha256sum of both)."""
    m = mount_remote(mounter, nginx.url(name), keys["ed25519"].pub, "timeout=20")
    got = sha256sum_tree(m.path / "current")
    want = sha256sum_tree(src_tree)
    assert got == want
    st = m.status()
    assert st["source"] == nginx.url(name)
    assert [x["url"] for x in st["mirrors"]] == [nginx.url(name)]
    assert st["mirrors"][0]["state"] == "ok"
    assert st["health"] == "HEALTHY", (m.path / "health").read_text()
    # what nginx served is what the metrics count (its access log is the oracle)
    # (a detached mount checks the kit before the fork and opens it again after it: what
    # the first open fetched is not counted by the daemon that serves)
    served = nginx.bytes_served()
    counted = metric_sum(m, "stellafs_remote_bytes_total", mirror=nginx.origin)
    assert 0 < counted <= served, (counted, served)
    assert metric_sum(m, "stellafs_remote_requests_total", mirror=nginx.origin, result="ok") > 0


def test_password_in_url_is_never_shown(tmp_path, mounter, keys, kitdir, src_tree):
    """A mirror URL with user:password@ (nginx with basic auth): the mount works, and
    status, status.json and health show the URL without the password."""
    with serverlib.Nginx(tmp_path / "ngb", root=kitdir, basic=("scan", "s3cretpw")) as ng:
        m = mount_remote(mounter, ng.url("kit.tar", userinfo="scan:s3cretpw"), keys["ed25519"].pub, "timeout=20")
        assert sha256sum_tree(m.path / "current") == sha256sum_tree(src_tree)
        assert [x["url"] for x in mirrors_of(m)] == [ng.url("kit.tar")]
        for name in ("status", "status.json", "health", "metrics"):
            text = (m.path / name).read_text()
            assert "s3cretpw" not in text, (name, text)


def test_https_with_cacert_and_client_certificate(tmp_path, mounter, keys, kitdir, src_tree):
    """https: the mirror's certificate checked against cacert= (refused without it), and a
    client certificate given with client_cert=/client_key= where nginx demands one."""
    tls = serverlib.make_ca(tmp_path / "ca", client=True)
    with serverlib.Nginx(tmp_path / "ng", root=kitdir, tls=tls, client_cert=True) as ng:
        url = ng.url("kit.tar.zst")
        cp, mnt = mounter.try_mount(url, keys["ed25519"].pub, NOW, "timeout=5",
                                    f"client_cert={tls.client_cert}", f"client_key={tls.client_key}")
        assert cp.returncode == 1 and len(cp.stderr.strip().splitlines()) == 1, cp.stderr
        assert not kitlib.is_mounted(mnt)
        cp, mnt = mounter.try_mount(url, keys["ed25519"].pub, NOW, "timeout=5", f"cacert={tls.ca}")
        assert cp.returncode == 1, cp.stderr  # no client certificate: nginx refuses
        m = mount_remote(mounter, url, keys["ed25519"].pub, "timeout=20", f"cacert={tls.ca}",
                         f"client_cert={tls.client_cert}", f"client_key={tls.client_key}")
        assert sha256sum_tree(m.path / "current") == sha256sum_tree(src_tree)
        assert m.status()["mirrors"][0]["url"].startswith("https://")


def test_signalled_reader_never_hangs(tmp_path, mounter, keys, bigkit):
    """A reader blocked on a hanging mirror: SIGKILL ends it at once (the page-cache wait
    is killable); SIGINT (caught by dd) ends it by timeout= at the latest (page-cache reads
    are sent as readahead, which the kernel does not interrupt); the mount answers on,
    and once the mirror is back a read is served."""
    kits, big = bigkit
    data = (kits / "big.tar").read_bytes()
    with serverlib.FaultServer({"/big.tar": data}) as fs:
        m = mount_remote(mounter, fs.url("big.tar"), keys["ed25519"].pub, "timeout=5")
        fs.hang = 60.0
        target = m.path / "current" / "data" / "big.bin"
        for sig, bound in ((signal.SIGKILL, 2), (signal.SIGINT, 5 + 3)):
            p = subprocess.Popen(["dd", f"if={target}", "of=/dev/null", "bs=4096", "count=1",
                                  f"skip={(20 << 20) // 4096 + 300 * int(sig)}"], stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            assert p.poll() is None, "the read should be waiting for the hanging mirror"
            t0 = time.monotonic()
            p.send_signal(sig)
            p.wait(timeout=15)
            assert time.monotonic() - t0 < bound, f"{sig!r}: the reader took {time.monotonic() - t0:.1f} s to go"
            t0 = time.monotonic()
            (m.path / "status").read_text()
            os.stat(target)
            assert time.monotonic() - t0 < 1
        # the mirror is back: a read is served
        fs.hang = 0.0
        time.sleep(2.5)  # past the remembered failure of this reader
        off = 30 << 20
        fd = os.open(target, os.O_RDONLY)
        try:
            assert os.pread(fd, BLOCK, off) == (big / "data" / "big.bin").read_bytes()[off:off + BLOCK]
        finally:
            os.close(fd)


def test_bytes_before_ready_are_the_heads(tmp_path, mounter, keys, bigkit):
    """A first mount of a 58 MiB kit fetches its head, not the kit: what nginx served
    (its access log) until stellafs returned.  The kit carries its index (format 1.1,
    docs/kit-format.md), so the mount reads nothing past the head: the bound is the
    1 MiB chunks holding the head, twice (a detached mount opens the kit before and
    after its fork)."""
    kits, _ = bigkit
    kit = kits / "big.tar"
    offs = member_offsets(kit)
    assert "manifest/index" in offs, "the bench kit should carry its index"
    chunk = 1 << 20
    head = min(off for name, (off, _) in offs.items() if not name.startswith("manifest/"))
    with serverlib.Nginx(tmp_path / "ng", root=kits) as ng:
        mount_remote(mounter, ng.url("big.tar"), keys["ed25519"].pub, "timeout=20")
        served = ng.bytes_served()
    bound = 2 * (head // chunk + 1) * chunk
    assert served <= bound, f"{served} bytes served before ready, the head is {head} bytes (bound {bound})"



def test_remote_mount_options_refused(mounter, keys, tmp_path):
    """Nonsense remote options are refused with one line naming the option, exit 2."""
    url = "http://127.0.0.1:9/kit.tar"
    for opt, word in (("cache_size=0", "cache_size="), ("cache_size=12Q", "cache_size="),
                      ("timeout=0", "timeout="), ("timeout=abc", "timeout="),
                      ("mirror=ftp://x/kit.tar", "mirror="), ("mirror=http:///kit.tar", "mirror="),
                      ("mirror=oci://127.0.0.1:9/r/k:1", "only beside"), ("interval=10", "interval="),
                      ("proxy=nothing", "proxy="), ("cacert=/nonexistent/ca.pem", "cacert="),
                      ("client_key=/etc/hostname", "client_key="),
                      ("follow=http://127.0.0.1:9/k.tar", "follow=")):
        cp, mnt = mounter.try_mount(url, keys["ed25519"].pub, opt)
        assert cp.returncode == 2, (opt, cp.stderr)
        line = cp.stderr.strip()
        assert "\n" not in line and word in line, (opt, line)
        assert not kitlib.is_mounted(mnt)
    # mirror= for a local kit file
    kit = tmp_path / "k.tar"
    kit.write_bytes(b"")
    cp, _ = mounter.try_mount(kit, keys["ed25519"].pub, "mirror=http://127.0.0.1:9/kit.tar")
    assert cp.returncode == 2 and "mirror=" in cp.stderr


def test_no_mirror_answers_exit_1(mounter, keys):
    """A mount whose head no mirror serves within timeout= fails: exit 1, one line."""
    port = serverlib.free_port()
    t0 = time.monotonic()
    cp, mnt = mounter.try_mount(f"http://127.0.0.1:{port}/kit.tar", keys["ed25519"].pub, "timeout=3")
    assert cp.returncode == 1, cp.stderr
    assert len(cp.stderr.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 30
    assert not kitlib.is_mounted(mnt)


# --------------------------------------------------------------------------- tamper

def tampered_kit(kitdir: Path, dest: Path, victim: str, at: int) -> Path:
    """A copy of the uncompressed kit with the bytes of VICTIM's block AT inverted."""
    kit = dest / "kit.tar"
    shutil.copy(kitdir / "kit.tar", kit)
    off, size = member_offsets(kit)[victim]
    assert size > (at + 1) * BLOCK
    with open(kit, "r+b") as f:
        f.seek(off + at * BLOCK + 100)
        b = f.read(16)
        f.seek(off + at * BLOCK + 100)
        f.write(bytes(x ^ 0xFF for x in b))
    os.chmod(dest, 0o755)
    return kit


def test_tamper_on_server_eio_on_exactly_the_bad_blocks(tmp_path, mounter, keys, kitdir, src_tree):
    """Bytes flipped in one block of one file on the only mirror: that block gives EIO,
    never wrong bytes; the file's blocks elsewhere and the other files read as the
    source; health CRITICAL (no mirror had good bytes)."""
    victim = "feeds/vuln-db/vuln.db"
    bad_block = 37
    root = tmp_path / "served"
    root.mkdir()
    kit = tampered_kit(kitdir, root, victim, bad_block)
    offs = member_offsets(kit)
    data_off, _ = offs[victim]
    chunk_of = lambda b: (data_off + b * BLOCK) // (1 << 20)  # core/remote.c's 1 MiB chunks
    with serverlib.Nginx(tmp_path / "ng", root=root) as ng:
        m = mount_remote(mounter, ng.url("kit.tar"), keys["ed25519"].pub, "timeout=20")
        f = m.path / "current" / victim
        want = (src_tree / victim).read_bytes()
        nblocks = (len(want) + BLOCK - 1) // BLOCK
        got = {}
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            # the bad block first, then blocks near it and far from it
            for b in [bad_block, bad_block - 1, bad_block + 1, 0] + list(range(nblocks - 4, nblocks)):
                try:
                    got[b] = os.pread(fd, BLOCK, b * BLOCK) == want[b * BLOCK:(b + 1) * BLOCK]
                except OSError as e:
                    assert e.errno == errno.EIO
                    got[b] = None
        finally:
            os.close(fd)
        assert got[bad_block] is None
        assert False not in got.values(), "wrong bytes served"
        far = [b for b in got if chunk_of(b) != chunk_of(bad_block)]
        assert far and all(got[b] for b in far), got
        # the other files read as the source
        for name in offs:
            if name.startswith("manifest/") or name == victim:
                continue
            assert read_all(m.path / "current" / name) == (src_tree / name).read_bytes(), name
        h = (m.path / "health").read_text()
        assert h.splitlines()[0] == "CRITICAL", h
        assert m.status()["integrity"]["failures"] >= 1
        # exactly the bad block: its neighbours, in the same 1 MiB fetch, read fine too
        assert all(got[b] for b in got if b != bad_block), got


# --------------------------------------------------------------------------- failover

FAILURES = {
    # class: (fault server settings, results it may be counted as)
    "503": (dict(status=503), {"http_error"}),
    "ignore_range": (dict(ignore_range=True), {"http_error", "short"}),
    "truncate": (dict(truncate=1000), {"short"}),
    "reset": (dict(reset=True), {"http_error", "short", "refused"}),
    "hang": (dict(hang=30.0), {"timeout"}),
    "redirect_loop": (dict(redirect_loop=True), {"http_error"}),
    "flip": (None, {"bad_bytes"}),
}


@pytest.mark.parametrize("cls", list(FAILURES))
def test_failover_to_second_mirror(cls, tmp_path, mounter, keys, kitdir, src_tree, nginx):
    """The fault server first, nginx second: every read succeeds with the source's bytes;
    status names the failing mirror with its class, metrics count it, health WARNING."""
    data = (kitdir / "kit.tar").read_bytes()
    with serverlib.FaultServer({"/kit.tar": data}) as fs:
        settings, results = FAILURES[cls]
        if settings is None:
            # wrong bytes inside a file's data, not in the head: the mount comes up from
            # the fault server, the reads find its bytes bad and go to nginx
            off, size = member_offsets(kitdir / "kit.tar")["feeds/vuln-db/vuln.db"]
            fs.flip = (off + 5 * BLOCK, 64)
        else:
            for k, v in settings.items():
                setattr(fs, k, v)
        m = mount_remote(mounter, fs.url("kit.tar"), keys["ed25519"].pub, f"mirror={nginx.url('kit.tar')}",
                         "timeout=20")
        t0 = time.monotonic()
        assert sha256sum_tree(m.path / "current") == sha256sum_tree(src_tree)
        assert time.monotonic() - t0 < 60
        mirrors = mirrors_of(m)
        assert [x["url"] for x in mirrors] == [fs.url("kit.tar"), nginx.url("kit.tar")]
        bad = mirrors[0]
        assert bad["failures"] >= 1, mirrors
        assert bad["lastError"], mirrors
        counted = sum(metric_sum(m, "stellafs_remote_requests_total", mirror=fs.origin, result=r) for r in results)
        assert counted >= 1, "\n".join(l for l in metrics_lines(m) if "remote" in l)
        if cls != "flip":
            # still failing (in backoff) or failing again: health names it
            assert bad["state"] == "failing", mirrors
            h = (m.path / "health").read_text()
            assert h.splitlines()[0] == "WARNING", h
            assert f"127.0.0.1:{fs.port}" in h
        else:
            # wrong bytes were replaced by good ones from nginx: never CRITICAL
            assert m.status()["integrity"]["failures"] == 0
            assert (m.path / "health").read_text().splitlines()[0] in ("HEALTHY", "WARNING")
        assert metric_sum(m, "stellafs_remote_bytes_total", mirror=nginx.origin) > 0


def tree_offset(kit: Path, name: str, src: Path) -> int:
    """Where NAME's Merkle tree starts in the kit file: merkle.bin's entry for the file's
    fs-verity digest (`fsverity digest`), read with Python's tarfile and struct
    (docs/kit-format.md, section 8)."""
    digest = bytes.fromhex(kitlib.fsverity_file(src / name).split(":", 1)[1])
    off, _ = member_offsets(kit)["manifest/merkle.bin"]
    with open(kit, "rb") as f:
        f.seek(off)
        head = f.read(24)
        assert head[:8] == b"STLMRKL1"
        (n,) = struct.unpack_from("<Q", head, 16)
        for _ in range(n):
            e = f.read(64)
            if e[:32] == digest:
                return off + struct.unpack_from("<Q", e, 40)[0]
    raise AssertionError(f"{name}: no tree in merkle.bin")


def test_bad_tree_block_from_a_mirror_fails_over(tmp_path, mounter, keys, kitdir, src_tree, nginx):
    """A mirror serving a file's Merkle tree (merkle.bin, in the head) with bytes flipped:
    the tree block is reported like bad data, read again from the next mirror, and the
    file reads as the source; the bad mirror is counted for bad bytes, and integrity
    has no failure (the tree is not rebuilt from the whole file)."""
    victim = "feeds/vuln-db/vuln.db"
    data = (kitdir / "kit.tar").read_bytes()
    top = tree_offset(kitdir / "kit.tar", victim, src_tree)
    with serverlib.FaultServer({"/kit.tar": data}) as fs:
        fs.flip = (top + 8, 16)
        m = mount_remote(mounter, fs.url("kit.tar"), keys["ed25519"].pub, f"mirror={nginx.url('kit.tar')}",
                         "timeout=20")
        fd = os.open(m.path / "current" / victim, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            off = 9 * BLOCK
            assert os.pread(fd, BLOCK, off) == (src_tree / victim).read_bytes()[off:off + BLOCK]
        finally:
            os.close(fd)
        assert metric_sum(m, "stellafs_remote_requests_total", mirror=fs.origin, result="bad_bytes") >= 1, \
            "\n".join(l for l in metrics_lines(m) if "remote" in l)
        assert m.status()["integrity"]["failures"] == 0
        assert read_all(m.path / "current" / victim) == (src_tree / victim).read_bytes()


# --------------------------------------------------------------------------- offline

def test_offline_remount_serves_from_cache(tmp_path, mounter, keys, bigkit):
    """Every mirror gone: a remount comes up from the cache (the head is pinned there),
    cached files read, uncached bytes give EIO within timeout=, status still answers."""
    kits, big = bigkit
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    root = tmp_path / "served"
    root.mkdir()
    shutil.copy(kits / "big.tar", root / "big.tar")
    os.chmod(root, 0o755)
    warm = "data/f5.bin"
    with serverlib.Nginx(tmp_path / "ng", root=root) as ng:
        url = ng.url("big.tar")
        m = mount_remote(mounter, url, keys["ed25519"].pub, "timeout=5", "cache_size=8M", cache=cache)
        assert read_all(m.path / "current" / warm) == (big / warm).read_bytes()
        mounter.umount(m.path)
    # nginx stopped: nothing answers on its port
    m = mount_remote(mounter, url, keys["ed25519"].pub, "timeout=3", "cache_size=8M", cache=cache)
    assert read_all(m.path / "current" / warm) == (big / warm).read_bytes()
    t0 = time.monotonic()
    assert pread_errno(m.path / "current" / "data/big.bin", 20 * 1024 * 1024) == errno.EIO
    assert time.monotonic() - t0 < 3 + 2
    st = m.status()
    assert st["mirrors"][0]["state"] == "failing", st["mirrors"]
    assert st["cache"]["bytes"] > 0
    h = (m.path / "health").read_text()
    assert h.splitlines()[0] == "WARNING", h


def _ranges(entries):
    """The byte ranges nginx served, as (first, last) pairs."""
    out = []
    for e in entries:
        assert e.status == 206, e
        a, b = e.range.removeprefix("bytes=").split("-")
        out.append((int(a), int(b)))
    return out


def test_read_ahead_fetches_only_what_readers_earn(tmp_path, mounter, keys, bigkit):
    """Issue 15's speed work, bounded: a 4 KiB read deep in a file right after the mount
    fetches its one chunk (the file's tree is in the head, fetched with the mount), nothing
    ahead of it; a whole sequential read of the 40 MiB file is fetched ahead of the reader
    yet asks each chunk once and about the file's bytes in all, nothing past the kit."""
    kits, big = bigkit
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    want = (big / "data" / "big.bin").read_bytes()
    ksize = (kits / "big.tar").stat().st_size
    with serverlib.Nginx(tmp_path / "ng", root=kits) as ng:
        m = mount_remote(mounter, ng.url("big.tar"), keys["ed25519"].pub, "timeout=20", cache=cache)
        n0 = len(ng.log())
        off = 30 * 1024 * 1024 + 12288
        fd = os.open(m.path / "current" / "data" / "big.bin", os.O_RDONLY)
        try:
            assert os.pread(fd, 4096, off) == want[off:off + 4096]
        finally:
            os.close(fd)
        time.sleep(0.5)   # what would have been read ahead has been asked for by now
        lone = _ranges(ng.log()[n0:])
        assert len(lone) == 1 and lone[0][1] - lone[0][0] + 1 <= 1024 * 1024, lone
        n1 = len(ng.log())
        assert read_all(m.path / "current" / "data" / "big.bin") == want
        time.sleep(0.5)
        seq = _ranges(ng.log()[n1:])
        assert len(seq) == len(set(seq)), "a chunk fetched twice"
        assert (lone[0]) not in seq, "the lone read's chunk fetched again"
        assert all(b < ksize for _, b in seq)
        fetched = sum(b - a + 1 for a, b in seq)
        # the file, less the chunk already here, plus a chunk at each end
        assert fetched <= len(want) + 2 * 1024 * 1024, fetched


def test_cache_bound(tmp_path, mounter, keys, bigkit):
    """cache_size small, more than it read: the cache directory stays under the bound
    plus the head and the index, with a chunk of slack."""
    kits, big = bigkit
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    with serverlib.Nginx(tmp_path / "ng", root=kits) as ng:
        m = mount_remote(mounter, ng.url("big.tar"), keys["ed25519"].pub, "timeout=20", "cache_size=4M",
                         cache=cache)
        for name in [f"f{i}.bin" for i in range(6)] + ["big.bin"]:
            assert read_all(m.path / "current" / "data" / name) == (big / "data" / name).read_bytes(), name
        used = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
        # 4 MiB of data + the head (manifest, merkle.bin: about 500 KiB here) + the index
        # + a chunk (1 MiB) of slack
        assert used <= 4 * 1024 * 1024 + 3 * 1024 * 1024, used
        assert m.status()["cache"]["bytes"] <= 4 * 1024 * 1024 + 2 * 1024 * 1024


def manifest_key(kit: Path) -> str:
    """The cache's name for a kit: its signed manifest's sha256 (GNU tar, hashlib)."""
    cp = subprocess.run(["tar", "-xOf", str(kit), "manifest/offline-manifest.json"], capture_output=True,
                        check=True, timeout=60)
    return hashlib.sha256(cp.stdout).hexdigest()


def test_republished_url_leaves_no_old_kit_in_cache(tmp_path, mounter, keys, kitdir, bigkit, src_tree):
    """A URL republished with another kit: the next mount's cache drops the old kit's
    directory (nobody uses it, and it does not fit beside the new one in cache_size),
    so a host that follows a feed never needs its cache wiped."""
    kits, big = bigkit
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    root = tmp_path / "served"
    root.mkdir()
    os.chmod(root, 0o755)
    shutil.copy(kitdir / "kit.tar", root / "k.tar")
    old, new = manifest_key(kitdir / "kit.tar"), manifest_key(kits / "big.tar")
    on_disk = lambda: sorted(p.name for p in (cache / "remote" / "kits").iterdir())
    with serverlib.Nginx(tmp_path / "ng", root=root) as ng:
        m = mount_remote(mounter, ng.url("k.tar"), keys["ed25519"].pub, "timeout=20", cache=cache)
        assert sha256sum_tree(m.path / "current") == sha256sum_tree(src_tree)
        mounter.umount(m.path)
        assert on_disk() == [old]
        shutil.copy(kits / "big.tar", root / "k.tar.new")
        os.replace(root / "k.tar.new", root / "k.tar")
        m = mount_remote(mounter, ng.url("k.tar"), keys["ed25519"].pub, "timeout=20", "cache_size=1M",
                         cache=cache)
        want = (big / "data" / "f1.bin").read_bytes()
        assert read_all(m.path / "current" / "data" / "f1.bin") == want
        assert on_disk() == [new]


def test_kill9_during_reads_then_damaged_cache_never_wrong_bytes(tmp_path, mounter, keys, kitdir, src_tree):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    with serverlib.Nginx(tmp_path / "ng", root=kitdir) as ng:
        url = ng.url("kit.tar")
        m = mount_remote(mounter, url, keys["ed25519"].pub, "timeout=10", cache=cache)
        pid = daemon_pid(m.path)
        reader = subprocess.Popen(["sh", "-c", f"cat {m.path}/current/feeds/vuln-db/vuln.db > /dev/null"],
                                  stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        reader.wait(timeout=30)
        mounter.umount(m.path)
        # damage every file the cache holds, in its middle
        damaged = 0
        for p in cache.rglob("*"):
            if p.is_file() and p.stat().st_size > 8192 and not p.name.endswith(".db"):
                with open(p, "r+b") as f:
                    f.seek(p.stat().st_size // 2)
                    f.write(b"\xff" * 512)
                damaged += 1
        m = mount_remote(mounter, url, keys["ed25519"].pub, "timeout=10", cache=cache)
        # never wrong bytes: each file reads as the source, or fails (EIO)
        for name in ("feeds/vuln-db/vuln.db", "feeds/vuln-db/index.bin", "sizes/size-4097"):
            try:
                got = read_all(m.path / "current" / name)
            except OSError as e:
                assert e.errno == errno.EIO
                continue
            assert got == (src_tree / name).read_bytes(), name


# --------------------------------------------------------------------------- time bounds

def test_hanging_server_read_times_out_mount_answers(tmp_path, mounter, keys, bigkit):
    """A mirror that hangs after the mount: a read gets EIO within timeout= (+ slack);
    status, ls, stat and health answer at once meanwhile, and the daemon ends promptly
    at umount with a read still in flight."""
    kits, _ = bigkit
    data = (kits / "big.tar").read_bytes()
    with serverlib.FaultServer({"/big.tar": data}) as fs:
        m = mount_remote(mounter, fs.url("big.tar"), keys["ed25519"].pub, "timeout=4")
        fs.hang = 60.0
        target = m.path / "current" / "data" / "big.bin"
        result = {}

        def reader(off):
            t0 = time.monotonic()
            result["errno"] = pread_errno(target, off)
            result["secs"] = time.monotonic() - t0

        # deep in the 40 MiB file: not in the daemon's memory (it keeps 32 MiB at most)
        th = threading.Thread(target=reader, args=(20 * 1024 * 1024,), daemon=True)
        th.start()
        time.sleep(0.5)
        for what in (lambda: (m.path / "status").read_text(), lambda: os.listdir(m.path / "current" / "data"),
                     lambda: os.stat(target), lambda: (m.path / "health").read_text(),
                     lambda: (m.path / "status.json").read_text()):
            t0 = time.monotonic()
            what()
            assert time.monotonic() - t0 < 1.0
        th.join(timeout=4 + 6)
        assert not th.is_alive(), "the read did not return within timeout= + slack"
        assert result["errno"] == errno.EIO and result["secs"] < 4 + 2, result
        # a read in flight while unmounting: umount answers, and the daemon ends promptly
        pid = daemon_pid(m.path)
        th = threading.Thread(target=reader, args=(30 * 1024 * 1024,), daemon=True)
        th.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        subprocess.run(["umount", "-l", str(m.path)], timeout=10, check=True)
        assert time.monotonic() - t0 < 2
        assert pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{pid}"), "the daemon did not exit within 10 s of umount"
        th.join(timeout=10)
        assert not th.is_alive()


def test_interrupts_at_the_deadline_daemon_lives(tmp_path, mounter, keys, bigkit):
    """Readers stuck on a hanging mirror are signalled right at timeout=, when the watchdog
    answers EIO and the fetch threads, their transfers ended by the same bound, come back
    and drop their jobs: the window where an INTERRUPT could reach a job freed under the
    watchdog (fs/fetch.c keeps a claimed job alive until its claimer has answered).  Over
    rounds of it every reader ends in bounded time, the daemon stays up and answers, and
    once the mirror is back a read is served.  (The race itself is not reproducible at
    will; this drives the path, and the ASan build watches it.)"""
    kits, big = bigkit
    data = (kits / "big.tar").read_bytes()
    with serverlib.FaultServer({"/big.tar": data}) as fs:
        m = mount_remote(mounter, fs.url("big.tar"), keys["ed25519"].pub, "timeout=2")
        pid = daemon_pid(m.path)
        fs.hang = 60.0
        target = m.path / "current" / "data" / "big.bin"
        for rnd in range(3):
            procs = []
            for i in range(10):
                skip = (4 << 20) // 4096 + (rnd * 10 + i) * 257
                procs.append(subprocess.Popen(["dd", f"if={target}", "of=/dev/null", "bs=4096", "count=4",
                                               "iflag=direct", f"skip={skip}"], stderr=subprocess.DEVNULL))
            time.sleep(1.9 + 0.05 * rnd)
            for i, p in enumerate(procs):
                if p.poll() is None:
                    p.send_signal(signal.SIGINT if i % 2 else signal.SIGUSR1)
                time.sleep(0.02)
            for p in procs:
                p.wait(timeout=2 + 8)
            assert os.path.exists(f"/proc/{pid}"), "the daemon died"
            t0 = time.monotonic()
            (m.path / "status").read_text()
            assert time.monotonic() - t0 < 2
        fs.hang = 0.0
        time.sleep(2.5)  # past the remembered failures
        off = 30 << 20
        fd = os.open(target, os.O_RDONLY)
        try:
            assert os.pread(fd, BLOCK, off) == (big / "data" / "big.bin").read_bytes()[off:off + BLOCK]
        finally:
            os.close(fd)


def test_cached_reads_do_not_queue_behind_a_hanging_mirror(tmp_path, mounter, keys, bigkit):
    """More readers stuck on a hanging mirror than there are fetch threads (8): a read of a
    file whose bytes are already in the daemon's memory or disk cache is still answered
    at once with the source's bytes, not EIO from the watchdog (fs/ops.c serves resident
    bytes in the FUSE worker).  O_DIRECT so that every read reaches the daemon."""
    kits, big = bigkit
    data = (kits / "big.tar").read_bytes()
    cache = tmp_path / "cache"
    with serverlib.FaultServer({"/big.tar": data}) as fs:
        m = mount_remote(mounter, fs.url("big.tar"), keys["ed25519"].pub, "timeout=6", "cache_size=64M",
                         cache=cache)
        cur = m.path / "current" / "data"
        want = hashlib.sha256((big / "data" / "f0.bin").read_bytes()).hexdigest()
        assert hashlib.sha256((cur / "f0.bin").read_bytes()).hexdigest() == want
        fs.hang = 60.0
        stuck = [subprocess.Popen(["dd", f"if={cur / 'big.bin'}", "of=/dev/null", "bs=4096", "count=1",
                                   "iflag=direct", f"skip={(8 + 3 * i) << 8}"], stderr=subprocess.DEVNULL)
                 for i in range(10)]
        try:
            time.sleep(1.5)
            assert all(p.poll() is None for p in stuck), "the readers should wait for the hanging mirror"
            t0 = time.monotonic()
            cp = subprocess.run(f"dd if={cur / 'f0.bin'} bs=1M iflag=direct status=none | sha256sum",
                                shell=True, capture_output=True, text=True, timeout=20)
            took = time.monotonic() - t0
            assert cp.stdout.split()[0] == want, cp
            assert took < 2, f"a cached read took {took:.1f} s behind reads stuck on the mirror"
        finally:
            for p in stuck:
                p.wait(timeout=6 + 8)


# --------------------------------------------------------------------------- squid

def test_many_mounts_through_one_squid_fetch_once(tmp_path, mounter, keys, kitdir, src_tree, nginx):
    with serverlib.Squid(tmp_path / "squid") as sq:
        mounts = [mount_remote(mounter, nginx.url("kit.tar.zst"), keys["ed25519"].pub, "timeout=30",
                               f"proxy={sq.proxy}") for _ in range(6)]
        want = sha256sum_tree(src_tree)
        errs = []

        def walk(mm):
            try:
                assert sha256sum_tree(mm.path / "current") == want
            except Exception as e:  # noqa: BLE001 - reported below
                errs.append(e)

        ths = [threading.Thread(target=walk, args=(mm,)) for mm in mounts]
        for t in ths:
            t.start()
        for t in ths:
            t.join(timeout=180)
        assert not errs, errs
        size = (kitdir / "kit.tar.zst").stat().st_size
        served = nginx.bytes_served("kit.tar.zst")
        assert served <= 1.5 * size, (served, size)


def test_fetch_thread_ends_by_the_reads_deadline(tmp_path, mounter, keys, bigkit):
    """The deadline a read arrives with bounds every network wait it makes, not each
    afresh (fs/fetch.c, snapshot_read_by): twelve mirrors that each answer a chunk in
    0.6 s (within a mirror's 1 s share of timeout=2) with one block of it inverted.
    Each of 8 readers (as many as there are fetch threads) of 8 such blocks has its
    bytes found bad, reported, and asked of the next mirror, and so on: taken afresh,
    each retry's timeout would keep its fetch thread 12 x 0.6 s, long after the
    watchdog answered EIO at 2 s.  So:
      - every reader gets EIO within timeout= + slack; status answers meanwhile;
      - no mirror is asked for those chunks after the reads' deadline (+ slack), and
        no chunk of more than 4 mirrors (0.6 s each in 2 s);
      - the fetch threads are free again: a 9th read, of good bytes, right after,
        gets the source's bytes (stuck threads would have left it queued until the
        watchdog answered it EIO too);
      - integrity has no failure (the reads ran out of time, not of mirrors), the bad
        answers are counted as the mirrors' bad_bytes; umount works and the daemon
        ends."""
    kits, big = bigkit
    data = (kits / "big.tar").read_bytes()
    want = (big / "data" / "big.bin").read_bytes()
    data_off, _ = member_offsets(kits / "big.tar")["data/big.bin"]
    timeout, hang, nmirrors = 2, 0.6, 12
    offs = [(4 + 4 * i) * (1 << 20) + 3 * BLOCK for i in range(8)]
    good = 37 * (1 << 20) + 5 * BLOCK
    chunk = lambda off: (data_off + off) // (1 << 20)
    assert len({chunk(o) for o in offs + [good]}) == 9
    servers = [serverlib.FaultServer({"/big.tar": data}) for _ in range(nmirrors)]
    try:
        for fs in servers:
            fs.start()
        m = mount_remote(mounter, servers[0].url("big.tar"), keys["ed25519"].pub,
                         *[f"mirror={fs.url('big.tar')}" for fs in servers[1:]], f"timeout={timeout}")
        target = m.path / "current" / "data" / "big.bin"
        for fs in servers:
            fs.clear_log()
            fs.hang = hang
            fs.flips = [(data_off + o, BLOCK) for o in offs]
        results = {}

        def reader(off):
            t = time.monotonic()
            results[off] = (pread_errno(target, off), time.monotonic() - t)

        t0 = time.monotonic()
        ths = [threading.Thread(target=reader, args=(o,), daemon=True) for o in offs]
        for t in ths:
            t.start()
        time.sleep(1.0)
        t1 = time.monotonic()
        (m.path / "status").read_text()
        assert time.monotonic() - t1 < 1.0, "status waited behind the stuck reads"
        for t in ths:
            t.join(timeout=3 * timeout + 10)
        assert not any(t.is_alive() for t in ths), results
        assert all(e == errno.EIO and secs < 3 * timeout for e, secs in results.values()), results
        # a read of good bytes, right after: a fetch thread takes it, a mirror serves it
        t1 = time.monotonic()
        fd = os.open(target, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            got = os.pread(fd, BLOCK, good)
        except OSError as e:
            raise AssertionError(f"the read after them failed ({errno.errorcode[e.errno]}) after "
                                 f"{time.monotonic() - t1:.1f} s: the fetch threads were still held") from None
        finally:
            os.close(fd)
        assert got == want[good:good + BLOCK]
        # what each mirror was asked for the bad blocks' chunks, and when
        time.sleep(2 * hang)
        asked = {chunk(o): [] for o in offs}
        for i, fs in enumerate(servers):
            for r in fs.requests:
                first = int(r.range.removeprefix("bytes=").split("-")[0]) if r.range else -1
                if first >= 0 and first // (1 << 20) in asked:
                    asked[first // (1 << 20)].append((i, r.at - t0))
        late = {c: [(i, round(at, 1)) for i, at in a if at > timeout + 1.5] for c, a in asked.items()}
        assert not any(late.values()), f"mirrors asked after the reads' deadline: {late}"
        assert all(1 <= len({i for i, _ in a}) <= 4 for a in asked.values()), asked
        st = m.status()
        assert st["integrity"]["failures"] == 0, st["integrity"]
        assert (m.path / "health").read_text().splitlines()[0] != "CRITICAL"
        bad = sum(metric_sum(m, "stellafs_remote_requests_total", mirror=fs.origin, result="bad_bytes")
                  for fs in servers)
        assert bad >= len(offs), "\n".join(l for l in metrics_lines(m) if "remote" in l)
        assert sum(x["failures"] for x in st["mirrors"]) >= len(offs), st["mirrors"]
        pid = daemon_pid(m.path)
        mounter.umount(m.path)
        deadline = time.monotonic() + 10
        while pid and time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.1)
        assert not (pid and os.path.exists(f"/proc/{pid}")), "the daemon did not exit within 10 s of umount"
    finally:
        for fs in servers:
            fs.stop()
