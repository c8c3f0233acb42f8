"""Black-box tests of the mounted tree (stellafs(8): "The mounted tree", "The control file",
"Programs"): kits are mounted with the real daemon (build/fs/stellafs) and what the
kernel hands back is compared with independent oracles: GNU tar's extraction of the same
kit, hashlib, `fsverity digest`, the sqlite3 CLI.

Every mount is unmounted by its fixture's teardown, pass or fail.  Mounting that does
not work is a failure, never a skip."""

import base64
import errno
import gzip
import hashlib
import io
import json
import mmap
import os
import random
import re
import stat
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

import kitlib
import storelib
from kitlib import (CREATED_AT, CREATED_EPOCH, MiB, BLOCK, assert_ok, file_item, link_item,
                    dir_item, metric, run, sort_items)

VERSION = "2025.01.15"     # kitlib.IDENTITY's version
ROOT_NAMES = {"current", "feeds", "snapshots", "status", "status.json", "health", "metrics",
              "control"}


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def extracted(tmp_path_factory, packed):
    """extracted(compress) -> GNU tar's extraction of the sample kit (umask 022)."""
    cache = {}

    def get(compress="none"):
        if compress not in cache:
            d = tmp_path_factory.mktemp(f"extract-{compress}")
            cache[compress] = kitlib.gnu_tar_extract_022(packed(compress).path, d / "x")
        return cache[compress]
    return get


def _hash_stream(f, chunk=65536):
    h = hashlib.sha256()
    for b in iter(lambda: f.read(chunk), b""):
        h.update(b)
    return h.hexdigest()


# --------------------------------------------------------------------------- the tree

@pytest.mark.parametrize("compress", kitlib.COMPRESSIONS)
def test_tree_equals_gnu_tar_extraction(compress, mounted_packed, extracted):
    """Every name, type, mode, size, content hash and symlink target under
    snapshots/VERSION equals GNU tar's extraction of the same kit (manifest/ excluded:
    the mount does not show it)."""
    pk, m = mounted_packed(compress)
    snap = m.snap(VERSION)
    assert "manifest" not in os.listdir(snap)
    want = kitlib.tree_listing(extracted(compress), exclude=("manifest",))
    got = kitlib.tree_listing(snap)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    assert not missing and not extra and not differ, \
        (f"missing {missing}\nextra {extra}\n" +
         "\n".join(f"{k}: mount {got[k]} tar {want[k]}" for k in differ))
    # the sample tree's special cases are really there
    assert got["sizes/size-0"][:2] == ("file", 0)
    assert got["long/" + kitlib.LONG_COMPONENT][0] == "file"
    assert got[kitlib.UNICODE_NAME][0] == "file"
    assert got["empty"] == ("dir", 0o755) and os.listdir(snap / "empty") == []
    assert got["secrets"] == ("dir", 0o700)
    assert got["secrets/token"][3] == 0o600
    assert got["tools/run.sh"][3] == 0o755
    assert got["feeds/latest"] == ("symlink", "vuln-db")
    assert got["tools/db"] == ("symlink", "../feeds/vuln-db/vuln.db")
    # directories implied by names are 0755
    assert got["a/b/c"] == ("dir", 0o755)


def test_tree_equals_source_tree(mounted_packed, src_tree):
    """Independent of tar: the mounted snapshot equals the source tree it was packed from."""
    _, m = mounted_packed("none")
    assert kitlib.tree_listing(m.snap(VERSION)) == kitlib.tree_listing(src_tree)


def test_first_walk_after_mount_equals_source(tmp_path, keys, mounter):
    """The first walk after a mount, caches dropped, is answered from READDIRPLUS (entries
    and attributes with each listing, no LOOKUP per name): find's sizes, modes and types,
    and stat's inode numbers afterwards, are the source's and the mount's own."""
    src = tmp_path / "src"
    for d in range(12):
        for i in range(60):
            p = src / f"d{d:02d}" / f"f{i:03d}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(os.urandom((d * 61 + i * 17) % 3000))
            if i % 7 == 0:
                os.chmod(p, 0o600)
    (src / "d00" / "link").symlink_to("f001.json")
    kit = tmp_path / "kit.tar"
    kitlib.assert_ok(kitlib.pack(src, kit, [keys["ed25519"]]))
    m = mounter.mount(kit, keys["ed25519"].pub)
    kitlib.drop_caches()
    fmt = "%y %m %s %p\n"
    walk = lambda root: sorted(subprocess.run(
        ["find", ".", "-mindepth", "1", "-printf", fmt], cwd=root, capture_output=True,
        text=True, check=True, timeout=60).stdout.splitlines())
    got = [ln for ln in walk(m.snap(VERSION)) if not ln.startswith("d ")]
    assert got == [ln for ln in walk(src) if not ln.startswith("d ")]
    inos = subprocess.run(["find", ".", "-printf", "%i %p\n"], cwd=m.snap(VERSION),
                          capture_output=True, text=True, check=True, timeout=60).stdout
    for line in inos.splitlines()[1:50]:
        ino, rel = line.split(" ", 1)
        assert os.lstat(m.snap(VERSION) / rel).st_ino == int(ino), rel


def test_walk_of_large_directories_needs_no_lookup_per_name(tmp_path, keys):
    """Directories larger than one READDIRPLUS batch are listed with attributes to the
    end: the kernel's "auto" mode would ask plain READDIR after the first batch and then
    a LOOKUP for every later name (the daemon's own -d trace counts the requests)."""
    src = tmp_path / "src"
    for d in range(3):
        for i in range(400):
            p = src / f"d{d}" / f"CVE-{i:05d}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x" * (i % 50))
    kit = tmp_path / "kit.tar"
    kitlib.assert_ok(kitlib.pack(src, kit, [keys["ed25519"]]))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = open(tmp_path / "trace.log", "w")
    p = subprocess.Popen([str(kitlib.FS_BIN), "-f", "-d", "-o", f"trust={keys['ed25519'].pub}", str(kit), str(mnt)],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mnt):
            assert p.poll() is None and time.monotonic() < deadline, "the mount did not come up"
            time.sleep(0.05)
        kitlib.drop_caches()
        out = subprocess.run(["find", ".", "-printf", "%s %p\n"], cwd=mnt / "current", capture_output=True,
                             text=True, check=True, timeout=60).stdout
        assert len(out.splitlines()) == 1 + 3 + 1200
    finally:
        subprocess.run(["umount", str(mnt)], timeout=30)
        p.wait(timeout=30)
        log.close()
    ops = re.findall(r"opcode: ([A-Z_]+)", (tmp_path / "trace.log").read_text())
    assert ops.count("READDIRPLUS") > 3
    assert ops.count("READDIR") == 0
    assert ops.count("LOOKUP") < 40, f"{ops.count('LOOKUP')} LOOKUPs for a walk of 1200 files"


def test_top_level_layout(mounted_packed):
    pk, m = mounted_packed("none")
    assert set(os.listdir(m.path)) == ROOT_NAMES
    assert os.readlink(m.path / "current") == f"snapshots/{VERSION}"
    assert os.readlink(m.path / "feeds") == "current/feeds"
    assert os.listdir(m.path / "snapshots") == [VERSION]
    for n in ("status", "status.json", "health", "metrics", "control"):
        st = os.lstat(m.path / n)
        assert stat.S_ISREG(st.st_mode), n
        assert (st.st_uid, st.st_gid) == (0, 0), n
    for n in ("current", "feeds"):
        assert stat.S_ISLNK(os.lstat(m.path / n).st_mode), n
    st = os.lstat(m.path / "snapshots")
    assert stat.S_ISDIR(st.st_mode)
    # the data is reachable through both symlinks
    src = pk.src / "feeds/vuln-db/vuln.db"
    want = kitlib.sha256_file(src)
    assert kitlib.sha256_file(m.path / "feeds/vuln-db/vuln.db") == want
    assert kitlib.sha256_file(m.path / "current/feeds/vuln-db/vuln.db") == want
    assert kitlib.sha256_file(m.path / "current/tools/db") == want  # symlink inside the kit
    assert os.path.realpath(m.path / "feeds") == str(m.snap(VERSION) / "feeds")


@pytest.mark.parametrize("compress", ["none", "zstd"])
def test_readdir_gives_d_type(compress, mounted_packed):
    """readdir(3) reports each entry's type (not DT_UNKNOWN), and it agrees with lstat;
    os.scandir without following symlinks agrees too."""
    _, m = mounted_packed(compress)
    dirs = [m.path] + [Path(dp) for dp, _, _ in os.walk(m.snap(VERSION))] + \
           [m.path / "snapshots"]
    kinds = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}
    for d in dirs:
        types = kitlib.readdir_types(d)
        assert types.get(".") == "dir" and types.get("..") == "dir", (d, types)
        names = set(types) - {".", ".."}
        assert names == set(os.listdir(d)), d
        for n in names:
            want = kinds.get(stat.S_IFMT(os.lstat(d / n).st_mode), "other")
            assert types[n] == want, f"{d / n}: d_type {types[n]}, lstat says {want}"
        for e in os.scandir(d):
            st = os.lstat(e.path)
            assert e.is_symlink() == stat.S_ISLNK(st.st_mode), e.path
            assert e.is_dir(follow_symlinks=False) == stat.S_ISDIR(st.st_mode), e.path
            assert e.is_file(follow_symlinks=False) == stat.S_ISREG(st.st_mode), e.path


def test_owner_root_and_mtime_created_at(mounted_packed):
    """Owner root everywhere; files and symlinks carry the kit's mtime (= createdAt)."""
    _, m = mounted_packed("gzip")
    for dp, dn, fn in os.walk(m.snap(VERSION)):
        for n in dn + fn:
            p = Path(dp) / n
            st = os.lstat(p)
            assert (st.st_uid, st.st_gid) == (0, 0), p
            if not stat.S_ISDIR(st.st_mode):
                assert int(st.st_mtime) == CREATED_EPOCH, f"{p}: mtime {st.st_mtime}"


@pytest.mark.parametrize("compress", ["none", "zstd"])
def test_xattrs_equal_sha256sum_and_fsverity_digest(compress, mounted_packed, extracted):
    _, m = mounted_packed(compress)
    ex = extracted(compress)
    n = 0
    for dp, _, fn in os.walk(ex):
        for name in fn:
            rel = (Path(dp) / name).relative_to(ex)
            if rel.parts[0] == "manifest" or os.path.islink(Path(dp) / name):
                continue
            p = m.snap(VERSION) / rel
            names = set(os.listxattr(p, follow_symlinks=False))
            assert {"user.stella.sha256", "user.stella.fsverity",
                    "user.stella.snapshot"} <= names, (rel, names)
            want_sha = kitlib.sh("sha256sum", Path(dp) / name).stdout.split()[0]
            assert os.getxattr(p, "user.stella.sha256") == want_sha.encode(), rel
            assert os.getxattr(p, "user.stella.fsverity") == \
                kitlib.fsverity_file(Path(dp) / name).encode(), rel
            assert os.getxattr(p, "user.stella.snapshot") == VERSION.encode(), rel
            n += 1
    assert n >= 15
    with pytest.raises(OSError) as ei:
        os.getxattr(m.snap(VERSION) / "a-b.txt", "user.stella.nonexistent")
    assert ei.value.errno == errno.ENODATA


def test_edge_reads(mounted_packed):
    """Reads at block edges, past EOF, of empty files, with odd sizes and offsets."""
    pk, m = mounted_packed("none")
    snap = m.snap(VERSION)
    for size, name in kitlib.SIZE_FILES.items():
        src = (pk.src / name).read_bytes()
        fd = os.open(snap / name, os.O_RDONLY)
        try:
            assert os.fstat(fd).st_size == size
            for off, ln in [(0, 1), (0, size + 10), (BLOCK - 1, 2), (BLOCK, BLOCK),
                            (size - 1, 5), (size, 10), (size + BLOCK, 10),
                            (max(0, size // 2 - 3), 7777), (3 * BLOCK + 17, 3 * BLOCK)]:
                if off < 0:
                    continue
                assert os.pread(fd, ln, off) == src[off:off + ln], (name, off, ln)
        finally:
            os.close(fd)
    assert (snap / "sizes/size-0").read_bytes() == b""
    assert (snap / "long" / kitlib.LONG_COMPONENT).read_bytes() == b"long name\n"
    assert json.loads((snap / kitlib.UNICODE_NAME).read_bytes()) == {"greek": "αβγ"}


def test_random_preads_equal_source(mounted_packed):
    """Many random preads, across every compression, equal the source bytes."""
    rng = random.Random(5)
    for compress in kitlib.COMPRESSIONS:
        pk, m = mounted_packed(compress)
        for name in ("feeds/vuln-db/vuln.db", "feeds/vuln-db/index.bin"):
            src = (pk.src / name).read_bytes()
            fd = os.open(m.snap(VERSION) / name, os.O_RDONLY)
            try:
                for _ in range(60):
                    off = rng.randrange(len(src) + 100)
                    ln = rng.choice([1, 511, BLOCK, 3 * BLOCK + 1, 70000])
                    assert os.pread(fd, ln, off) == src[off:off + ln], (compress, name, off)
            finally:
                os.close(fd)


def test_everything_read_only_except_control(mounted_packed):
    _, m = mounted_packed("none")
    snap = m.snap(VERSION)
    f = snap / "a-b.txt"
    ops = {
        "open O_WRONLY": lambda: os.open(f, os.O_WRONLY),
        "open O_RDWR": lambda: os.open(f, os.O_RDWR),
        "open O_TRUNC": lambda: os.open(f, os.O_WRONLY | os.O_TRUNC),
        "open O_APPEND": lambda: os.open(f, os.O_WRONLY | os.O_APPEND),
        "create in snapshot": lambda: os.open(snap / "new", os.O_WRONLY | os.O_CREAT, 0o644),
        "create at root": lambda: os.open(m.path / "new", os.O_WRONLY | os.O_CREAT, 0o644),
        "create in snapshots/": lambda: os.open(m.path / "snapshots/x",
                                                os.O_WRONLY | os.O_CREAT, 0o644),
        "write status": lambda: os.open(m.path / "status", os.O_WRONLY),
        "write status.json": lambda: os.open(m.path / "status.json", os.O_WRONLY),
        "write metrics": lambda: os.open(m.path / "metrics", os.O_WRONLY),
        "truncate": lambda: os.truncate(f, 0),
        "unlink": lambda: os.unlink(f),
        "unlink current": lambda: os.unlink(m.path / "current"),
        "unlink control": lambda: os.unlink(m.path / "control"),
        "mkdir": lambda: os.mkdir(snap / "d"),
        "mkdir root": lambda: os.mkdir(m.path / "d"),
        "mkdir snapshots": lambda: os.mkdir(m.path / "snapshots/2099.01.01"),
        "rmdir": lambda: os.rmdir(snap / "empty"),
        "rmdir snapshot": lambda: os.rmdir(snap),
        "rename": lambda: os.rename(f, snap / "renamed"),
        "rename root": lambda: os.rename(m.path / "status", m.path / "s2"),
        "symlink": lambda: os.symlink("a-b.txt", snap / "ln"),
        "link": lambda: os.link(f, snap / "hl"),
        "mknod fifo": lambda: os.mkfifo(snap / "fifo"),
        "chmod": lambda: os.chmod(f, 0o600),
        "chmod dir": lambda: os.chmod(snap / "empty", 0o700),
        "chown": lambda: os.chown(f, 1, 1),
        "utime": lambda: os.utime(f, (0, 0)),
        "setxattr": lambda: os.setxattr(f, "user.x", b"1"),
        "removexattr": lambda: os.removexattr(f, "user.stella.sha256"),
    }
    bad = {}
    for what, op in ops.items():
        try:
            r = op()
            if isinstance(r, int):
                os.close(r)
            bad[what] = "succeeded"
        except OSError as e:
            if e.errno != errno.EROFS:
                bad[what] = f"errno {e.errno} ({errno.errorcode.get(e.errno)})"
    assert not bad, f"expected EROFS for every write: {bad}"
    # and nothing changed
    assert f.read_bytes() == b"dash sorts before slash\n"
    assert os.lstat(f).st_mode & 0o7777 == 0o644
    assert set(os.listdir(m.path)) == ROOT_NAMES


def test_other_users_read_with_modes_enforced(mounted_packed):
    """allow_other: an unprivileged user reads status files and 0644 files; a 0600 file
    and writing control are refused with EACCES."""
    pk, m = mounted_packed("none")
    snap = m.snap(VERSION)
    code = f"""
import errno, os, sys, json
m = {str(m.path)!r}; snap = {str(snap)!r}
out = {{}}
for n in ("status", "status.json", "health", "metrics", "control"):
    out[n] = len(open(os.path.join(m, n), "rb").read())
out["file"] = open(os.path.join(snap, "a-b.txt"), "rb").read().decode()
out["feeds"] = len(open(os.path.join(m, "feeds/vuln-db/index.bin"), "rb").read())
def err(f):
    try:
        f(); return 0
    except OSError as e:
        return e.errno
out["token"] = err(lambda: open(os.path.join(snap, "secrets/token"), "rb").read())
out["secrets_ls"] = err(lambda: os.listdir(os.path.join(snap, "secrets")))
def ctl():
    fd = os.open(os.path.join(m, "control"), os.O_WRONLY)
    try:
        os.write(fd, b"verify\\n")
    finally:
        os.close(fd)
out["control"] = err(ctl)
print(json.dumps(out))
"""
    cp = kitlib.as_nobody(code)
    assert cp.returncode == 0, kitlib.describe(cp)
    out = json.loads(cp.stdout)
    for n in ("status", "status.json", "health", "metrics"):
        assert out[n] > 0, n
    assert out["file"] == "dash sorts before slash\n"
    assert out["feeds"] == MiB + 1
    assert out["token"] == errno.EACCES
    assert out["secrets_ls"] == errno.EACCES
    assert out["control"] == errno.EACCES
    # root can, of course
    assert (snap / "secrets/token").read_bytes() == (pk.src / "secrets/token").read_bytes()


# --------------------------------------------------------------------------- a kit without merkle.bin

def test_hand_assembled_kit_without_merkle_bin(tmp_path, keys, mounter):
    """A kit assembled with tarfile (no manifest/merkle.bin: the daemon must hash the files
    itself) mounts and reads exactly like GNU tar extracts it."""
    rng = random.Random(11)
    big = rng.randbytes(300 * 1024 + 123)
    items = sort_items(kitlib.basic_items() + [
        file_item("big/blob.bin", big, 0o640),
        file_item("big/exact", rng.randbytes(8 * BLOCK)),
        link_item("big/alias", "blob.bin"),
        dir_item("private", 0o700),
    ])
    kit = kitlib.kit_from_items(tmp_path / "kit.tar", items, [keys["ecdsa"]])
    assert kitlib.MERKLE not in [ti.name for ti, _ in kitlib.kit_members(kit)]
    m = mounter.mount(kit, keys["ecdsa"].pub)
    ex = kitlib.gnu_tar_extract_022(kit, tmp_path / "x")
    snap = m.snap("2025.01.15")
    assert kitlib.tree_listing(snap) == kitlib.tree_listing(ex, exclude=("manifest",))
    # random preads inside the large file
    fd = os.open(snap / "big/blob.bin", os.O_RDONLY)
    try:
        for _ in range(100):
            off = rng.randrange(len(big))
            ln = rng.choice([1, BLOCK, 5000, 65536])
            assert os.pread(fd, ln, off) == big[off:off + ln]
    finally:
        os.close(fd)
    assert os.getxattr(snap / "big/blob.bin", "user.stella.fsverity") == \
        kitlib.fsverity_bytes(big).encode()
    assert os.getxattr(snap / "big/blob.bin", "user.stella.sha256") == \
        kitlib.sha256_hex(big).encode()


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_hand_assembled_compressed_kit_without_merkle_bin(compress, tmp_path, keys, mounter):
    rng = random.Random(12)
    big = rng.randbytes(200 * 1024 + 7)
    items = sort_items(kitlib.basic_items() + [file_item("x/big", big)])
    kit = kitlib.kit_from_items(tmp_path / "kit", items, [keys["ecdsa"]], compress=compress)
    m = mounter.mount(kit, keys["ecdsa"].pub)
    ex = kitlib.gnu_tar_extract_022(kit, tmp_path / "x")
    assert kitlib.tree_listing(m.snap("2025.01.15")) == \
        kitlib.tree_listing(ex, exclude=("manifest",))


def test_gzip_kit_of_small_members_gets_seek_points(tmp_path, keys, mounter):
    """A .tar.gz written as gzip members of 30 000 bytes (any writer may cut there, and
    each is shorter than deflate's 32 KiB window, so no point inside a member can be
    taken): seek points at member boundaries, about one per 4 MiB of tar stream (counted
    in the index with the sqlite3 tool), and random reads deep in the file read right."""
    rng = random.Random(31)
    big = rng.randbytes(20 * MiB)
    items = sort_items(kitlib.basic_items() + [file_item("x/big", big)])
    plain = kitlib.kit_from_items(tmp_path / "plain.tar", items, [keys["ed25519"]])
    raw = plain.read_bytes()
    kit = tmp_path / "kit.tar.gz"
    with open(kit, "wb") as f:
        for i in range(0, len(raw), 30000):
            f.write(gzip.compress(raw[i:i + 30000], mtime=0))
    assert kitlib.sh("gzip", "-dc", kit, text=False).stdout == raw
    cache = tmp_path / "cache"
    m = mounter.mount(kit, keys["ed25519"].pub, cache=cache)
    db = next(cache.glob("*.db"))
    points = int(kitlib.sh("sqlite3", db, "SELECT count(*) FROM point").stdout)
    assert points >= len(raw) // (4 * MiB), f"{points} seek points for {len(raw)} bytes"
    fd = os.open(m.snap("2025.01.15") / "x/big", os.O_RDONLY)
    try:
        for k in range(12):
            off = rng.randrange(0, len(big) - BLOCK)
            assert os.pread(fd, BLOCK, off) == big[off:off + BLOCK], off
    finally:
        os.close(fd)


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_compressed_kit_ending_in_an_empty_member_remounts(compress, tmp_path, keys, mounter):
    """A kit whose stream ends with an empty gzip member (bgzip writes one at the end of
    every file; `cat kit.gz empty.gz` makes one) or an empty zstd frame: a seek point
    taken where that member begins would stand at the very end of the stream, and the
    next mount, from the cached index, refused the points.  Mounted twice from one cache,
    the file reads back right both times."""
    src = tmp_path / "src"
    data = random.Random(17).randbytes(6 * MiB)
    kitlib._write(src / "feeds/big.bin", data)
    kit = tmp_path / "kit"
    assert_ok(kitlib.pack(src, kit, [keys["ed25519"]], compress=compress))
    empty = gzip.compress(b"", mtime=0) if compress == "gzip" else \
        kitlib.sh("zstd", "-q", "-c", input=b"", text=False).stdout
    with open(kit, "ab") as f:
        f.write(empty)
    cache = tmp_path / "cache"
    for _ in range(2):
        m = mounter.mount(kit, keys["ed25519"].pub, cache=cache)
        assert (m.snap("2025.01.15") / "feeds/big.bin").read_bytes() == data
        mounter.umount(m.path)


# --------------------------------------------------------------------------- data kit: sqlite, mmap, concurrency

LARGE = 24 * MiB


@pytest.fixture(scope="module")
def data_kit(tmp_path_factory, keys, stellakit_bin, stellafs_bin):
    """A source tree with a sqlite database (thousands of rows, many blocks) and a 24 MiB
    random file, packed uncompressed and mounted for the module."""
    d = tmp_path_factory.mktemp("datakit")
    src = d / "src"
    (src / "db").mkdir(parents=True)
    (src / "big").mkdir()
    db = src / "db" / "records.sqlite"
    sql = """
PRAGMA page_size=4096;
CREATE TABLE vuln (id INTEGER PRIMARY KEY, cve TEXT, score REAL, blob BLOB);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 6000)
INSERT INTO vuln SELECT i, printf('CVE-2025-%05d', i), (i * 37 % 100) / 10.0,
       randomblob(150 + i % 200) FROM n;
CREATE INDEX vuln_score ON vuln(score);
"""
    kitlib.sh("sqlite3", db, input=sql)
    assert db.stat().st_size > 200 * BLOCK
    rng = random.Random(24)
    (src / "big" / "large.bin").write_bytes(rng.randbytes(LARGE))
    (src / "big" / "small.txt").write_bytes(b"small\n")
    kit = d / "data.tar"
    assert_ok(kitlib.pack(src, kit, [keys["ed25519"]], compress="none"))
    m = kitlib.Mounter(d / "mounts")
    try:
        mnt = m.mount(kit, keys["ed25519"].pub)
        ex = kitlib.gnu_tar_extract_022(kit, d / "x")
        yield {"src": src, "kit": kit, "mount": mnt, "ex": ex,
               "large_sha": kitlib.sha256_file(src / "big/large.bin")}
    finally:
        bad = m.close()
        assert not bad, f"could not unmount {bad}"


SQL_QUERIES = [
    "SELECT count(*), sum(length(blob)), total(score) FROM vuln;",
    "SELECT id, cve, score, hex(blob) FROM vuln WHERE id % 397 = 0;",
    "SELECT cve FROM vuln WHERE score > 9.5 ORDER BY cve DESC LIMIT 20;",
    "SELECT score, count(*) FROM vuln GROUP BY score;",
    "SELECT hex(blob) FROM vuln WHERE cve = 'CVE-2025-05999';",
    "PRAGMA integrity_check;",
]


def test_sqlite_queries_equal_extracted_copy(data_kit):
    mdb = data_kit["mount"].snap(VERSION) / "db/records.sqlite"
    xdb = data_kit["ex"] / "db/records.sqlite"
    for q in SQL_QUERIES:
        a = kitlib.sh("sqlite3", "-readonly", mdb, q).stdout
        b = kitlib.sh("sqlite3", "-readonly", xdb, q).stdout
        assert a == b, q
        assert a.strip(), q
    assert kitlib.sh("sqlite3", "-readonly", mdb, "PRAGMA integrity_check;").stdout.strip() \
        == "ok"
    # immutable URI (what a scanner on a read-only medium would use)
    uri = f"file:{mdb}?immutable=1"
    assert kitlib.sh("sqlite3", uri, SQL_QUERIES[0]).stdout == \
        kitlib.sh("sqlite3", "-readonly", xdb, SQL_QUERIES[0]).stdout


def test_mmap_reads_equal_content(data_kit):
    p = data_kit["mount"].snap(VERSION) / "big/large.bin"
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert len(mm) == LARGE
        assert hashlib.sha256(mm).hexdigest() == data_kit["large_sha"]
        src = (data_kit["src"] / "big/large.bin").read_bytes()
        rng = random.Random(3)
        for _ in range(50):
            off = rng.randrange(LARGE)
            assert mm[off:off + 300] == src[off:off + 300]


def test_mmap_on_compressed_kits(mounted_packed):
    for compress in ("gzip", "zstd"):
        pk, m = mounted_packed(compress)
        name = "feeds/vuln-db/vuln.db"
        with open(m.snap(VERSION) / name, "rb") as f, \
                mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            assert hashlib.sha256(mm).hexdigest() == kitlib.sha256_file(pk.src / name), \
                compress


def _concurrent_hashes(path, n=8, chunk=131072):
    """N threads each hash the whole file; thread i starts at a different offset (so
    that cold reads hit different regions at once) and reads with a different chunk
    size, then puts the pieces in order.  Returns the list of digests (or exceptions)."""
    size = os.path.getsize(path)
    results = [None] * n
    barrier = threading.Barrier(n)

    def worker(i):
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                ck = chunk + i * 4099
                starts = list(range(0, size, ck))
                k = (i * len(starts)) // n
                order = starts[k:] + starts[:k]
                pieces = {}
                barrier.wait(timeout=30)
                for off in order:
                    data = os.pread(fd, ck, off)
                    assert len(data) == min(ck, size - off), (off, len(data))
                    pieces[off] = data
                h = hashlib.sha256()
                for off in starts:
                    h.update(pieces[off])
                results[i] = h.hexdigest()
            finally:
                os.close(fd)
        except Exception as e:  # reported by the caller
            results[i] = e

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
        assert not t.is_alive(), "a reader thread hung"
    return results


def test_concurrent_readers_of_large_file(data_kit):
    kitlib.drop_caches()
    res = _concurrent_hashes(data_kit["mount"].snap(VERSION) / "big/large.bin")
    assert res == [data_kit["large_sha"]] * 8, res


def _thread_nices(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue   # a worker that just retired
        out[int(tid)] = int(stat.rsplit(")", 1)[1].split()[16])   # field 19: nice
    return out


def test_worker_priority_stays_within_its_boost(data_kit):
    """Workers wait at the daemon's nice - 10 and hash at its nice (docs/mount.md).  A
    worker started by a boosted one inherits -10; boosts must stay relative to the
    daemon's own nice, not drift a further 10 lower with each generation of workers."""
    mnt = data_kit["mount"].path
    pids = [int(p) for p in subprocess.run(["pgrep", "-f", f" {mnt}$"], capture_output=True,
                                           text=True).stdout.split()]
    assert len(pids) == 1, f"daemon of {mnt}: {pids}"
    pid = pids[0]
    base = _thread_nices(pid)[pid]   # the main thread never boosts
    for _ in range(3):   # cold reads by many threads at once: new generations of workers
        kitlib.drop_caches()
        res = _concurrent_hashes(data_kit["mount"].snap(VERSION) / "big/large.bin", n=24,
                                 chunk=65536)
        assert res == [data_kit["large_sha"]] * 24
    nices = _thread_nices(pid)
    assert len(nices) > 2, nices
    assert min(nices.values()) == base - 10 and max(nices.values()) <= base, \
        f"daemon at nice {base}; thread nices {sorted(nices.values())} (waiting workers at " \
        f"{base - 10} need CAP_SYS_NICE: the tests run as root)"


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_concurrent_readers_of_compressed_kit(compress, mounted_packed):
    pk, m = mounted_packed(compress)
    kitlib.drop_caches()
    names = ["feeds/vuln-db/vuln.db", "feeds/vuln-db/index.bin"]
    out = {}

    def run_one(name):
        out[name] = _concurrent_hashes(m.snap(VERSION) / name, n=8, chunk=65536)

    ts = [threading.Thread(target=run_one, args=(n,)) for n in names]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=180)
        assert not t.is_alive(), "readers hung"
    for name in names:
        want = kitlib.sha256_file(pk.src / name)
        assert out[name] == [want] * 8, (name, out[name])


def test_zstd_kit_of_several_spans_by_concurrent_readers(tmp_path, keys, mounter):
    """Large reads of a zstd kit are checked in and sent from the decoded 4 MiB spans
    themselves (docs/mount.md 3.3), each span held while its reply is written: eight
    threads per file hashing at different offsets and chunk sizes, and `sha256sum` of each
    file, all at once, caches dropped, against sha256sum of the source files."""
    src = tmp_path / "src"
    rng = random.Random(77)
    text = base64.b64encode(rng.randbytes(15 * MiB))        # compressible: real frames
    kitlib._write(src / "feeds/text.b64", text[:19 * MiB + 777])
    kitlib._write(src / "feeds/random.bin", rng.randbytes(9 * MiB + 4097))
    kit = tmp_path / "kit.tar.zst"
    assert_ok(kitlib.pack(src, kit, [keys["ed25519"]], compress="zstd"))
    m = mounter.mount(kit, keys["ed25519"].pub)
    names = ["feeds/text.b64", "feeds/random.bin"]
    want = {n: kitlib.sh("sha256sum", src / n).stdout.split()[0] for n in names}
    kitlib.drop_caches()
    out = {}

    def run_one(name):
        out[name] = _concurrent_hashes(m.snap(VERSION) / name, n=8, chunk=MiB)

    ts = [threading.Thread(target=run_one, args=(n,)) for n in names]
    for t in ts:
        t.start()
    tools = [subprocess.Popen(["sha256sum", m.snap(VERSION) / n], stdout=subprocess.PIPE,
                              text=True) for n in names]
    got = {n: p.communicate(timeout=180)[0].split()[0] for n, p in zip(names, tools)}
    for t in ts:
        t.join(timeout=180)
        assert not t.is_alive(), "readers hung"
    assert got == want
    for name in names:
        assert out[name] == [want[name]] * 8, (name, out[name])


def test_concurrent_small_file_readers(data_kit, mounted_packed):
    """Threads reading many small files of different kits at once."""
    kitlib.drop_caches()
    jobs = []
    for compress in kitlib.COMPRESSIONS:
        pk, m = mounted_packed(compress)
        for rel, desc in kitlib.tree_listing(pk.src).items():
            if desc[0] == "file" and desc[1] < MiB:
                jobs.append((m.snap(VERSION) / rel, desc[2]))
    errors = []

    def worker(i):
        for p, want in jobs[i::6] + jobs[(i + 1) % 6::6]:
            try:
                with open(p, "rb") as f:
                    got = _hash_stream(f, 1000 + i)
                if got != want:
                    errors.append((str(p), "wrong content"))
            except OSError as e:
                errors.append((str(p), e))

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not errors, errors


# --------------------------------------------------------------------------- status, health, metrics

# Kit "fresh": created 2025-01-15, expires 2025-03-01; component "feeds" (warn 7, max 14)
# captured 2025-01-14; component "tools" (defaults 7 / 14) captured 2025-01-15.
# Kit "short": created 2025-01-15, expires 2025-01-25; component "feeds" warn 10 max 20.
KITS = {
    "fresh": dict(expires="2025-03-01T00:00:00Z",
                  components=["feeds=feeds,warn=7,max=14,captured-at=2025-01-14T00:00:00Z",
                              "tools=tools,captured-at=2025-01-15T00:00:00Z"]),
    "short": dict(expires="2025-01-25T00:00:00Z",
                  components=["feeds=feeds,warn=10,max=20,captured-at=2025-01-15T00:00:00Z"]),
}

# (kit, now, allow_expired, health, {component: status}, kit-expiry check status)
SCENARIOS = {
    "fresh": ("fresh", "2025-01-16T12:00:00Z", False, "HEALTHY",
              {"feeds": "OK", "tools": "OK"}, "OK"),
    "component-warn": ("fresh", "2025-01-23T00:00:00Z", False, "WARNING",
                       {"feeds": "WARNING", "tools": "WARNING"}, "OK"),
    "component-mixed": ("fresh", "2025-01-28T12:00:00Z", False, "CRITICAL",
                        {"feeds": "CRITICAL", "tools": "WARNING"}, "OK"),
    "component-critical": ("fresh", "2025-02-10T00:00:00Z", False, "CRITICAL",
                           {"feeds": "CRITICAL", "tools": "CRITICAL"}, "OK"),
    "expiring-3-days": ("short", "2025-01-22T00:00:00Z", False, "WARNING",
                        {"feeds": "OK"}, "WARNING"),
    "expired-allowed": ("short", "2025-01-26T00:00:00Z", True, "CRITICAL",
                        {"feeds": "WARNING"}, "CRITICAL"),
}


@pytest.fixture(scope="module")
def health_kits(tmp_path_factory, keys, stellakit_bin):
    d = tmp_path_factory.mktemp("healthkits")
    src = d / "src"
    kitlib._write(src / "feeds/db.json", b'{"records": 3}\n')
    kitlib._write(src / "feeds/more.bin", random.Random(9).randbytes(20000))
    kitlib._write(src / "tools/tool", b"#!/bin/sh\n", 0o755)
    out = {}
    for name, k in KITS.items():
        kit = d / f"{name}.tar"
        args = ["--created-at", CREATED_AT]
        for c in k["components"]:
            args += ["--component", c]
        cp = kitlib.run("pack", "-k", keys["ecdsa"].key, "--kit-id", "health-kit",
                        "--version", VERSION, "--sequence", "7", "--channel", "stable",
                        "--expires-at", k["expires"], *args, src, kit)
        assert_ok(cp)
        out[name] = kit
    out["src"] = src
    return out


def _days(a, b):
    return (kitlib.parse_time(a) - kitlib.parse_time(b)) / 86400


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_status_health_metrics(scenario, health_kits, keys, mounter):
    kitname, now, allow_expired, health, comp_status, expiry_status = SCENARIOS[scenario]
    kit = health_kits[kitname]
    opts = [f"now={now}"] + (["allow_expired"] if allow_expired else [])
    m = mounter.mount(kit, keys["ecdsa"].pub, *opts)
    _, man = kitlib.kit_manifest(kit)

    # status.json
    s = m.status()
    assert s["health"] == health
    assert s["current"] == VERSION
    assert s["snapshots"] == [VERSION]
    k = s["kit"]
    for f in ("kitId", "version", "sequence", "createdAt", "expiresAt"):
        assert k[f] == man[f], f
    assert abs(k["daysUntilExpiry"] - _days(man["expiresAt"], now)) <= 0.01
    comps = {c["name"]: c for c in s["components"]}
    assert set(comps) == set(man["components"]) == set(comp_status)
    for name, c in comps.items():
        mc = man["components"][name]
        assert c["path"] == mc["path"]
        assert c["capturedAt"] == mc["capturedAt"]
        assert abs(c["ageDays"] - _days(now, mc["capturedAt"])) <= 0.01, name
        assert c["status"] == comp_status[name], name
    assert s["integrity"]["failures"] == 0
    assert isinstance(s["integrity"]["verifiedBytes"], int)
    checks = {c["name"]: c for c in s["checks"]}
    assert len(checks) == len(s["checks"]), "duplicate check names"
    for c in s["checks"]:
        assert c["status"] in ("OK", "WARNING", "CRITICAL") and c["detail"], c
    exp = [c for c in s["checks"] if "expir" in c["name"]]
    assert len(exp) == 1 and exp[0]["status"] == expiry_status, s["checks"]
    worst = max(("OK", "WARNING", "CRITICAL").index(c["status"]) for c in s["checks"])
    assert ["HEALTHY", "WARNING", "CRITICAL"][worst] == health, "health is the worst check"

    # health: first line, then one line per check
    lines = m.text("health").splitlines()
    assert lines[0] == health
    assert len(lines) - 1 == len(s["checks"]), lines
    for c, ln in zip(s["checks"], lines[1:]):
        assert c["status"] in ln and c["name"] in ln, (c, ln)

    # status (human): names the kit, the version, the health
    txt = m.text("status")
    for w in (man["kitId"], VERSION, health, man["expiresAt"]):
        assert w in txt, w
    for name in comps:
        assert name in txt

    # metrics
    mt = m.metrics()
    assert abs(metric(mt, "offline_kit_age_days") - _days(now, man["createdAt"])) <= 0.01
    assert abs(metric(mt, "offline_kit_expiry_days") - _days(man["expiresAt"], now)) <= 0.01
    for name, mc in man["components"].items():
        assert abs(metric(mt, "feed_freshness_days", component=name) -
                   _days(now, mc["capturedAt"])) <= 0.01, name
    assert metric(mt, "trust_store_valid") == 1
    assert metric(mt, "stellafs_health_status") == ["HEALTHY", "WARNING", "CRITICAL"].index(health)
    assert metric(mt, "stellafs_integrity_failures_total") == 0
    assert metric(mt, "stellafs_verified_bytes_total") >= 0
    assert metric(mt, "stellafs_snapshot_switches_total") == 0

    # `stellakit status MOUNTPOINT` exits 0 / 1 / 2
    cp = run("status", m.path)
    assert cp.returncode == ["HEALTHY", "WARNING", "CRITICAL"].index(health), kitlib.describe(cp)
    cpj = run("status", m.path, "--json")
    assert json.loads(cpj.stdout)["health"] == health


def test_status_file_sizes_match_content(health_kits, keys, mounter):
    """stat() sizes of the generated files let `cat`, `read()` to EOF and mmap-less
    readers see the whole text; two reads give the same text."""
    m = mounter.mount(health_kits["fresh"], keys["ecdsa"].pub, "now=2025-01-16T00:00:00Z")
    for n in ("status", "status.json", "health", "metrics"):
        a = (m.path / n).read_bytes()
        b = kitlib.sh("cat", m.path / n, text=False).stdout
        assert a == b and a.endswith(b"\n"), n
    json.loads((m.path / "status.json").read_bytes())


def test_verified_bytes_count_reads(health_kits, keys, mounter):
    m = mounter.mount(health_kits["fresh"], keys["ecdsa"].pub, "now=2025-01-16T00:00:00Z")
    before = metric(m.metrics(), "stellafs_verified_bytes_total")
    data = (m.snap(VERSION) / "feeds/more.bin").read_bytes()
    assert data == (health_kits["src"] / "feeds/more.bin").read_bytes()
    after = metric(m.metrics(), "stellafs_verified_bytes_total")
    assert after - before >= len(data)
    s = m.status()
    assert s["integrity"]["verifiedBytes"] >= before + len(data)
    assert s["integrity"]["failures"] == 0


# --------------------------------------------------------------------------- control

@pytest.fixture
def small_mount(small_tree, keys, mounter, tmp_path, stellakit_bin):
    kit = tmp_path / "small.tar"
    assert_ok(kitlib.pack(small_tree, kit, [keys["ecdsa"]]))
    return mounter.mount(kit, keys["ecdsa"].pub)


def _log_lines(m):
    return [ln for ln in m.text("control").splitlines() if ln and not ln.startswith("#")]


CONTROL_CASES = [
    ("verify", 0, "ok"),
    ("verify all", 0, "ok"),
    (f"verify {VERSION}", 0, "ok"),
    ("verify 1999.01.01", errno.ENOENT, "ENOENT"),
    ("activate 1999.01.01", errno.ENOENT, "ENOENT"),
    (f"activate {VERSION}", 0, "ok"),
    ("rollback", errno.ENOENT, "ENOENT"),
    ("import /x", errno.EOPNOTSUPP, "EOPNOTSUPP"),
    (f"remove {VERSION}", errno.EBUSY, "EBUSY"),
    ("bogus", errno.EINVAL, "EINVAL"),
    ("gc keep=x", errno.EINVAL, "EINVAL"),
    ("gc keep=", errno.EINVAL, "EINVAL"),
    ("activate", errno.EINVAL, "EINVAL"),
    ("reload", 0, "ok"),
]


@pytest.mark.parametrize("cmd,err,word", CONTROL_CASES, ids=[c[0] for c in CONTROL_CASES])
def test_control_command(cmd, err, word, small_mount):
    m = small_mount
    got = m.control(cmd)
    assert got == err, f"{cmd!r}: errno {got} ({errno.errorcode.get(got)}), " \
                       f"expected {err} ({errno.errorcode.get(err)})"
    lines = _log_lines(m)
    assert lines, m.text("control")
    last = lines[-1]
    assert cmd in last and f"-> {word}" in last, last
    assert "uid=0" in last
    # the mount is unchanged and still serves
    assert os.readlink(m.path / "current") == f"snapshots/{VERSION}"
    assert (m.snap(VERSION) / "notes.txt").read_bytes() == b"notes\n"


def test_control_log_keeps_order(small_mount):
    m = small_mount
    cmds = ["verify", "bogus", "reload", "rollback"]
    for c in cmds:
        m.control(c)
    lines = _log_lines(m)[-4:]
    for c, ln in zip(cmds, lines):
        assert f" {c} -> " in ln, (c, ln)
    s = m.status()
    assert s["health"] in ("HEALTHY", "WARNING", "CRITICAL")


def test_control_echo_from_shell(small_mount):
    """`echo verify > control` as an operator types it."""
    m = small_mount
    cp = kitlib.sh("bash", "-c", f"echo verify > '{m.path}/control'", check=False)
    assert cp.returncode == 0, kitlib.describe(cp)
    cp = kitlib.sh("bash", "-c", f"echo bogus > '{m.path}/control'", check=False)
    assert cp.returncode != 0 and "Invalid argument" in cp.stderr, kitlib.describe(cp)


def test_control_hostile_lines(small_mount):
    """Oversized, NUL-laden or binary command lines are refused (EINVAL or a size
    errno) and the daemon keeps serving."""
    m = small_mount
    for cmd in [b"\xff\xfe\n", b"a" * 100000, b"activate " + b"x" * 5000,
                b"verify ../../etc", b"gc keep=-1", b"gc keep=99999999999999999999999"]:
        got = m.control(cmd)
        assert got in (errno.EINVAL, errno.E2BIG, errno.EFBIG, errno.ENAMETOOLONG,
                       errno.EMSGSIZE, errno.ENOENT), (cmd[:40], got)
    assert m.control("verify") == 0
    assert (m.snap(VERSION) / "notes.txt").read_bytes() == b"notes\n"


@pytest.mark.parametrize("cmd", [b"verify\0all", f"activate {VERSION}\0junk".encode()])
def test_control_line_with_nul_is_refused(cmd, small_mount):
    """A command line with a NUL byte is malformed (docs/mount.md section 9): EINVAL, not the
    command cut at the NUL."""
    m = small_mount
    assert m.control(cmd) == errno.EINVAL, _log_lines(m)[-1:]


def test_control_unprivileged_write_refused(small_mount):
    m = small_mount
    n = len(_log_lines(m))
    cp = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                         "sh", "-c", f"echo verify > '{m.path}/control'"],
                        capture_output=True, text=True, timeout=30)
    assert cp.returncode != 0 and "ermission denied" in cp.stderr, kitlib.describe(cp)
    code = f"""
import os, errno
try:
    fd = os.open({str(m.path / 'control')!r}, os.O_WRONLY)
    os.write(fd, b"reload\\n"); os.close(fd); print(0)
except OSError as e:
    print(e.errno)
print(len(open({str(m.path / 'control')!r}).read()) > 0)
"""
    cp = kitlib.as_nobody(code)
    assert cp.stdout.split() == [str(errno.EACCES), "True"], kitlib.describe(cp)
    # the refused commands did not run (they are not logged as run)
    assert not any("-> ok" in ln for ln in _log_lines(m)[n:])


def test_control_admin_gid(small_tree, keys, mounter, tmp_path):
    kit = tmp_path / "small.tar"
    assert_ok(kitlib.pack(small_tree, kit, [keys["ecdsa"]]))
    m = mounter.mount(kit, keys["ecdsa"].pub, "admin_gid=4242")
    code = f"""
import os
fd = os.open({str(m.path / 'control')!r}, os.O_WRONLY)
os.write(fd, b"verify\\n"); os.close(fd); print("ok")
"""
    cp = kitlib.as_nobody(code, groups=(4242,))
    assert cp.returncode == 0 and cp.stdout.strip() == "ok", kitlib.describe(cp)
    assert any("uid=65534" in ln and "verify -> ok" in ln for ln in _log_lines(m))
    cp = kitlib.as_nobody(code, groups=(4243,))
    assert cp.returncode != 0 and "Permission denied" in cp.stderr, kitlib.describe(cp)


def test_reload_of_a_hostile_replacement(small_tree, keys, mounter, tmp_path):
    """The kit file replaced (renamed over) by a gzip bomb whose first member carries a
    200 MiB pax header: `reload` judges the kit the mount has open, not what the path
    names now, so it succeeds without reading a byte of the bomb; the daemon stays small
    and alive, and the mounted snapshot keeps serving from the file it opened."""
    kit = tmp_path / "small.tar.gz"
    assert_ok(kitlib.pack(small_tree, kit, [keys["ecdsa"]], compress="gzip"))
    m = mounter.mount(kit, keys["ecdsa"].pub)
    want = (m.snap(VERSION) / "notes.txt").read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo(kitlib.MANIFEST)
        ti.size = 2
        ti.pax_headers = {"comment": "A" * (200 << 20)}
        tf.addfile(ti, io.BytesIO(b"{}"))
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(gzip.compress(buf.getvalue(), compresslevel=1, mtime=0))
    del buf
    os.replace(bomb, kit)
    r = m.control("reload")
    assert r == 0, f"reload after the path was replaced: {errno.errorcode.get(r, r)}"
    assert "reload -> ok" in _log_lines(m)[-1] and "1 trusted signature" in _log_lines(m)[-1]
    assert (m.snap(VERSION) / "notes.txt").read_bytes() == want
    pid = storelib.daemon_pids(m.path)[0]
    rss = int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[1])
    assert rss < 100 * 1024, f"the daemon peaked at {rss} KiB reading the bomb's head"


def test_reload_rereads_trust_store(small_tree, keys, mounter, tmp_path):
    """`reload` re-reads the trust keys: once they no longer vouch for the kit the command
    fails with EKEYREJECTED, trust_store_valid drops to 0 and health turns CRITICAL;
    restored, all is well again.  Files stay readable throughout."""
    kit = tmp_path / "small.tar"
    assert_ok(kitlib.pack(small_tree, kit, [keys["ecdsa"]]))
    trust = tmp_path / "trust.pub"
    trust.write_bytes(keys["ecdsa"].pub.read_bytes())
    m = mounter.mount(kit, trust)
    assert metric(m.metrics(), "trust_store_valid") == 1
    assert m.status()["health"] == "HEALTHY"
    for bad in (keys["ecdsa2"].pub.read_bytes(), b"not a key\n"):
        trust.write_bytes(bad)
        assert m.control("reload") == errno.EKEYREJECTED
        assert "reload -> EKEYREJECTED" in _log_lines(m)[-1]
        assert metric(m.metrics(), "trust_store_valid") == 0
        s = m.status()
        assert s["health"] == "CRITICAL"
        assert any(c["status"] == "CRITICAL" and "signature" in c["name"] for c in s["checks"])
        assert (m.snap(VERSION) / "notes.txt").read_bytes() == b"notes\n"
    trust.write_bytes(keys["ecdsa"].pub.read_bytes())
    assert m.control("reload") == 0
    assert metric(m.metrics(), "trust_store_valid") == 1
    assert m.status()["health"] == "HEALTHY"
