"""Black-box tests of what stellafs and stellakit show and what they trust of their own
files: a cached index damaged on disk is built again, never served (docs/mount.md "The
index cache"); names from a kit are escaped in status, status.json, health and metrics
(docs/mount.md "Virtual files"); the messages and refusals of the review's small
findings (expired kit's option, keygen's prefix, status of an unmounted directory, pack
of a missing source).

All mounts are unmounted by fixture teardown, pass or fail."""

import errno
import hashlib
import json
import os
import random
import re
import subprocess
from pathlib import Path

import pytest

import kitlib
from kitlib import assert_ok

VERSION = "2025.01.15"
PAGE = 4096


# --------------------------------------------------------------------------- the index cache

@pytest.fixture(scope="module")
def many_kit(tmp_path_factory, keys, stellakit_bin):
    """A kit of 1500 small files in 30 directories (an index of many pages) and its
    source tree."""
    root = tmp_path_factory.mktemp("many")
    src = root / "src"
    rng = random.Random(12)
    for d in range(30):
        for i in range(50):
            p = src / f"dir{d:02d}" / f"file-{i:03d}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(rng.randbytes(rng.randrange(1, 9000)))
    kit = root / "kit.tar"
    assert_ok(kitlib.pack(src, kit, [keys["ed25519"]]))
    return kit, src


def cache_db(cache):
    (db,) = Path(cache).glob("*.db")
    return db


def damage(path, offsets, length=512, seed=3):
    """Overwrite LENGTH random bytes at each offset with dd conv=notrunc, the way a
    failing disk changes a file in place (size and name unchanged)."""
    rng = random.Random(seed)
    for off in offsets:
        junk = rng.randbytes(length)
        kitlib.sh("dd", f"of={path}", "bs=1", f"seek={off}", "conv=notrunc", "status=none",
                  input=junk, text=False)


def assert_serves_source(m, src):
    """The mounted tree equals the source (listing and sha256 of every file), health is
    HEALTHY with no failure counted."""
    assert kitlib.tree_listing(m.snap(VERSION)) == kitlib.tree_listing(src)
    st = m.status()
    assert st["integrity"]["failures"] == 0, st["integrity"]
    assert st["health"] == "HEALTHY", m.text("health")


@pytest.mark.parametrize("where", ["header", "middle", "last"])
def test_damaged_cache_is_rebuilt(where, many_kit, keys, mounter, tmp_path):
    """Bytes of the cached KEY.db overwritten in place (the header page, a b-tree page in
    the middle, the last page): the next mount builds the index again from the kit and
    serves exactly the source tree, HEALTHY; it used to serve a broken tree (names that
    stat says are missing, or files failing with EIO blamed on the kit)."""
    kit, src = many_kit
    cache = tmp_path / "cache"
    m = mounter.mount(kit, keys["ed25519"].pub, cache=cache)
    mounter.umount(m.path)
    db = cache_db(cache)
    sum_file = Path(str(db) + ".sum")
    pages = db.stat().st_size // PAGE
    assert pages > 20, f"index of {pages} pages: too small for this test"
    first = {"header": 0, "middle": pages // 2, "last": pages - 1}[where]
    offsets = [PAGE * p + (100 if p == 0 else 8) for p in range(first, min(first + 3, pages))]
    damage(db, offsets)
    damaged = db.read_bytes()
    ino = db.stat().st_ino

    m = mounter.mount(kit, keys["ed25519"].pub, cache=cache)
    assert_serves_source(m, src)
    assert m.control("verify all") == 0
    now = db.read_bytes()
    assert now != damaged and db.stat().st_ino != ino, "the damaged index was served"
    assert sum_file.read_text() == hashlib.sha256(now).hexdigest() + "\n"


def test_cache_without_its_digest_is_rebuilt(many_kit, keys, mounter, tmp_path):
    """A cache file with no digest beside it (a crash between the two renames, or an
    index of an older stellafs) is built again, and gets its digest."""
    kit, src = many_kit
    cache = tmp_path / "cache"
    m = mounter.mount(kit, keys["ed25519"].pub, cache=cache)
    mounter.umount(m.path)
    db = cache_db(cache)
    Path(str(db) + ".sum").unlink()
    ino = db.stat().st_ino
    m = mounter.mount(kit, keys["ed25519"].pub, cache=cache)
    assert_serves_source(m, src)
    assert db.stat().st_ino != ino
    assert Path(str(db) + ".sum").read_text() == hashlib.sha256(db.read_bytes()).hexdigest() + "\n"


def test_intact_cache_is_reused(many_kit, keys, mounter, tmp_path):
    """The digest does not cost the cache its use: an intact index is mounted as is."""
    kit, src = many_kit
    cache = tmp_path / "cache"
    m = mounter.mount(kit, keys["ed25519"].pub, cache=cache)
    mounter.umount(m.path)
    db = cache_db(cache)
    ino = db.stat().st_ino
    m = mounter.mount(kit, keys["ed25519"].pub, cache=cache)
    assert_serves_source(m, src)
    assert db.stat().st_ino == ino, "an intact cached index was built again"


def test_index_in_a_temporary_directory_serves_concurrent_readers(many_kit, keys, mounter,
                                                                  tmp_path):
    """A cache directory others may write is not used: the index is built in a private
    temporary directory.  It used to be unlinked at once ("the pool holds it open"),
    but connections open on demand, so concurrent readers got EIO.  8 threads read
    every file, each must get the source's bytes."""
    from concurrent.futures import ThreadPoolExecutor
    kit, src = many_kit
    cache = tmp_path / "public-cache"
    cache.mkdir(mode=0o777)
    os.chmod(cache, 0o777)
    m = mounter.mount(kit, keys["ed25519"].pub, cache=cache)
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())

    def check(rel):
        return (m.path / "current" / rel).read_bytes() == (src / rel).read_bytes()
    kitlib.drop_caches()
    with ThreadPoolExecutor(8) as ex:
        ok = list(ex.map(check, files * 2))
    assert all(ok)
    assert not list(cache.iterdir()), "an index was kept in a directory others can write"


def test_cache_damaged_while_mounted_is_not_blamed_on_the_kit(many_kit, keys, mounter,
                                                              tmp_path):
    """The cached index changes under a running mount, in rows that still look right
    (every file's offset in the kit moved by one byte, changed with the sqlite3 tool):
    reads fail with EIO, but the failures are the cache's, not the kit's (no integrity
    failure counted, health not CRITICAL: it used to be, blaming the kit), and the next
    mount builds the index again and serves the source."""
    kit, src = many_kit
    cache = tmp_path / "cache"
    m = mounter.mount(kit, keys["ed25519"].pub, cache=cache)
    db = cache_db(cache)
    kitlib.sh("sqlite3", db, "UPDATE node SET data_off = data_off + 1 WHERE type = 0")
    kitlib.drop_caches()
    errors = 0
    for d in sorted(src.iterdir())[:3]:
        for f in sorted(os.listdir(m.snap(VERSION) / d.name)):
            try:
                data = (m.snap(VERSION) / d.name / f).read_bytes()
                assert data == (d / f).read_bytes(), f"{d.name}/{f}: wrong bytes served"
            except OSError as e:
                assert e.errno == errno.EIO, e
                errors += 1
    assert errors, "the damage did not show: this test tests nothing"
    st = m.status()
    assert st["integrity"]["failures"] == 0, st["integrity"]
    assert st["health"] == "HEALTHY", m.text("health")
    mounter.umount(m.path)
    assert not Path(str(db) + ".sum").exists(), "the changed cache's digest was kept"
    m = mounter.mount(kit, keys["ed25519"].pub, cache=cache)
    assert_serves_source(m, src)


# --------------------------------------------------------------------------- untrusted names in outputs

EVIL_COMPONENT = "feeds\nOK       forged: all good\x1b[31m\tend"
EVIL_FILE = "bad\nOK       integrity: forged.bin"
HEALTH_LINE = re.compile(r"^(OK|WARNING|CRITICAL) +[^ ].*: ")


@pytest.fixture
def evil_mount(tmp_path, keys, mounter, stellakit_bin):
    """A kit whose component name and one file name hold newlines (and ESC, a tab),
    that file's data damaged after packing and read once (so it is the last failure)."""
    src = tmp_path / "src"
    (src / "feeds").mkdir(parents=True)
    (src / "feeds" / "db.json").write_bytes(b"{}\n")
    (src / "feeds" / EVIL_FILE).write_bytes(random.Random(4).randbytes(9000))
    kit = tmp_path / "kit.tar"
    assert_ok(kitlib.pack(src, kit, [keys["ed25519"]], "--component",
                          f"{EVIL_COMPONENT}=feeds,warn=7,max=14"))
    kitlib.flip_byte(kit, kitlib.member_data_offset(kit, "feeds/" + EVIL_FILE) + 10)
    m = mounter.mount(kit, keys["ed25519"].pub, "now=2025-01-16T00:00:00Z")
    with pytest.raises(OSError) as ei:
        (m.snap(VERSION) / "feeds" / EVIL_FILE).read_bytes()
    assert ei.value.errno == errno.EIO
    return m


def test_health_has_one_line_per_check(evil_mount):
    """health: the overall word, then exactly one line per check (kit-expiry, one
    freshness per component, signature, integrity); a name cannot forge an OK line."""
    lines = evil_mount.text("health").split("\n")
    assert lines[-1] == ""
    lines = lines[:-1]
    assert lines[0] == "CRITICAL", lines
    assert len(lines) == 1 + 4, lines
    for ln in lines[1:]:
        assert HEALTH_LINE.match(ln), ln
        assert "\x1b" not in ln and "\t" not in ln, ln
    assert [ln.split()[0] for ln in lines[1:]] == ["OK", "OK", "OK", "CRITICAL"], lines
    assert r"freshness:feeds\nOK       forged: all good\x1b[31m\tend:" in lines[2]
    assert r"bad\nOK       integrity: forged.bin" in lines[4]


def test_status_text_escapes_names(evil_mount):
    text = evil_mount.text("status")
    assert "\x1b" not in text and "\t" not in text
    assert not [ln for ln in text.split("\n") if ln.lstrip().startswith("OK       forged")]
    assert not [ln for ln in text.split("\n") if ln.lstrip().startswith("OK       integrity")]
    assert r"feeds\nOK       forged: all good\x1b[31m\tend" in text


def test_status_json_carries_the_names_exactly(evil_mount):
    st = json.loads((evil_mount.path / "status.json").read_bytes())
    assert [c["name"] for c in st["components"]] == [EVIL_COMPONENT]
    assert st["integrity"]["lastFailure"].startswith(f"{VERSION}: feeds/{EVIL_FILE}: ")
    assert [c["name"] for c in st["checks"]][1] == "freshness:" + EVIL_COMPONENT


def test_metrics_parse_with_hostile_labels(evil_mount):
    text = (evil_mount.path / "metrics").read_text()
    assert "\x1b" not in text
    ms = kitlib.parse_metrics(text)
    want = r"feeds\nOK       forged: all good\\x1b[31m\\x09end"
    assert kitlib.metric(ms, "feed_freshness_days", component=want) > 0
    assert kitlib.metric(ms, "stellafs_integrity_failures_total") >= 1


def test_inspect_and_diff_escape_names(tmp_path, keys, stellakit_bin):
    """stellakit inspect and diff print a kit's names one per line, escaped: a newline
    in a file name or component name cannot add lines."""
    src = tmp_path / "src"
    (src / "feeds").mkdir(parents=True)
    (src / "feeds" / "db.json").write_bytes(b"{}\n")
    old = tmp_path / "old.tar"
    assert_ok(kitlib.pack(src, old, [keys["ed25519"]]))
    (src / "feeds" / EVIL_FILE).write_bytes(b"x")
    kit = tmp_path / "kit.tar"
    assert_ok(kitlib.pack(src, kit, [keys["ed25519"]], "--component",
                          f"{EVIL_COMPONENT}=feeds"))
    cp = kitlib.run("inspect", kit)
    assert_ok(cp)
    assert "\x1b" not in cp.stdout and "\t" not in cp.stdout
    lines = cp.stdout.split("\n")
    comps = lines[lines.index("Components:") + 1:lines.index("Artifacts:") - 1]
    assert len(comps) == 1 and comps[0].lstrip().startswith(
        r"feeds\nOK       forged: all good\x1b[31m\tend "), comps
    arts = [ln for ln in lines[lines.index("Artifacts:") + 1:] if ln]
    assert len(arts) == 2 and arts[0].endswith(r"feeds/bad\nOK       integrity: forged.bin"), arts
    cp = kitlib.run("diff", old, kit)
    assert cp.stdout == "+ feeds/bad\\nOK       integrity: forged.bin\n", cp.stdout


# --------------------------------------------------------------------------- an expired kit: each program names its own option

from storelib import fuse_ok, mnt_base, mounts  # noqa: E402,F401  (fixtures)

EXPIRES = "2025-02-01T00:00:00Z"
LATE = "now=2025-02-02T00:00:00Z"


@pytest.fixture
def expired_kit(tmp_path, keys):
    return kitlib.kit_from_items(tmp_path / "kit", kitlib.basic_items(), [keys["ed25519"]],
                                 manifest_fields={"expiresAt": EXPIRES})


def assert_names_option(line, option, other):
    assert option in line and other not in line, line


def test_expired_mount_names_stellafs_option(expired_kit, keys, mounter, tmp_path):
    """A refused mount of an expired kit, first (no cache) and from a cached index, says
    `-o allow_expired` (stellafs's option), not stellakit's `--allow-expired`."""
    cache = tmp_path / "cache"
    cp, _ = mounter.try_mount(expired_kit, keys["ed25519"].pub, LATE, cache=cache)
    line = kitlib.assert_fs_fail(cp, 6)
    assert_names_option(line, "-o allow_expired", "--allow-expired")
    m = mounter.mount(expired_kit, keys["ed25519"].pub, "now=2025-01-20T00:00:00Z", cache=cache)
    mounter.umount(m.path)
    cp, _ = mounter.try_mount(expired_kit, keys["ed25519"].pub, LATE, cache=cache)
    line = kitlib.assert_fs_fail(cp, 6)
    assert_names_option(line, "-o allow_expired", "--allow-expired")


def test_expired_stellakit_names_its_option(expired_kit, keys, tmp_path):
    pub = keys["ed25519"].pub
    cp = kitlib.run("verify", "-t", pub, "--now", "2025-02-02T00:00:00Z", expired_kit)
    line = kitlib.assert_fail(cp, 6)
    assert_names_option(line, "--allow-expired", "-o allow_expired")
    cp = kitlib.run("import", "-s", tmp_path / "store", "-t", pub, "--now",
                    "2025-02-02T00:00:00Z", expired_kit)
    line = kitlib.assert_fail(cp, 6)
    assert_names_option(line, "--allow-expired", "-o allow_expired")


def test_expired_import_by_the_daemon_names_its_option(expired_kit, keys, mounts, tmp_path):
    """`import` through the control file of a store mount: the journal's result names
    the daemon's option."""
    store = tmp_path / "store"
    store.mkdir()
    m = mounts.mount(store, keys["ed25519"].pub, LATE)
    assert m.control(f"import {expired_kit}") != 0
    assert_names_option(m.log_line(f"import {expired_kit}"), "-o allow_expired",
                        "--allow-expired")


# --------------------------------------------------------------------------- keygen, status, pack: small refusals

@pytest.mark.parametrize("prefix", ["", "{d}/", "{d}/.", "{d}/.."])
def test_keygen_refuses_a_prefix_without_a_file_name(prefix, tmp_path):
    """'' or 'dir/' wrote the hidden .key and .pub that a trust directory skips."""
    d = tmp_path / "keys"
    d.mkdir()
    cp = kitlib.run("keygen", prefix.format(d=d), cwd=d)
    kitlib.assert_fail(cp, 2, "PREFIX")
    assert list(d.iterdir()) == [], list(d.iterdir())
    assert not (tmp_path / ".key").exists() and not (tmp_path / ".pub").exists()


def test_status_of_an_unmounted_directory_is_unknown(small_tree, keys, mounter, tmp_path):
    """A directory holding a status.json that says HEALTHY (what an unmounted mount
    point, or a copy, may hold) is UNKNOWN (exit 3), not HEALTHY; the mount itself is
    still read."""
    kit = tmp_path / "kit.tar"
    assert_ok(kitlib.pack(small_tree, kit, [keys["ed25519"]]))
    m = mounter.mount(kit, keys["ed25519"].pub)
    cp = kitlib.run("status", m.path)
    assert cp.returncode == 0, kitlib.describe(cp)
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "status.json").write_bytes((m.path / "status.json").read_bytes())
    (stale / "status").write_bytes((m.path / "status").read_bytes())
    for args in ([stale], [stale, "--json"]):
        cp = kitlib.run("status", *args)
        line = kitlib.assert_fail(cp, 3, "not a stellafs mount")
        assert cp.stdout == "", cp.stdout
    # a FUSE file system that is not stellafs does not count either: a directory
    # inside the mount is on FUSE, but no stellafs is mounted there
    cp = kitlib.run("status", m.snap(VERSION) / "feeds")
    kitlib.assert_fail(cp, 3, "not a stellafs mount")


@pytest.mark.parametrize("what", ["missing", "file"])
def test_pack_of_a_missing_source_says_why(what, keys, tmp_path):
    src = tmp_path / "src"
    if what == "file":
        src.write_text("x")
    cp = kitlib.pack(src, tmp_path / "kit.tar", [keys["ed25519"]])
    line = kitlib.assert_fail(cp, 2)
    want = "No such file or directory" if what == "missing" else "Not a directory"
    assert line == f"stellakit: {src}: {want}", line
    assert not (tmp_path / "kit.tar").exists()


# --------------------------------------------------------------------------- an empty store's top

def test_empty_store_has_no_current_until_activation(mounts, tmp_path, keys, small_tree):
    """A store with no current snapshot lists neither `current` nor `feeds`, and both
    are ENOENT on lookup (the link used to be listed with a readlink of ENOENT); after
    the first import both appear and resolve."""
    store = tmp_path / "store"
    store.mkdir()
    m = mounts.mount(store, keys["ed25519"].pub)
    names = set(os.listdir(m.path))
    assert "current" not in names and "feeds" not in names, names
    assert {"snapshots", "status", "status.json", "health", "metrics", "control"} <= names
    for n in ("current", "feeds"):
        with pytest.raises(FileNotFoundError):
            os.lstat(m.path / n)
        with pytest.raises(FileNotFoundError):
            os.readlink(m.path / n)
    kit = tmp_path / "kit.tar"
    assert_ok(kitlib.pack(small_tree, kit, [keys["ed25519"]]))
    m.control_ok(f"import {kit}")   # a store's first snapshot becomes current
    m.control_ok(f"activate {VERSION}")
    assert {"current", "feeds"} <= set(os.listdir(m.path))
    assert os.readlink(m.path / "current") == f"snapshots/{VERSION}"
    assert (m.path / "feeds" / "db.json").read_bytes() == (small_tree / "feeds/db.json").read_bytes()
