"""Kit format 1.1: the kit carries its index (manifest/index).

Oracles: Python's tarfile and sqlite3 read the kit and the index on their own; zstd and
gzip decode the head and the body apart (the fresh frame rule); hostile kits are made by
editing the index with sqlite3 and re-signing the manifest with openssl (kitlib.sign_bytes),
never with stellakit."""

import hashlib
import io
import json
import os
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import pytest

import kitlib
from kitlib import INDEX, MANIFEST, MERKLE, SIGNAME, assert_fail, assert_fs_fail

COMPRESSIONS = ["none", "gzip", "zstd"]


def make_tree(root: Path) -> Path:
    """Small files, a file with a Merkle tree in merkle.bin, a symlink, an empty and an
    0700 directory, names that sort around '/' ("a!x" between "a" and "a/...")."""
    root.mkdir(parents=True)
    (root / "a").mkdir(mode=0o700)
    os.chmod(root / "a", 0o700)
    (root / "a" / "one.json").write_bytes(b'{"id": 1}\n')
    (root / "a" / "two.json").write_bytes(b'{"id": 2}\n' * 7)
    (root / "a!x").write_bytes(b"bang\n")
    (root / "b" / "c").mkdir(parents=True)
    (root / "b" / "c" / "deep.txt").write_bytes(b"deep\n")
    (root / "big.bin").write_bytes(hashlib.sha256(b"seed").digest() * 9000)  # 288000 bytes
    (root / "empty").mkdir()
    os.symlink("a/one.json", root / "link")
    (root / "z.txt").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("k11") / "tree")


@pytest.fixture(scope="module")
def kits(tmp_path_factory, tree, keys):
    cache = {}

    def get(compress="none", *extra):
        k = (compress, extra)
        if k not in cache:
            out = tmp_path_factory.mktemp("k11kit") / "kit.tar"
            cp = kitlib.pack(tree, out, [keys["ed25519"]], *extra, compress=compress)
            kitlib.assert_ok(cp)
            cache[k] = out
        return cache[k]

    return get


def tar_members(raw: bytes):
    """(TarInfo, data) of every member of the tar stream RAW."""
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as t:
        return [(ti, t.extractfile(ti).read() if ti.isreg() else None) for ti in t.getmembers()]


def cached_meta(cache: Path):
    dbs = list(cache.glob("*.db"))
    assert len(dbs) == 1, dbs
    db = sqlite3.connect(f"file:{dbs[0]}?mode=ro", uri=True)
    meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in db.execute("SELECT key,value FROM meta")}
    db.close()
    return meta


def first_artifact_offset(raw: bytes) -> int:
    """Where the body starts in the tar stream: the first header after the kit's own
    members (a pax header included)."""
    ms = tar_members(raw)
    own = [ti for ti, _ in ms if ti.name.startswith("manifest/")]
    last = own[-1]
    return last.offset_data + -(-last.size // 512) * 512


# --------------------------------------------------------------------------- the writer

@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_index_member_bound_by_manifest(kits, compress):
    kit = kits(compress)
    raw = kitlib.kit_tar_bytes(kit)
    ms = tar_members(raw)
    names = [ti.name for ti, _ in ms]
    assert names[:4] == [MANIFEST, SIGNAME, INDEX, MERKLE]
    data = dict((ti.name, d) for ti, d in ms)
    m = json.loads(data[MANIFEST])
    assert m["index"] == {"size": len(data[INDEX]), "sha256": hashlib.sha256(data[INDEX]).hexdigest()}
    keys = list(m)
    assert keys.index("index") < keys.index("artifacts")


def _index_db(tmp_path, data: bytes):
    p = tmp_path / "index.db"
    p.write_bytes(data)
    return sqlite3.connect(f"file:{p}?mode=ro", uri=True)


@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_index_offsets_relative_to_body(kits, compress, tmp_path):
    """Every file's data offset + the body's start is where tarfile finds its data; every
    tree offset + merkle.bin's data start is where its tree is in merkle.bin."""
    kit = kits(compress)
    raw = kitlib.kit_tar_bytes(kit)
    ms = tar_members(raw)
    data = dict((ti.name, d) for ti, d in ms)
    body = first_artifact_offset(raw)
    db = _index_db(tmp_path, data[INDEX])
    rows = {}
    for ino, parent, name, typ, size, doff, toff in db.execute(
            "SELECT ino,parent,name,type,size,data_off,tree_off FROM node ORDER BY ino"):
        path = name.decode() if ino != 1 else ""
        if ino != 1:
            ppath = rows[parent][0]
            path = f"{ppath}/{path}" if ppath else path
        rows[ino] = (path, typ, size, doff, toff)
    by_path = {r[0]: r for r in rows.values()}
    merkle = next(ti for ti, _ in ms if ti.name == MERKLE)
    for ti, d in ms:
        if ti.name.startswith("manifest/") or not ti.isreg():
            continue
        path, typ, size, doff, toff = by_path[ti.name]
        assert (size, body + doff) == (ti.size, ti.offset_data), ti.name
        assert raw[body + doff: body + doff + size] == d
        if size > 4096:
            assert toff >= 24 and merkle.offset_data + toff < merkle.offset_data + merkle.size
        else:
            assert toff == -1
    meta = dict(db.execute("SELECT key,value FROM meta"))
    assert meta["format"] in ("1", b"1")
    assert int(meta["bodySize"]) == len(raw) - body or compress == "none"
    db.close()


@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_pack_reproducible_with_index(tree, keys, tmp_path, compress):
    a, b = tmp_path / "a.kit", tmp_path / "b.kit"
    kitlib.assert_ok(kitlib.pack(tree, a, [keys["ed25519"]], compress=compress))
    kitlib.assert_ok(kitlib.pack(tree, b, [keys["ed25519"]], compress=compress))
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_body_starts_a_fresh_frame(kits, compress, mounter, keys):
    """The head and the body decode apart: the mount's recorded head length is where
    a zstd frame / gzip member starts, and `zstd -d` / `gzip -d` of each part gives
    the tar stream's head and body."""
    kit = kits(compress)
    mt = mounter.mount(kit, keys["ed25519"].pub)
    head_len = int(cached_meta(mt.cache)["headLen"])
    raw = kit.read_bytes()
    tar = kitlib.kit_tar_bytes(kit)
    body = first_artifact_offset(tar)
    tool = ["zstd", "-dc"] if compress == "zstd" else ["gzip", "-dc"]
    head = subprocess.run(tool, input=raw[:head_len], capture_output=True, check=True).stdout
    rest = subprocess.run(tool, input=raw[head_len:], capture_output=True, check=True).stdout
    assert head == tar[:body]
    assert rest == tar[body:]


def test_no_index_writes_v1(tree, keys, tmp_path, mounter):
    kit = tmp_path / "v1.kit"
    kitlib.assert_ok(kitlib.pack(tree, kit, [keys["ed25519"]], "--no-index"))
    ms = tar_members(kit.read_bytes())
    names = [ti.name for ti, _ in ms]
    assert INDEX not in names and names[2] == MERKLE
    assert "index" not in json.loads(ms[0][1])
    mt = mounter.mount(kit, keys["ed25519"].pub)
    assert (mt.snap("2025.01.15") / "a" / "one.json").read_bytes() == b'{"id": 1}\n'
    assert "headLen" not in cached_meta(mt.cache)


# --------------------------------------------------------------------------- the reader

@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_mount_from_carried_index(kits, tree, keys, mounter, compress):
    kit = kits(compress)
    mt = mounter.mount(kit, keys["ed25519"].pub)
    snap = mt.snap("2025.01.15")
    assert kitlib.snapshot_tree(snap) == kitlib.snapshot_tree(tree)
    for p in tree.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert (snap / p.relative_to(tree)).read_bytes() == p.read_bytes(), p
    meta = cached_meta(mt.cache)
    tar = kitlib.kit_tar_bytes(kit)
    assert int(meta["dataBase"]) == first_artifact_offset(tar)
    if compress == "none":
        assert int(meta["headLen"]) == first_artifact_offset(tar)
    # a remount uses the cached index
    mounter.umount(mt.path)
    mt2 = mounter.mount(kit, keys["ed25519"].pub, cache=mt.cache)
    assert (mt2.snap("2025.01.15") / "big.bin").read_bytes() == (tree / "big.bin").read_bytes()


def _body_headers(raw: bytes):
    """(start, end) of every tar header block run of the body's members."""
    ms = tar_members(raw)
    return [(ti.offset, ti.offset_data) for ti, _ in ms if not ti.name.startswith("manifest/")]


def test_first_mount_reads_only_the_head(kits, tree, keys, mounter, tmp_path, stellakit_bin):
    """Every tar header of the body zeroed: a walk of the kit refuses it (verify: exit 3),
    but the mount serves every file from the carried index without reading them; a file
    whose data is damaged fails its reads (EIO), the others read back whole."""
    raw = bytearray(kits("none").read_bytes())
    for a, b in _body_headers(bytes(raw)):
        raw[a:b] = bytes(b - a)
    ms = {ti.name: ti for ti, _ in tar_members(bytes(kits("none").read_bytes()))}
    two = ms["a/two.json"]
    raw[two.offset_data:two.offset_data + 5] = b"XXXXX"
    kit = tmp_path / "headless.kit"
    kit.write_bytes(bytes(raw))
    cp = kitlib.run("verify", "-t", keys["ed25519"].pub, kit)
    assert cp.returncode == 3, kitlib.describe(cp)
    mt = mounter.mount(kit, keys["ed25519"].pub)
    snap = mt.snap("2025.01.15")
    for name in ("a/one.json", "a!x", "b/c/deep.txt", "big.bin", "z.txt"):
        assert (snap / name).read_bytes() == (tree / name).read_bytes(), name
    with pytest.raises(OSError) as ei:
        (snap / "a" / "two.json").read_bytes()
    assert ei.value.errno == 5  # EIO


# --------------------------------------------------------------------------- hostile indexes

def rebuild(kit: Path, out: Path, key, edit_sql=None, edit_index=None, resign=True):
    """A copy of the uncompressed KIT with its index edited (SQL run on it, or its bytes
    replaced), the manifest's "index" updated and re-signed with KEY (unless resign is
    False: then the manifest and signature stay as they were).  The body is copied byte
    for byte: its offsets are relative, the head may change size."""
    raw = kit.read_bytes()
    ms = tar_members(raw)
    data = dict((ti.name, d) for ti, d in ms)
    body = first_artifact_offset(raw)
    idx = data[INDEX]
    if edit_sql:
        p = out.with_suffix(".db")
        p.write_bytes(idx)
        db = sqlite3.connect(p)
        db.executescript(edit_sql)
        db.commit()
        db.close()
        idx = p.read_bytes()
    if edit_index:
        idx = edit_index(idx)
    mbytes, sig = data[MANIFEST], data[SIGNAME]
    if resign:
        m = json.loads(mbytes)
        m["index"] = {"size": len(idx), "sha256": hashlib.sha256(idx).hexdigest()}
        mbytes = kitlib.dump_manifest(m)
        sig = kitlib.sig_text([kitlib.sign_bytes(mbytes, key)])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as t:
        for name, d in ((MANIFEST, mbytes), (SIGNAME, sig), (INDEX, idx), (MERKLE, data[MERKLE])):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(d), 0o644, kitlib.CREATED_EPOCH
            t.addfile(ti, io.BytesIO(d))
        head = buf.getvalue()  # before close: no end-of-archive blocks
    out.write_bytes(head + raw[body:])
    return out


def _ino(kit, path):
    ms = tar_members(kit.read_bytes())
    idx = dict((ti.name, d) for ti, d in ms)[INDEX]
    p = kit.parent / "peek.db"
    p.write_bytes(idx)
    db = sqlite3.connect(p)
    ino = 1
    for comp in path.split("/"):
        ino = db.execute("SELECT ino FROM node WHERE parent=? AND name=?", (ino, comp.encode())).fetchone()[0]
    db.close()
    p.unlink()
    return ino


def test_rebuilt_kit_is_accepted(kits, keys, tmp_path, mounter, tree):
    """The oracle's own rebuild, without an edit, mounts and verifies (so that the
    refusals below are the edits', not the rebuild's)."""
    kit = rebuild(kits("none"), tmp_path / "same.kit", keys["ed25519"])
    kitlib.assert_ok(kitlib.run("verify", "-t", keys["ed25519"].pub, kit))
    mt = mounter.mount(kit, keys["ed25519"].pub)
    assert (mt.snap("2025.01.15") / "big.bin").read_bytes() == (tree / "big.bin").read_bytes()


HOSTILE = [
    # (id, SQL using {ino} of a/one.json, {big} of big.bin, code, words)
    ("sha256", "UPDATE node SET sha256=zeroblob(32) WHERE ino={ino}", 4, ("sha256",)),
    ("fsverity", "UPDATE node SET fsverity=zeroblob(32) WHERE ino={ino}", 4, ("fsverity",)),
    ("size", "UPDATE node SET size=size+1 WHERE ino={ino}", 4, ("size",)),
    ("mode", "UPDATE node SET mode=511 WHERE ino={ino}", 4, ("mode",)),
    ("name", "UPDATE node SET name=CAST('evil.json' AS BLOB) WHERE ino={ino}", 4, ("a/one.json",)),
    ("missing", "DELETE FROM node WHERE ino=(SELECT max(ino) FROM node)", 4, ("missing",)),
    ("extra", "INSERT INTO node VALUES((SELECT max(ino)+1 FROM node),1,CAST('x' AS BLOB),0,420,0,0,-1,NULL,NULL,NULL)",
     4, ("not in the manifest",)),
    ("cycle", "UPDATE node SET parent=(SELECT max(ino) FROM node) WHERE ino=2", 4, ("parent",)),
    ("outside", "UPDATE node SET data_off=1099511627776 WHERE ino={big}", 3, ("outside",)),
    ("overlap", "UPDATE node SET data_off=(SELECT data_off FROM node WHERE ino={ino}) WHERE ino={ino}+1", 3,
     ("overlaps",)),
    ("tree", "UPDATE node SET tree_off=1073741824 WHERE ino={big}", 3, ("merkle.bin",)),
    ("schema", "CREATE TABLE evil(x)", 3, ("schema",)),
    ("meta", "INSERT INTO meta VALUES('complete','1')", 3, ("meta",)),
    ("trees", "INSERT INTO tree VALUES(zeroblob(32), zeroblob(4096))", 3, ("trees",)),
]


@pytest.mark.parametrize("sql,code,words", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_index_refused(kits, keys, tmp_path, mounter, sql, code, words):
    """A validly signed kit whose index lies: the mount refuses it with its class and
    one line, nothing mounted; verify refuses it too."""
    base = kits("none")
    sql = sql.format(ino=_ino(base, "a/one.json"), big=_ino(base, "big.bin"))
    kit = rebuild(base, tmp_path / "hostile.kit", keys["ed25519"], edit_sql=sql)
    cp, mnt = mounter.try_mount(kit, keys["ed25519"].pub)
    assert_fs_fail(cp, code, *words)
    assert not kitlib.is_mounted(mnt)
    cp = kitlib.run("verify", "-t", keys["ed25519"].pub, kit)
    assert cp.returncode in (3, 4), kitlib.describe(cp)


def test_index_digest_mismatch(kits, keys, tmp_path, mounter):
    """The index changed after signing (the manifest still names the old digest)."""
    def flip(b):
        b = bytearray(b)
        b[-1] ^= 1
        return bytes(b)
    kit = rebuild(kits("none"), tmp_path / "flip.kit", keys["ed25519"], edit_index=flip, resign=False)
    cp, mnt = mounter.try_mount(kit, keys["ed25519"].pub)
    assert_fs_fail(cp, 4, "manifest/index", "sha256")
    assert not kitlib.is_mounted(mnt)
    assert_fail(kitlib.run("verify", "-t", keys["ed25519"].pub, kit), 4, "manifest/index", "sha256")


def test_hostile_offset_never_returns_wrong_bytes(kits, keys, tmp_path, mounter, tree):
    """An index whose offsets pass every structural check but point at the wrong bytes
    (a file's data offset moved back onto its own tar header): the mount succeeds, the
    read fails with EIO (checked against the signed fs-verity root), never returns those
    bytes; verify names the lie (exit 4)."""
    base = kits("none")
    ino = _ino(base, "a/one.json")
    kit = rebuild(base, tmp_path / "moved.kit", keys["ed25519"],
                  edit_sql=f"UPDATE node SET data_off=data_off-512 WHERE ino={ino}")
    assert_fail(kitlib.run("verify", "-t", keys["ed25519"].pub, kit), 4, "data offset")
    mt = mounter.mount(kit, keys["ed25519"].pub)
    with pytest.raises(OSError) as ei:
        (mt.snap("2025.01.15") / "a" / "one.json").read_bytes()
    assert ei.value.errno == 5
    assert (mt.snap("2025.01.15") / "a" / "two.json").read_bytes() == (tree / "a" / "two.json").read_bytes()


def test_verify_checks_index_against_members(kits, keys):
    for c in COMPRESSIONS:
        cp = kitlib.run("verify", "-t", keys["ed25519"].pub, kits(c))
        kitlib.assert_ok(cp)
