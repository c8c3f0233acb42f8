"""Black-box tests of the store's integrity against its own disk (docs/store.md, "Reads"
and "Trust"; docs/runbook.md, repair):

- a damaged blob or tree is mended by importing a good kit that carries the file (or, with
  `stellakit import --repair`, the very kit of the snapshot);
- a snapshot whose index does not match the signed manifest the store keeps (a row of
  V.db rewritten, a kept manifest tampered with or missing) is never served;
- the mount's trust store and threshold decide which snapshots are served, at the mount
  and again at every `reload`.

Every test builds its own store and judges what a user sees: exit codes, the mounted tree
(bytes compared with sha256sum of the source files), the control file's errnos, health,
status.json and metrics, and the store's files.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

import kitlib
from kitlib import assert_fail, describe
from storelib import (  # noqa: F401  (fuse_ok, mnt_base, mounts, signer, trust are fixtures)
    BLOCK, CHECK_FILES, blob_path, db_pointer, errname, fuse_ok, import_kit, import_ok,
    mnt_base, mounts, pack_kit, signer, store_state, trust, version_tree, versioned_bytes)


@pytest.fixture(scope="module")
def ikits(tmp_path_factory, signer, keys):
    """v1, v2, v3 signed by the session's ed25519 key (the `trust` fixture); v2delta on
    base v1; w1/w2 (another kitId) signed by ecdsa, for the trust tests."""
    d = tmp_path_factory.mktemp("integrity-kits")
    trees = {v: version_tree(d / f"tree-{v}", v) for v in ("v1", "v2", "v3", "w1", "w2")}
    k = {v: pack_kit(trees[v], d / f"{v}.tar", signer, v, i + 1)
         for i, v in enumerate(("v1", "v2", "v3"))}
    k["v2delta"] = pack_kit(trees["v2"], d / "v2delta.tar", signer, "v2", 2, base=k["v1"])
    for i, v in enumerate(("w1", "w2")):
        k[v] = pack_kit(trees[v], d / f"{v}.tar", keys["ecdsa"], v, i + 1, kit_id="other-kit")
    return {"trees": trees, **k}


def sha256sum(path) -> str:
    """The independent oracle: coreutils' sha256sum."""
    out = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    return out.split()[0]


def read_sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def damage(path, off=100):
    """Flip one byte of a stored file (root writes a 0444 file)."""
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0xFF]))


def tree_path(store, fsverity_hex) -> Path:
    return Path(store) / "trees" / fsverity_hex[:2] / fsverity_hex


def fsv_hex(data: bytes) -> str:
    return kitlib.fsverity_bytes(data).split(":", 1)[1]


def health_lines(m) -> list:
    return (m / "health").read_text().splitlines()


def check_line(m, name) -> str:
    hits = [ln for ln in health_lines(m)[1:] if ln.split()[1].rstrip(":") == name]
    assert hits, f"health has no {name} check:\n" + "\n".join(health_lines(m))
    return "\n".join(hits)


def metric(m, name) -> float:
    for ln in (m / "metrics").read_text().splitlines():
        if ln.split(" ")[0] == name:
            return float(ln.rsplit(None, 1)[1])
    raise AssertionError(f"metrics has no {name}")


def wait_for(cond, what, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def kept(store, version) -> tuple:
    sha = [r for r in sqlite3.connect(Path(store) / "store.db").execute(
        "select manifest_sha256 from snapshot where version = ?", (version,))][0][0]
    d = Path(store) / "manifests"
    return sha, d / f"{sha}.json", d / f"{sha}.sig"


# --------------------------------------------------------------------------- 1. repair

def test_import_of_a_good_kit_mends_a_damaged_blob_and_tree(mounts, tmp_path, ikits, trust):
    s = tmp_path / "store"
    import_ok(s, trust, ikits["v1"])
    src = ikits["trees"]["v1"] / "tools" / "tool.bin"      # the same in every version
    want = sha256sum(src)
    data = src.read_bytes()
    assert len(data) > BLOCK, "tool.bin must have a Merkle tree"
    blob, tree = blob_path(s, want), tree_path(s, fsv_hex(data))
    good_tree = tree.read_bytes()
    damage(blob, 5000)
    damage(tree, 10)

    cp = import_ok(s, trust, ikits["v2"])
    assert sha256sum(blob) == want, "the damaged blob is still in the store"
    assert tree.read_bytes() == good_tree, "the damaged tree is still in the store"
    assert "damaged stored files replaced" in cp.stdout, describe(cp)

    m = mounts.mount(s, trust)
    for v in ("v1", "v2"):
        assert sha256sum(m / "snapshots" / v / "tools/tool.bin") == want, v
    assert m.health() == "HEALTHY", "\n".join(health_lines(m))
    m.control_ok("verify all")


def test_blob_damaged_under_a_mount_is_mended_by_an_import_through_control(mounts, tmp_path,
                                                                          ikits, trust):
    s = tmp_path / "store"
    import_ok(s, trust, ikits["v1"])
    m = mounts.mount(s, trust)
    src = ikits["trees"]["v1"] / "feeds" / "common.bin"
    want = sha256sum(src)
    damage(blob_path(s, want), 2 * BLOCK + 5)
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    r = m.control("verify v1")
    assert r == errno.EIO, errname(r)
    line = m.log_line("verify v1")
    assert "feeds/common.bin" in line and re.search(r"repair: import a known-good kit", line), line

    m.control_ok(f"import {ikits['v2']}")
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    for v in ("v1", "v2"):
        assert sha256sum(m / "snapshots" / v / "feeds/common.bin") == want, v
    m.control_ok("verify all")


def test_repair_flag_mends_the_snapshots_own_kit(mounts, tmp_path, ikits, trust):
    s = tmp_path / "store"
    import_ok(s, trust, ikits["v1"])
    import_ok(s, trust, ikits["v2"])
    name = "feeds/check/f3"                                  # only in v1
    src = ikits["trees"]["v1"] / name
    want = sha256sum(src)
    damage(blob_path(s, want), 2 * BLOCK)
    before = store_state(s)

    # the same kit without --repair: refused as not newer, nothing changes
    assert_fail(import_kit(s, trust, ikits["v1"]), 7, "not newer")
    assert store_state(s) == before
    assert sha256sum(blob_path(s, want)) != want

    cp = kitlib.assert_ok(import_kit(s, trust, ikits["v1"], "--repair"))
    assert re.search(r"snapshot v1 .*already.* 1 damaged one\(s\) replaced", cp.stdout), describe(cp)
    assert sha256sum(blob_path(s, want)) == want
    after = store_state(s)
    assert after["snapshot"] == before["snapshot"] and after["ratchet"] == before["ratchet"] \
        and after["pointer"] == before["pointer"], "a repair must not add rows or move pointers"
    m = mounts.mount(s, trust)
    assert sha256sum(m / "snapshots/v1" / name) == want
    m.control_ok("verify all")


def test_delta_kit_refused_when_a_blob_it_reuses_is_damaged(tmp_path, ikits, trust):
    s = tmp_path / "store"
    import_ok(s, trust, ikits["v1"])
    want = sha256sum(ikits["trees"]["v1"] / "tools" / "tool.bin")
    damage(blob_path(s, want), 10)
    before = store_state(s)
    cp = import_kit(s, trust, ikits["v2delta"])
    assert_fail(cp, 4, "damaged", names=("tools/tool.bin",))
    assert store_state(s) == before
    # a full kit carrying the file is imported, and mends it
    import_ok(s, trust, ikits["v2"])
    assert sha256sum(blob_path(s, want)) == want


# --------------------------------------------------------------------------- 2. forged index

def forge_row(store, version, name, forged: bytes):
    """Rewrite NAME's row in snapshots/VERSION.db to FORGED's size and digests, and drop in
    its blob: what an attacker with the disk can do without any key."""
    sha = hashlib.sha256(forged).hexdigest()
    fsv = fsv_hex(forged)
    b = blob_path(store, sha)
    b.parent.mkdir(exist_ok=True)
    b.write_bytes(forged)
    os.chmod(b, 0o444)
    con = sqlite3.connect(Path(store) / "snapshots" / f"{version}.db")
    base = name.rsplit("/", 1)[-1]
    n = con.execute("update node set sha256 = ?, fsverity = ?, size = ? where name = ?",
                    (bytes.fromhex(sha), bytes.fromhex(fsv), len(forged), base.encode())).rowcount
    con.commit()
    con.close()
    assert n == 1, f"{name}: {n} rows"
    return sha


def assert_refused(m, version, *words):
    assert version not in m.snapshots(), f"{version} is served: {m.snapshots()}"
    line = check_line(m, "snapshot")
    assert version in line and all(w in line for w in words), line
    with pytest.raises(OSError) as ei:
        os.stat(m / "snapshots" / version)
    assert ei.value.errno == errno.ENOENT


def test_rewritten_index_row_is_never_served(mounts, tmp_path, ikits, trust):
    s = tmp_path / "store"
    import_ok(s, trust, ikits["v1"])
    import_ok(s, trust, ikits["v2"])
    forged = b'{"version": "forged"}\n'
    forge_row(s, "v2", "feeds/db.json", forged)

    m = mounts.mount(s, trust)
    assert_refused(m, "v2", "does not match its signed manifest", "db.json")
    assert m.health() == "CRITICAL"
    assert "CRITICAL" in check_line(m, "snapshot")
    assert m.snapshots() == ["v1"]
    assert (m / "snapshots/v1/feeds/db.json").read_bytes() != forged
    r = m.control("activate v2")
    assert r == errno.EBADMSG, errname(r)
    assert db_pointer(s) == "v1"
    r = m.control("verify v2")
    assert r == errno.ENOENT, errname(r)

    # the remedy: the snapshot's own kit, --repair, rebuilds the index
    kitlib.assert_ok(import_kit(s, trust, ikits["v2"], "--repair"))
    wait_for(lambda: "v2" in m.snapshots(), "v2 to be served after the repair")
    assert sha256sum(m / "snapshots/v2/feeds/db.json") == \
        sha256sum(ikits["trees"]["v2"] / "feeds/db.json")
    assert m.health() == "HEALTHY", "\n".join(health_lines(m))


def test_forged_row_in_the_current_snapshot_is_never_served(mounts, tmp_path, ikits, trust):
    s = tmp_path / "store"
    import_ok(s, trust, ikits["v1"])
    forged = os.urandom(3 * BLOCK)[:100]
    forge_row(s, "v1", "feeds/check/f0", forged)
    m = mounts.mount(s, trust)
    assert_refused(m, "v1")
    assert m.health() == "CRITICAL"
    with pytest.raises(OSError):
        (m / "current" / "feeds/check/f0").read_bytes()


def tree_listing(root) -> dict:
    """Every entry under ROOT: its type and mode, a symlink's target, a file's SHA-256."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = Path(dirpath) / n
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if os.path.islink(p):
                out[rel] = ("l", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("d", oct(st.st_mode & 0o7777))
            else:
                out[rel] = ("f", oct(st.st_mode & 0o7777), sha256sum(p))
    return out


def test_index_that_answers_the_check_and_the_reads_differently_is_not_served(
        mounts, tmp_path, ikits, trust):
    """snapshots/V.db is a file on the disk the store does not trust, and SQLite lets it
    carry its own schema: a view that shows the genuine rows to a connection configured
    as the check's and forged ones (a setuid mode, an extra entry) to the serving
    connections passed every comparison.  The mount serves an index it built itself
    from the kept, signed manifest: the tree is the kit's, whatever V.db says."""
    s = tmp_path / "store"
    import_ok(s, trust, ikits["v1"], "--activate")
    db = Path(s) / "snapshots" / "v1.db"
    con = sqlite3.connect(db)
    con.executescript("""
        ALTER TABLE node RENAME TO node_real;
        CREATE TABLE node_forged AS SELECT * FROM node_real;
        UPDATE node_forged SET mode = 2541 WHERE name = CAST('db.json' AS BLOB);
        INSERT INTO node_forged SELECT 999999, parent, CAST('evil' AS BLOB), type, 2541, size,
            data_off, tree_off, sha256, fsverity, target
            FROM node_real WHERE name = CAST('db.json' AS BLOB);
        CREATE VIEW node AS
            SELECT * FROM node_real WHERE (SELECT cache_size FROM pragma_cache_size) <> -512
            UNION ALL
            SELECT * FROM node_forged WHERE (SELECT cache_size FROM pragma_cache_size) = -512;
    """)
    con.close()
    m = mounts.mount(s, trust)
    served = tree_listing(m / "snapshots" / "v1")
    assert served == tree_listing(ikits["trees"]["v1"])
    assert not (m / "snapshots/v1/feeds/evil").exists()

    # a write to V.db while mounted changes nothing served either
    con = sqlite3.connect(db)
    con.executescript("""
        DROP VIEW node;
        INSERT INTO node_real SELECT 999998, parent, CAST('evil2' AS BLOB), type, 2541, size,
            data_off, tree_off, sha256, fsverity, target
            FROM node_real WHERE name = CAST('db.json' AS BLOB);
        ALTER TABLE node_real RENAME TO node;
    """)
    con.close()
    assert tree_listing(m / "snapshots" / "v1") == served
    assert not (m / "snapshots/v1/feeds/evil2").exists()


def test_tampered_kept_manifest_is_refused(mounts, tmp_path, ikits, trust):
    s = tmp_path / "store"
    import_ok(s, trust, ikits["v1"])
    import_ok(s, trust, ikits["v2"])
    sha, js, sig = kept(s, "v2")
    assert js.is_file() and sig.is_file(), "the import must keep the signed manifest"
    assert js.read_bytes() == kitlib.kit_manifest(ikits["v2"])[0]
    assert hashlib.sha256(js.read_bytes()).hexdigest() == sha
    text = js.read_bytes() + b" "
    os.chmod(js, 0o644)
    js.write_bytes(text)
    m = mounts.mount(s, trust)
    assert_refused(m, "v2", "not the manifest store.db names")
    assert m.health() == "CRITICAL"


def test_consistently_forged_manifest_fails_its_signatures(mounts, tmp_path, ikits, trust):
    """Index row, blob, kept manifest, store.db's digest and the index's digest all
    rewritten to agree: only the signature tells, and it does."""
    s = tmp_path / "store"
    import_ok(s, trust, ikits["v1"])
    import_ok(s, trust, ikits["v2"])
    old_sha, js, sig = kept(s, "v2")
    forged = b'{"version": "forged"}\n'
    sha = forge_row(s, "v2", "feeds/db.json", forged)
    man = json.loads(js.read_bytes())
    for a in man["artifacts"]:
        if a["name"] == "feeds/db.json":
            a.update(size=len(forged), sha256=sha, fsverity="sha256:" + fsv_hex(forged))
    new = json.dumps(man, indent=2).encode() + b"\n"
    new_sha = hashlib.sha256(new).hexdigest()
    (s / "manifests" / f"{new_sha}.json").write_bytes(new)
    shutil.copy(sig, s / "manifests" / f"{new_sha}.sig")
    con = sqlite3.connect(s / "store.db")
    con.execute("update snapshot set manifest_sha256 = ? where version = 'v2'", (new_sha,))
    con.commit()
    con.close()
    con = sqlite3.connect(s / "snapshots" / "v2.db")
    con.execute("update meta set value = ? where key = 'manifestSha256'", (new_sha.encode(),))
    con.commit()
    con.close()

    m = mounts.mount(s, trust)
    assert_refused(m, "v2", "trusted signatures")
    r = m.control("activate v2")
    assert r == errno.EKEYREJECTED, errname(r)


def test_snapshot_without_a_kept_manifest_is_refused_until_repaired(mounts, tmp_path, ikits,
                                                                    trust):
    """A store written before manifests were kept: its snapshots are refused (serving them
    would let anyone who deletes manifests/ serve a forged index) until --repair."""
    s = tmp_path / "store"
    import_ok(s, trust, ikits["v1"])
    import_ok(s, trust, ikits["v2"], "--activate")
    _, js, sig = kept(s, "v2")
    js.unlink()
    sig.unlink()
    m = mounts.mount(s, trust)
    assert_refused(m, "v2", "no signed manifest kept")
    assert m.health() == "CRITICAL"
    kitlib.assert_ok(import_kit(s, trust, ikits["v2"], "--repair"))
    assert js.is_file() and sig.is_file()
    wait_for(lambda: "v2" in m.snapshots(), "v2 to be served after the repair")
    assert m.current() == "snapshots/v2"
    assert m.health() == "HEALTHY", "\n".join(health_lines(m))


def test_remove_and_sweep_take_the_kept_manifest(mounts, tmp_path, ikits, trust):
    s = tmp_path / "store"
    import_ok(s, trust, ikits["v1"])
    import_ok(s, trust, ikits["v2"])
    _, js, sig = kept(s, "v2")
    stray = s / "manifests" / ("ab" * 32 + ".json")
    stray.write_bytes(b"{}")
    m = mounts.mount(s, trust)
    m.control_ok("remove v2")
    assert not js.exists() and not sig.exists() and not stray.exists(), \
        sorted(os.listdir(s / "manifests"))
    _, js1, _ = kept(s, "v1")
    assert js1.is_file()


# --------------------------------------------------------------------------- 3. trust

def test_store_signed_by_another_key_is_not_served(mounts, tmp_path, ikits, trust, keys):
    s = tmp_path / "store"
    import_ok(s, trust, ikits["v1"])                         # signed by ed25519
    m = mounts.mount(s, keys["ecdsa"].pub, "threshold=3")
    assert m.snapshots() == []
    sigline = check_line(m, "signature")
    assert sigline.startswith("CRITICAL") and "v1" in sigline, sigline
    assert metric(m, "trust_store_valid") == 0
    assert m.health() == "CRITICAL"
    assert m.status()["health"] == "CRITICAL"
    m.umount()

    # the right key but a threshold of 3: one signature is not enough either
    m = mounts.mount(s, trust, "threshold=3")
    assert m.snapshots() == []
    assert check_line(m, "signature").startswith("CRITICAL")
    assert metric(m, "trust_store_valid") == 0
    m.umount()

    m = mounts.mount(s, trust)
    assert m.snapshots() == ["v1"]
    assert check_line(m, "signature").startswith("OK")
    assert metric(m, "trust_store_valid") == 1


def test_reload_after_a_key_is_retired(mounts, tmp_path, ikits, trust, keys):
    """Two keys trusted; v1 signed by ed25519, w1 (another kitId) by ecdsa.  Retiring
    ed25519 and reloading stops serving v1 (current): CRITICAL, trust_store_valid 0, and
    activating it is refused with EKEYREJECTED; w1 stays served and may be activated."""
    s = tmp_path / "store"
    import_ok(s, trust, ikits["v1"])
    tdir = tmp_path / "trust"
    tdir.mkdir()
    shutil.copy(keys["ed25519"].pub, tdir / "a.pub")
    shutil.copy(keys["ecdsa"].pub, tdir / "b.pub")
    import_ok(s, tdir, ikits["w1"])
    m = mounts.mount(s, tdir)
    assert m.snapshots() == ["v1", "w1"]
    assert m.current() == "snapshots/v1"
    assert m.health() == "HEALTHY", "\n".join(health_lines(m))

    (tdir / "a.pub").unlink()
    r = m.control("reload")
    assert r == errno.EKEYREJECTED, errname(r)
    assert "v1" in m.log_line("reload")
    assert m.snapshots() == ["w1"]
    sigline = check_line(m, "signature")
    assert sigline.startswith("CRITICAL") and "v1" in sigline, sigline
    assert metric(m, "trust_store_valid") == 0
    assert m.health() == "CRITICAL"
    with pytest.raises(OSError):
        (m / "current" / "notes.txt").read_bytes()
    r = m.control("activate v1")
    assert r == errno.EKEYREJECTED, errname(r)
    assert db_pointer(s) == "v1"

    m.control_ok("activate w1")
    assert m.current() == "snapshots/w1"
    assert check_line(m, "signature").startswith("OK")
    assert metric(m, "trust_store_valid") == 1
    assert "WARNING" in check_line(m, "snapshot")
    r = m.control("rollback")
    assert r == errno.EKEYREJECTED, errname(r)

    # the key trusted again: v1 is served again after reload
    shutil.copy(keys["ed25519"].pub, tdir / "a.pub")
    m.control_ok("reload")
    assert m.snapshots() == ["v1", "w1"]
    assert m.health() == "HEALTHY", "\n".join(health_lines(m))


# --------------------------------------------------------------------------- status -s -t

def test_status_of_a_store_with_a_trust_store(tmp_path, ikits, trust, keys):
    s = tmp_path / "store"
    import_ok(s, trust, ikits["v1"])
    cp = kitlib.run("status", "-s", s, "-t", trust)
    assert cp.returncode == 0, describe(cp)
    cp = kitlib.run("status", "-s", s, "-t", keys["ecdsa"].pub)
    assert cp.returncode == 2 and re.search(r"CRITICAL +signature", cp.stdout), describe(cp)
    cp = kitlib.run("status", "-s", s, "-t", trust, "--threshold", "2")
    assert cp.returncode == 2, describe(cp)
    forge_row(s, "v1", "feeds/db.json", b"forged\n")
    cp = kitlib.run("status", "-s", s, "-t", trust)
    assert cp.returncode == 2 and "does not match its signed manifest" in cp.stdout + cp.stderr, \
        describe(cp)


def test_extra_row_in_the_index_is_never_served(mounts, tmp_path, ikits, trust):
    """A file the manifest does not list, added to V.db with its blob: refused."""
    s = tmp_path / "store"
    import_ok(s, trust, ikits["v1"])
    import_ok(s, trust, ikits["v2"])
    forged = b"not signed by anyone\n"
    sha = hashlib.sha256(forged).hexdigest()
    b = blob_path(s, sha)
    b.parent.mkdir(exist_ok=True)
    b.write_bytes(forged)
    con = sqlite3.connect(s / "snapshots" / "v2.db")
    feeds = con.execute("select ino from node where name = ? and parent = 1",
                        (b"feeds",)).fetchone()[0]
    con.execute("insert into node values((select max(ino) + 1 from node), ?, ?, 0, 420, ?, 0, -1,"
                " ?, ?, NULL)", (feeds, b"evil", len(forged), bytes.fromhex(sha),
                                 bytes.fromhex(fsv_hex(forged))))
    con.commit()
    con.close()
    m = mounts.mount(s, trust)
    assert_refused(m, "v2", "entries")
    assert not (m / "snapshots/v1/feeds/evil").exists()
