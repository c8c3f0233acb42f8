"""Black-box tests of stellafs against bad input (docs/kit-format.md sections 12-13, stellafs(8): "The
mounted tree"): refused kits never get mounted and exit with the code of docs/kit-format.md section 12 and one line;
a kit tampered with after mounting returns EIO for the bad blocks, never wrong data;
the index cache cannot be used to smuggle in anything the signed manifest does not say.

All mounts are unmounted by fixture teardown, pass or fail."""

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import kitlib
import storelib
from kitlib import (BLOCK, MiB, Member, assert_fs_fail, assert_ok, file_item, link_item,
                    metric, sort_items, split_items)

VERSION = "2025.01.15"


@pytest.fixture(scope="module")
def key(keys):
    return keys["ecdsa"]


def assert_not_mounted(mnt, before=()):
    assert not kitlib.is_mounted(mnt), f"{mnt} is mounted"
    assert sorted(os.listdir(mnt)) == sorted(before), f"{mnt} changed: {os.listdir(mnt)}"


def refuse(mounter, kit, trust, *opts, code, keywords=()):
    """Mount KIT expecting refusal with CODE; checks the one-line message and that
    nothing got mounted on the (empty) mount point."""
    cp, mnt = mounter.try_mount(kit, trust, *opts)
    line = assert_fs_fail(cp, code, *keywords)
    assert_not_mounted(mnt)
    return line


# --------------------------------------------------------------------------- refused kits

def _items(seed=7):
    return kitlib.basic_items(seed)


def test_refuse_garbage(tmp_path, key, mounter):
    kit = tmp_path / "garbage.tar"
    kit.write_bytes(random.Random(1).randbytes(20000))
    refuse(mounter, kit, key.pub, code=3)


def test_refuse_empty_file(tmp_path, key, mounter):
    kit = tmp_path / "empty.tar"
    kit.write_bytes(b"")
    refuse(mounter, kit, key.pub, code=3)


@pytest.mark.parametrize("compress", kitlib.COMPRESSIONS)
def test_refuse_truncated(compress, tmp_path, key, mounter):
    rng = random.Random(3)
    items = sort_items(_items() + [file_item("big", rng.randbytes(100000))])
    kit = kitlib.kit_from_items(tmp_path / "kit", items, [key], compress=compress)
    data = kit.read_bytes()
    kit.write_bytes(data[:len(data) * 2 // 3])
    refuse(mounter, kit, key.pub, code=3, keywords=(("truncated", "unexpected end", "short",
                                                     "corrupt"),))


def test_refuse_unlisted_member(tmp_path, key, mounter):
    arts, members = split_items(_items())
    members.append(Member("zz-unlisted", b"smuggled\n"))
    kit = kitlib.signed_kit(tmp_path / "kit", kitlib.make_manifest(arts), members, [key])
    refuse(mounter, kit, key.pub, code=3, keywords=("zz-unlisted",))


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/../../evil", "a//b"])
def test_refuse_unsafe_names(name, tmp_path, key, mounter):
    items = _items() + [file_item(name, b"evil\n")]
    kit = kitlib.kit_from_items(tmp_path / "kit", items, [key])
    refuse(mounter, kit, key.pub, code=3)


def test_refuse_symlink_escaping(tmp_path, key, mounter):
    items = sort_items(_items() + [link_item("dir/escape", "../../etc/passwd")])
    kit = kitlib.kit_from_items(tmp_path / "kit", items, [key])
    refuse(mounter, kit, key.pub, code=3, keywords=("dir/escape",))


@pytest.mark.parametrize("typ", ["hardlink", "chr", "fifo"])
def test_refuse_unsafe_types(typ, tmp_path, key, mounter):
    arts, members = split_items(_items())
    members.append(Member("zz", type=typ, target="a.txt"))
    arts.append({"name": "zz", "size": 0, "sha256": kitlib.sha256_hex(b""),
                 "fsverity": kitlib.fsverity_bytes(b""), "mode": 0o644})
    kit = kitlib.signed_kit(tmp_path / "kit", kitlib.make_manifest(arts), members, [key])
    refuse(mounter, kit, key.pub, code=3)


def test_refuse_size_mismatch(tmp_path, key, mounter):
    items = _items()
    for it in items:
        if it.name == "dir/b.bin":
            it.entry["size"] += 1
    kit = kitlib.kit_from_items(tmp_path / "kit", items, [key])
    refuse(mounter, kit, key.pub, code=4, keywords=("dir/b.bin",))


def test_digest_mismatch_is_refused_or_never_served(tmp_path, key, mounter):
    """Same size, different bytes than the manifest says: refused with 4, or mounted
    and every read of the file fails with EIO (it is never served)."""
    rng = random.Random(8)
    good = rng.randbytes(50000)
    bad = bytearray(good)
    bad[30000] ^= 0x55
    items = sort_items(_items() + [file_item("x.bin", good)])
    for it in items:
        if it.name == "x.bin":
            it.member.data = bytes(bad)
    kit = kitlib.kit_from_items(tmp_path / "kit", items, [key])
    cp, mnt = mounter.try_mount(kit, key.pub)
    if cp.returncode != 0:
        assert_fs_fail(cp, 4, "x.bin")
        assert_not_mounted(mnt)
        return
    assert kitlib.is_mounted(mnt)
    p = mnt / "snapshots" / VERSION / "x.bin"
    with pytest.raises(OSError) as ei:
        p.read_bytes()
    assert ei.value.errno == errno.EIO
    fd = os.open(p, os.O_RDONLY)
    try:
        assert os.pread(fd, BLOCK, 0) == good[:BLOCK]   # blocks before are fine
        with pytest.raises(OSError) as ei:
            os.pread(fd, BLOCK, 7 * BLOCK)               # the bad block: 30000 // 4096
        assert ei.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert (mnt / "health").read_text().splitlines()[0] == "CRITICAL"


def test_refuse_untrusted_key(tmp_path, keys, mounter):
    kit = kitlib.kit_from_items(tmp_path / "kit", _items(), [keys["untrusted"]])
    refuse(mounter, kit, keys["ecdsa"].pub, code=5)


def test_refuse_below_threshold(tmp_path, keys, mounter):
    kit = kitlib.kit_from_items(tmp_path / "kit", _items(), [keys["ecdsa"]])
    tdir = tmp_path / "trust"
    tdir.mkdir()
    shutil.copy(keys["ecdsa"].pub, tdir / "a.pub")
    shutil.copy(keys["ecdsa2"].pub, tdir / "b.pub")
    refuse(mounter, kit, tdir, "threshold=2", code=5)
    # the same kit signed by both keys mounts with threshold=2
    kit2 = kitlib.kit_from_items(tmp_path / "kit2", _items(), [keys["ecdsa"], keys["ecdsa2"]])
    m = mounter.mount(kit2, tdir, "threshold=2")
    assert (m.snap(VERSION) / "a.txt").read_bytes() == b"hello, offline world\n"


def test_refuse_same_key_twice_for_threshold(tmp_path, keys, mounter):
    """Two signature lines by one key are one distinct key."""
    kit = kitlib.kit_from_items(tmp_path / "kit", _items(), [keys["ecdsa"], keys["ecdsa"]])
    tdir = tmp_path / "trust"
    tdir.mkdir()
    shutil.copy(keys["ecdsa"].pub, tdir / "a.pub")
    shutil.copy(keys["ecdsa2"].pub, tdir / "b.pub")
    refuse(mounter, kit, tdir, "threshold=2", code=5)


def test_refuse_manifest_changed_after_signing(tmp_path, key, mounter):
    arts, members = split_items(_items())
    mbytes = kitlib.dump_manifest(kitlib.make_manifest(arts))
    sig = kitlib.sign_bytes(mbytes, key)
    forged = mbytes.replace(b'"stable"', b'"stabla"')
    assert forged != mbytes and len(forged) == len(mbytes)
    kit = kitlib.assemble_kit(tmp_path / "kit", forged, [sig], members)
    refuse(mounter, kit, key.pub, code=5)


def test_refuse_expired(tmp_path, key, mounter):
    kit = kitlib.kit_from_items(tmp_path / "kit", _items(), [key],
                                manifest_fields={"expiresAt": "2025-02-01T00:00:00Z"})
    refuse(mounter, kit, key.pub, "now=2025-02-01T00:00:01Z", code=6)
    # allowed explicitly, it mounts, and health is CRITICAL
    m = mounter.mount(kit, key.pub, "now=2025-02-02T00:00:00Z", "allow_expired")
    assert m.text("health").splitlines()[0] == "CRITICAL"
    assert abs(m.status()["kit"]["daysUntilExpiry"] + 1) <= 0.01
    # before expiry it mounts without allow_expired
    m2 = mounter.mount(kit, key.pub, "now=2025-01-31T23:59:00Z")
    assert m2.status()["kit"]["expiresAt"] == "2025-02-01T00:00:00Z"


@pytest.mark.parametrize("opts,word", [
    (["threshold=0"], "threshold"),
    (["threshold=abc"], "threshold"),
    (["threshold=-1"], "threshold"),
    (["now=bad"], "now"),
    (["now=2025-13-45T00:00:00Z"], "now"),
    (["admin_gid=xyz"], "admin_gid"),
])
def test_usage_errors(opts, word, tmp_path, key, mounter):
    kit = kitlib.kit_from_items(tmp_path / "kit", _items(), [key])
    line = refuse(mounter, kit, key.pub, *opts, code=2)
    assert word in line


def test_usage_missing_arguments(tmp_path, key, mounter):
    kit = kitlib.kit_from_items(tmp_path / "kit", _items(), [key])
    for args in ([], [kit], ["-o", f"trust={key.pub}", kit]):
        cp = kitlib.run_fs(*args)
        assert_fs_fail(cp, 2)


def test_directory_source(tmp_path, key, mounter):
    """SOURCE a directory: this build either refuses store mode with usage exit 2 and
    says so, or serves an (empty) store; never anything else."""
    store = tmp_path / "store"
    store.mkdir()
    cp, mnt = mounter.try_mount(store, key.pub)
    if cp.returncode == 0:
        assert kitlib.is_mounted(mnt)
        s = json.loads((mnt / "status.json").read_text())
        assert s.get("mode") == "store" and s["snapshots"] == []
    else:
        assert_fs_fail(cp, 2, "store mode is not supported by this build")
        assert_not_mounted(mnt)


def test_missing_mountpoint(tmp_path, key, mounter):
    """A mount point that does not exist: one "stellafs: " line naming the problem."""
    kit = kitlib.kit_from_items(tmp_path / "kit", _items(), [key])
    cp = kitlib.run_fs("-o", f"trust={key.pub},cache={tmp_path / 'c'}", kit,
                       tmp_path / "no-such-dir")
    assert_fs_fail(cp, (1, 2), ("no such", "not exist", "mount point", "mountpoint"))
    assert not (tmp_path / "no-such-dir").exists()


def test_missing_kit(tmp_path, key, mounter):
    (tmp_path / "m").mkdir()
    cp = kitlib.run_fs("-o", f"trust={key.pub},cache={tmp_path / 'c'}", tmp_path / "nokit",
                       tmp_path / "m")
    assert_fs_fail(cp, (1, 2, 3))
    assert not kitlib.is_mounted(tmp_path / "m")


def test_refused_kit_leaves_existing_mountpoint_content(tmp_path, keys, mounter):
    """A refused mount does not hide or touch what is in the mount point."""
    mnt = tmp_path / "busy"
    mnt.mkdir()
    (mnt / "keep").write_text("keep me\n")
    kit = kitlib.kit_from_items(tmp_path / "kit", _items(), [keys["untrusted"]])
    cp, _ = mounter.try_mount(kit, keys["ecdsa"].pub, mnt=mnt)
    assert_fs_fail(cp, 5)
    assert_not_mounted(mnt, before=["keep"])
    assert (mnt / "keep").read_text() == "keep me\n"


# --------------------------------------------------------------------------- tampering after mount

BIG = 4 * MiB
BAD = 100          # the block of big/f.bin that gets a flipped byte


@pytest.fixture(scope="module")
def tamper_src(tmp_path_factory, keys, stellakit_bin):
    d = tmp_path_factory.mktemp("tamper")
    src = d / "src"
    rng = random.Random(44)
    kitlib._write(src / "big/f.bin", rng.randbytes(BIG))
    kitlib._write(src / "big/g.bin", rng.randbytes(BIG))
    kitlib._write(src / "other/file.txt", b"other file\n" * 5000)
    kits = {}
    for c in kitlib.COMPRESSIONS:
        kit = d / f"kit-{c}.tar"
        assert_ok(kitlib.pack(src, kit, [keys["ed25519"]], compress=c))
        kits[c] = kit
    return src, kits


@pytest.fixture
def tampered(tamper_src, tmp_path, keys, mounter, stellafs_bin):
    """A fresh copy of the uncompressed tamper kit, mounted; a byte of block BAD of
    big/f.bin (and of block BAD of big/g.bin) is flipped in the kit file *after* the
    mount and before the files are first read, and the page cache is dropped."""
    src, kits = tamper_src
    kit = tmp_path / "kit.tar"
    shutil.copy(kits["none"], kit)
    m = mounter.mount(kit, keys["ed25519"].pub)
    for name in ("big/f.bin", "big/g.bin"):
        off = kitlib.member_data_offset(kit, name)
        kitlib.flip_byte(kit, off + BAD * BLOCK + 1234)
    kitlib.drop_caches()
    return src, m


def read_events(path, orig, chunk=262144):
    """Read PATH from start to end with pread, going on after errors; returns the list
    of anomalies: ("EIO", off), ("WRONG", off, n) for bytes that differ from ORIG, and
    ("EOF", off) for an end of file before len(ORIG)."""
    ev = []
    fd = os.open(path, os.O_RDONLY)
    try:
        off = 0
        while off < len(orig):
            try:
                x = os.pread(fd, chunk, off)
            except OSError as e:
                assert e.errno == errno.EIO, (off, e)
                ev.append(("EIO", off))
                off = (off // chunk + 1) * chunk
                continue
            if not x:
                ev.append(("EOF", off))
                break
            if x != orig[off:off + len(x)]:
                ev.append(("WRONG", off, len(x)))
            off += len(x)
    finally:
        os.close(fd)
    return ev


def assert_eio_never_wrong(path, orig):
    ev = read_events(path, orig)
    bad = [e for e in ev if e[0] != "EIO"]
    assert not bad, f"{path}: wrong data or premature end of file: {ev}"
    assert ev, f"{path}: the tampered file read back whole and unchanged"
    return ev


def test_tampered_block_reads_eio(tampered):
    """The bad block, read first: EIO every time; the file's other blocks and other files
    read fine; the failure is counted, logged and turns health CRITICAL."""
    src, m = tampered
    orig = (src / "big/f.bin").read_bytes()
    p = m.snap(VERSION) / "big/f.bin"
    fd = os.open(p, os.O_RDONLY)
    try:
        for _ in range(2):
            with pytest.raises(OSError) as ei:
                os.pread(fd, BLOCK, BAD * BLOCK)
            assert ei.value.errno == errno.EIO
        with pytest.raises(OSError) as ei:
            os.pread(fd, 10, BAD * BLOCK + 1000)
        assert ei.value.errno == errno.EIO
        assert os.pread(fd, BLOCK, 0) == orig[:BLOCK]
        assert os.pread(fd, BLOCK, (BAD - 1) * BLOCK) == orig[(BAD - 1) * BLOCK:BAD * BLOCK]
        assert os.fstat(fd).st_size == BIG
    finally:
        os.close(fd)
    # other files are fine
    assert (m.snap(VERSION) / "other/file.txt").read_bytes() == b"other file\n" * 5000
    # counted, logged, CRITICAL
    s = m.status()
    assert s["health"] == "CRITICAL"
    assert s["integrity"]["failures"] >= 1
    assert m.text("health").splitlines()[0] == "CRITICAL"
    assert "big/f.bin" in m.text("health") or "big/f.bin" in m.text("status")
    mt = m.metrics()
    assert metric(mt, "stellafs_integrity_failures_total") >= 1
    assert metric(mt, "stellafs_health_status") == 2
    assert kitlib.run("status", m.path).returncode == 2


def test_tampered_blocks_before_read_fine_then_eio(tampered):
    """Blocks 0..BAD-1 read one by one equal the original; then the bad block fails with
    EIO (not a premature end of file: the kernel readahead asked for it already)."""
    src, m = tampered
    orig = (src / "big/f.bin").read_bytes()
    p = m.snap(VERSION) / "big/f.bin"
    fd = os.open(p, os.O_RDONLY)
    try:
        for b in range(BAD):        # every block before the bad one reads fine
            assert os.pread(fd, BLOCK, b * BLOCK) == orig[b * BLOCK:(b + 1) * BLOCK], b
        for _ in range(2):          # the bad block: EIO, every time, never data
            try:
                got = os.pread(fd, BLOCK, BAD * BLOCK)
                pytest.fail(f"pread of the tampered block {BAD} returned {len(got)} bytes "
                            f"(a premature end of file) instead of failing with EIO")
            except OSError as e:
                assert e.errno == errno.EIO
        with pytest.raises(OSError) as ei:
            os.pread(fd, 10, BAD * BLOCK + 1000)
        assert ei.value.errno == errno.EIO
        # a read that spans into the bad block returns at most the good part
        try:
            got = os.pread(fd, 2 * BLOCK, (BAD - 1) * BLOCK)
            assert got == orig[(BAD - 1) * BLOCK:BAD * BLOCK], len(got)
        except OSError as e:
            assert e.errno == errno.EIO
        assert os.fstat(fd).st_size == BIG
    finally:
        os.close(fd)


def test_tampered_block_far_after_bad_one_reads_fine(tampered):
    src, m = tampered
    orig = (src / "big/f.bin").read_bytes()
    fd = os.open(m.snap(VERSION) / "big/f.bin", os.O_RDONLY)
    try:
        for b in (BAD + 200, BAD + 500, BIG // BLOCK - 1):
            assert os.pread(fd, BLOCK, b * BLOCK) == orig[b * BLOCK:(b + 1) * BLOCK], b
    finally:
        os.close(fd)


def test_tampered_file_never_returns_wrong_data(tampered):
    """Reading the whole file sequentially ends in EIO; everything returned before it is
    the original prefix."""
    src, m = tampered
    orig = (src / "big/f.bin").read_bytes()
    got = bytearray()
    with open(m.snap(VERSION) / "big/f.bin", "rb", buffering=0) as f:
        try:
            while True:
                b = f.read(65536)
                if not b:
                    break
                got += b
            pytest.fail(f"reading the tampered file to its end succeeded with "
                        f"{len(got)} of {BIG} bytes (silently truncated), no EIO")
        except OSError as e:
            assert e.errno == errno.EIO
    assert len(got) <= BAD * BLOCK
    assert bytes(got) == orig[:len(got)]
    cp = kitlib.sh("cat", m.snap(VERSION) / "big/g.bin", check=False, text=False)
    assert cp.returncode != 0 and b"Input/output error" in cp.stderr, \
        f"cat exit {cp.returncode}, {len(cp.stdout)} bytes, stderr {cp.stderr!r}"
    assert cp.stdout == (src / "big/g.bin").read_bytes()[:len(cp.stdout)]


def test_tampered_mmap_gets_sigbus(tampered):
    """mmap is verified too: touching the bad page kills with SIGBUS; good pages read."""
    src, m = tampered
    orig = (src / "big/g.bin").read_bytes()
    p = m.snap(VERSION) / "big/g.bin"
    code = f"""
import mmap, sys, hashlib
f = open({str(p)!r}, "rb")
mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
sys.stdout.write(hashlib.sha256(mm[:4096]).hexdigest() + "\\n"); sys.stdout.flush()
x = mm[{BAD * BLOCK + 5}]
sys.stdout.write("READ %d\\n" % x); sys.stdout.flush()
"""
    cp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=60)
    lines = cp.stdout.split()
    assert lines[:1] == [hashlib.sha256(orig[:BLOCK]).hexdigest()], kitlib.describe(cp)
    assert cp.returncode == -signal.SIGBUS, kitlib.describe(cp)
    assert metric(m.metrics(), "stellafs_integrity_failures_total") >= 1


def test_tampered_verify_command_fails_eio_and_logs_block(tampered):
    src, m = tampered
    assert m.control("verify") == errno.EIO
    assert m.control("verify all") == errno.EIO
    log = [ln for ln in m.text("control").splitlines() if " -> " in ln]
    last = log[-1]
    assert "verify all -> EIO" in last, last
    assert "big/f.bin" in last or "big/g.bin" in last, last
    assert f"block {BAD}" in last, last
    assert m.status()["health"] == "CRITICAL"
    assert metric(m.metrics(), "stellafs_integrity_failures_total") >= 1
    # other files still read
    assert (m.snap(VERSION) / "other/file.txt").read_bytes() == b"other file\n" * 5000


def test_kit_truncated_after_mount(tamper_src, tmp_path, keys, mounter):
    """The stick loses its tail: reads beyond it fail with EIO, never zeros; the daemon
    keeps serving its status."""
    src, kits = tamper_src
    kit = tmp_path / "kit.tar"
    shutil.copy(kits["none"], kit)
    m = mounter.mount(kit, keys["ed25519"].pub)
    off = kitlib.member_data_offset(kit, "big/g.bin")
    os.truncate(kit, off + MiB)
    kitlib.drop_caches()
    orig = (src / "big/g.bin").read_bytes()
    fd = os.open(m.snap(VERSION) / "big/g.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, BLOCK, 0) == orig[:BLOCK]
        with pytest.raises(OSError) as ei:
            os.pread(fd, BLOCK, 2 * MiB)
        assert ei.value.errno == errno.EIO
    finally:
        os.close(fd)
    with pytest.raises(OSError) as ei:
        (m.snap(VERSION) / "other/file.txt").read_bytes()
    assert ei.value.errno == errno.EIO
    s = m.status()
    assert s["health"] == "CRITICAL", \
        f"reads fail with EIO (the kit lost its tail) but health says {s['health']}: {s['checks']}"


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_compressed_kit_corrupted_after_mount(compress, tamper_src, tmp_path, keys, mounter):
    """A flipped byte in the compressed stream: reading gives the original bytes or EIO,
    never other bytes, and at least one read fails."""
    src, kits = tamper_src
    kit = tmp_path / "kit"
    shutil.copy(kits[compress], kit)
    m = mounter.mount(kit, keys["ed25519"].pub)
    size = kit.stat().st_size
    kitlib.flip_byte(kit, size // 4)       # inside big/f.bin's compressed data
    kitlib.drop_caches()
    evs = {}
    for name in ("big/f.bin", "big/g.bin", "other/file.txt"):
        evs[name] = read_events(m.snap(VERSION) / name, (src / name).read_bytes())
    bad = {n: [e for e in ev if e[0] != "EIO"] for n, ev in evs.items()}
    assert not any(bad.values()), f"wrong data or premature end of file: {evs}"
    assert any(evs.values()), "a corrupted compressed stream read back without error"
    assert m.status()["health"] == "CRITICAL"


def test_zstd_frame_that_still_decodes_fails_only_the_damaged_block(tamper_src, tmp_path, keys,
                                                                    mounter):
    """A byte flipped inside a zstd frame where the frame still decodes (random data is
    stored in raw blocks, verbatim; zstd's own content checksum is not verified, the Merkle
    check covers every byte: docs/mount.md 3.3): exactly the 4 KiB block holding it fails
    with EIO, read first in large sequential reads (decoded and hashed ahead by the frame
    workers) and then block by block; every other block of the frame reads right."""
    src, kits = tamper_src
    kit = tmp_path / "kit.tar.zst"
    shutil.copy(kits["zstd"], kit)
    orig = (src / "big/f.bin").read_bytes()
    needle = orig[BAD * BLOCK + 1234:BAD * BLOCK + 1234 + 64]
    raw = kit.read_bytes()
    at = raw.find(needle)
    assert at > 0 and raw.find(needle, at + 1) < 0, "block BAD's bytes not stored verbatim"
    m = mounter.mount(kit, keys["ed25519"].pub)
    kitlib.flip_byte(kit, at)
    kitlib.drop_caches()
    p = m.snap(VERSION) / "big/f.bin"
    # large reads first (the kernel's readahead: whole frames decoded and hashed ahead)
    ev = read_events(p, orig, chunk=MiB)
    assert [e[0] for e in ev] == ["EIO"], ev
    assert ev[0][1] <= BAD * BLOCK < ev[0][1] + MiB, ev
    # then block by block: only the damaged one fails
    kitlib.drop_caches()
    ev = read_events(p, orig, chunk=BLOCK)
    assert ev == [("EIO", BAD * BLOCK)], ev
    assert (m.snap(VERSION) / "big/g.bin").read_bytes() == (src / "big/g.bin").read_bytes()
    assert m.status()["health"] == "CRITICAL"


def _copy_with_damaged_merkle_bin(kit_src, dst):
    """A copy of the uncompressed kit KIT_SRC at DST with eight bytes of its merkle.bin
    flipped, spread over the member."""
    shutil.copy(kit_src, dst)
    off = kitlib.member_data_offset(dst, kitlib.MERKLE)
    with tarfile.open(dst) as tf:
        msize = tf.getmember(kitlib.MERKLE).size
    for k in range(8):
        kitlib.flip_byte(dst, off + (msize * (2 * k + 1)) // 16)
    return dst


def test_corrupt_merkle_bin_before_mount(tamper_src, tmp_path, keys, mounter):
    """A damaged manifest/merkle.bin is checked against the fsverity roots: the kit is
    refused, or mounted with correct content (the trees rebuilt from the data)."""
    src, kits = tamper_src
    kit = _copy_with_damaged_merkle_bin(kits["none"], tmp_path / "kit.tar")
    cp, mnt = mounter.try_mount(kit, keys["ed25519"].pub)
    if cp.returncode != 0:
        assert_fs_fail(cp, (3, 4))
        assert_not_mounted(mnt)
        return
    evs = {n: read_events(mnt / "snapshots" / VERSION / n, (src / n).read_bytes())
           for n in ("big/f.bin", "big/g.bin", "other/file.txt")}
    assert not any(evs.values()), \
        f"mounted with a damaged merkle.bin, intact files do not read back: {evs}"
    assert json.loads((mnt / "status.json").read_text())["integrity"]["failures"] == 0


def test_damaged_tree_and_data_rebuilt_once(tamper_src, tmp_path, keys, mounter):
    """merkle.bin and the data of big/f.bin both damaged: the tree is rebuilt from the data
    once, found not to give the signed root, and every later read of the file fails at once
    (EIO) instead of reading and hashing the whole file again; other files read fine.  The
    daemon's read count (/proc/PID/io rchar) is the witness: twenty failing reads may cost
    a few files' worth, not twenty."""
    src, kits = tamper_src
    kit = _copy_with_damaged_merkle_bin(kits["none"], tmp_path / "kit.tar")
    kitlib.flip_byte(kit, kitlib.member_data_offset(kit, "big/f.bin") + BIG // 2 + 5)
    cp, mnt = mounter.try_mount(kit, keys["ed25519"].pub)
    if cp.returncode != 0:  # a merkle.bin found damaged at mount: refused outright
        assert_fs_fail(cp, (3, 4))
        return
    pid = storelib.daemon_pids(mnt)[0]

    def rchar():
        io = dict(ln.split(": ") for ln in Path(f"/proc/{pid}/io").read_text().splitlines())
        return int(io["rchar"])

    f = mnt / "snapshots" / VERSION / "big/f.bin"
    fd = os.open(f, os.O_RDONLY)
    try:
        with pytest.raises(OSError) as ei:
            os.pread(fd, BLOCK, BIG // 2)
        assert ei.value.errno == errno.EIO
        before = rchar()
        for i in range(20):
            kitlib.drop_caches()
            with pytest.raises(OSError) as ei:
                os.pread(fd, BLOCK, BIG // 2 + (i % 4) * BLOCK)
            assert ei.value.errno == errno.EIO
        spent = rchar() - before
    finally:
        os.close(fd)
    assert spent < 3 * BIG, f"20 failing reads made the daemon read {spent} bytes: rebuilt each time"
    assert not read_events(mnt / "snapshots" / VERSION / "big/g.bin", (src / "big/g.bin").read_bytes())
    assert json.loads((mnt / "status.json").read_text())["health"] == "CRITICAL"


# --------------------------------------------------------------------------- the index cache

@pytest.fixture
def cache_kit(tmp_path, small_tree, keys, stellakit_bin):
    kit = tmp_path / "kit.tar"
    assert_ok(kitlib.pack(small_tree, kit, [keys["ecdsa"]], "--expires-at",
                          "2025-06-01T00:00:00Z"))
    return kit


NOW_OK = "now=2025-02-01T00:00:00Z"


def test_remount_with_cached_index(cache_kit, small_tree, keys, mounter, tmp_path):
    cache = tmp_path / "cache"
    m1 = mounter.mount(cache_kit, keys["ecdsa"].pub, NOW_OK, cache=cache)
    want = kitlib.tree_listing(small_tree)
    assert kitlib.tree_listing(m1.snap(VERSION)) == want
    mounter.umount(m1.path)
    assert any(cache.iterdir()), "cache=DIR stays empty: no index persisted"
    m2 = mounter.mount(cache_kit, keys["ecdsa"].pub, NOW_OK, cache=cache)
    assert kitlib.tree_listing(m2.snap(VERSION)) == want
    assert m2.control("verify all") == 0


def test_cached_index_does_not_bypass_expiry_or_trust(cache_kit, keys, mounter, tmp_path):
    cache = tmp_path / "cache"
    m1 = mounter.mount(cache_kit, keys["ecdsa"].pub, NOW_OK, cache=cache)
    mounter.umount(m1.path)
    cp, mnt = mounter.try_mount(cache_kit, keys["ecdsa"].pub, "now=2025-06-02T00:00:00Z",
                                cache=cache)
    assert_fs_fail(cp, 6)
    assert_not_mounted(mnt)
    cp, mnt = mounter.try_mount(cache_kit, keys["ecdsa2"].pub, NOW_OK, cache=cache)
    assert_fs_fail(cp, 5)
    assert_not_mounted(mnt)
    tdir = tmp_path / "trust2"
    tdir.mkdir()
    shutil.copy(keys["ecdsa"].pub, tdir / "a.pub")
    cp, mnt = mounter.try_mount(cache_kit, tdir, NOW_OK, "threshold=2", cache=cache)
    assert_fs_fail(cp, 5)
    assert_not_mounted(mnt)


def test_manifest_forged_in_place_after_cached_mount(cache_kit, keys, mounter, tmp_path):
    """The kit's manifest is altered in place (same size, mtime restored) after a mount
    filled the cache: the next mount must still check the signature and refuse it."""
    cache = tmp_path / "cache"
    m1 = mounter.mount(cache_kit, keys["ecdsa"].pub, NOW_OK, cache=cache)
    mounter.umount(m1.path)
    data = cache_kit.read_bytes()
    i = data.index(b'"channel": "stable"')
    st = cache_kit.stat()
    with open(cache_kit, "r+b") as f:
        f.seek(i)
        f.write(b'"channel": "stabla"')
    os.utime(cache_kit, ns=(st.st_atime_ns, st.st_mtime_ns))
    cp, mnt = mounter.try_mount(cache_kit, keys["ecdsa"].pub, NOW_OK, cache=cache)
    assert_fs_fail(cp, (3, 5))
    assert_not_mounted(mnt)


def test_data_changed_in_place_after_cached_mount(cache_kit, small_tree, keys, mounter,
                                                  tmp_path):
    """A data byte changed in place (mtime restored) after the cache was filled: the
    changed file is never served with the wrong byte."""
    cache = tmp_path / "cache"
    m1 = mounter.mount(cache_kit, keys["ecdsa"].pub, NOW_OK, cache=cache)
    mounter.umount(m1.path)
    off = kitlib.member_data_offset(cache_kit, "tools/tool.bin")
    kitlib.flip_byte(cache_kit, off + 5000)
    kitlib.drop_caches()
    cp, mnt = mounter.try_mount(cache_kit, keys["ecdsa"].pub, NOW_OK, cache=cache)
    if cp.returncode != 0:
        assert_fs_fail(cp, 4)
        assert_not_mounted(mnt)
        return
    p = mnt / "snapshots" / VERSION / "tools/tool.bin"
    orig = (small_tree / "tools/tool.bin").read_bytes()
    assert_eio_never_wrong(p, orig)
    try:
        data = p.read_bytes()
        pytest.fail(f"read() to EOF of the changed file succeeded: {len(data)} of "
                    f"{len(orig)} bytes, no EIO")
    except OSError as e:
        assert e.errno == errno.EIO
    assert (mnt / "snapshots" / VERSION / "notes.txt").read_bytes() == b"notes\n"


def _cache_files(cache):
    return {p for p in Path(cache).rglob("*") if p.is_file()}


def test_garbage_cache_is_not_trusted(cache_kit, small_tree, keys, mounter, tmp_path):
    cache = tmp_path / "cache"
    m1 = mounter.mount(cache_kit, keys["ecdsa"].pub, NOW_OK, cache=cache)
    mounter.umount(m1.path)
    files = _cache_files(cache)
    assert files
    want = kitlib.tree_listing(small_tree)
    rng = random.Random(5)
    for how in ("garbage", "truncate", "flip"):
        for p in files:
            data = p.read_bytes()
            if how == "garbage":
                p.write_bytes(rng.randbytes(max(len(data), 100)))
            elif how == "truncate":
                p.write_bytes(data[:len(data) // 2])
            else:
                b = bytearray(data)
                for k in range(0, len(b), max(1, len(b) // 20)):
                    b[k] ^= 0x40
                p.write_bytes(bytes(b))
        cp, mnt = mounter.try_mount(cache_kit, keys["ecdsa"].pub, NOW_OK, cache=cache)
        if cp.returncode != 0:
            assert_fs_fail(cp, (1, 3))
            assert_not_mounted(mnt)
            continue
        assert kitlib.tree_listing(mnt / "snapshots" / VERSION) == want, how
        assert json.loads((mnt / "status.json").read_text())["integrity"]["failures"] == 0
        mounter.umount(mnt)
        files = _cache_files(cache) or files


def _cache_db(cache):
    (db,) = Path(cache).glob("*.db")
    return db


def _remount_after_cache_sql(kit, keys, mounter, cache, sql):
    """Mount KIT once to build its cached index, change the index with the sqlite3 tool
    (SQL, which must change a row), seal it again (KEY.db.sum, the digest a mount checks
    first: without it the changed file is only rebuilt, and the checks behind the digest
    go untested), and mount again from that cache; returns (mount, cache db)."""
    m = mounter.mount(kit, keys["ed25519"].pub, cache=cache)
    mounter.umount(m.path)
    db = _cache_db(cache)
    changed = kitlib.sh("sqlite3", db, f"{sql}; SELECT changes();").stdout.split()[-1]
    assert changed != "0", f"{sql!r} changed nothing in {db}"
    Path(str(db) + ".sum").write_text(hashlib.sha256(db.read_bytes()).hexdigest() + "\n")
    return mounter.mount(kit, keys["ed25519"].pub, cache=cache), db


def test_cached_index_with_bad_seek_points_is_rebuilt(tamper_src, tmp_path, keys, mounter):
    """A cached index of a gzip kit whose seek points fail their checks (the start point
    deleted with the sqlite3 tool) is a cache, not a verdict on the kit: the mount builds
    it again and serves the right bytes, where it used to refuse ("bad seek points")."""
    src, kits = tamper_src
    cache = tmp_path / "cache"
    m, _ = _remount_after_cache_sql(kits["gzip"], keys, mounter, cache,
                                    "DELETE FROM point WHERE out = 0")
    for name in ("big/f.bin", "other/file.txt"):
        assert (m.snap(VERSION) / name).read_bytes() == (src / name).read_bytes()
    db = _cache_db(cache)
    assert kitlib.sh("sqlite3", db, "SELECT count(*) FROM point WHERE out = 0").stdout.strip() == "1"


def test_cached_index_row_with_a_huge_ino_is_refused(tamper_src, tmp_path, keys, mounter):
    """A cached index row whose ino does not fit below the daemon's slot bits (here 2^40
    plus its own: it would alias another snapshot's inodes) is damage: that name fails
    with EIO, never shows an inode of another slot, and the other files read fine."""
    src, kits = tamper_src
    m, db = _remount_after_cache_sql(
        kits["none"], keys, mounter, tmp_path / "cache",
        "UPDATE node SET ino = ino + (1 << 40) WHERE name = CAST('file.txt' AS BLOB)")
    root_slot = os.stat(m.snap(VERSION)).st_ino >> 40
    p = m.snap(VERSION) / "other" / "file.txt"
    with pytest.raises(OSError) as ei:
        st = os.stat(p)
        pytest.fail(f"stat of the damaged row gave inode {st.st_ino:#x} (snapshot slot {root_slot})")
    assert ei.value.errno == errno.EIO, f"stat of the damaged row: {ei.value}"
    try:
        for e in os.scandir(m.snap(VERSION) / "other"):
            assert e.inode() >> 40 == root_slot, f"{e.name}: d_ino {e.inode():#x}"
    except OSError as e:   # the listing holds the damaged row
        assert e.errno == errno.EIO, f"listing of the damaged directory: {e}"
    assert (m.snap(VERSION) / "big/f.bin").read_bytes() == (src / "big/f.bin").read_bytes()


def test_other_kits_index_swapped_in(tmp_path, keys, mounter, stellakit_bin):
    """The cache file of kit A is replaced by the index of kit B (same names, other
    bytes): mounting A must still serve A's bytes, or refuse."""
    a_src = kitlib.make_small_tree(tmp_path / "a", seed=1)
    b_src = kitlib.make_small_tree(tmp_path / "b", seed=2)
    kit_a, kit_b = tmp_path / "a.tar", tmp_path / "b.tar"
    assert_ok(kitlib.pack(a_src, kit_a, [keys["ecdsa"]]))
    assert_ok(kitlib.pack(b_src, kit_b, [keys["ecdsa"]]))
    cache = tmp_path / "cache"
    m = mounter.mount(kit_a, keys["ecdsa"].pub, cache=cache)
    mounter.umount(m.path)
    fa = _cache_files(cache)
    m = mounter.mount(kit_b, keys["ecdsa"].pub, cache=cache)
    mounter.umount(m.path)
    fb = _cache_files(cache) - fa
    assert len(fa) >= 1 and len(fb) >= 1, (fa, fb)
    for p in fa:
        shutil.copy(sorted(fb)[0], p)
    cp, mnt = mounter.try_mount(kit_a, keys["ecdsa"].pub, cache=cache)
    if cp.returncode != 0:
        assert_fs_fail(cp, (1, 3))
        assert_not_mounted(mnt)
        return
    got = kitlib.tree_listing(mnt / "snapshots" / VERSION)
    assert got == kitlib.tree_listing(a_src)
