#!/usr/bin/env python3
"""Seeds for fuzz_index (called by make-corpus.sh).

    make-index-corpus.py SEEDS CORPUS PENDING

SEEDS holds the real indexes fuzz_index writes at start-up (STELLA_FUZZ_SEEDS):
cache-<kit>.db as snapshot_open_kit left them in its cache directory, and
store-<kit>.db as a store import did.  CORPUS gets them with 512-byte pages
(VACUUM: the same database, a tenth of the bytes to mutate), one at the
daemon's 4 KiB page size, and variants valid except for one thing: cache-*
variants keep their meta facts (kitSize, kitHead, trust, ...; the harness
sets kitStat, which changes from run to run), so that the harness takes them
as the cached index of its kit and they reach snapshot_open_kit's cached
path.  A variant named in PENDING_NAMES (one that
crashes until a fix lands in a file the fuzzing work does not own) goes to
PENDING instead of CORPUS, so that scripts/fuzz.sh stays green meanwhile.
"""
import os
import shutil
import sqlite3
import sys

src, out, pending = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(out, exist_ok=True)
os.makedirs(pending, exist_ok=True)

PENDING_NAMES = set()   # none at the moment: see tests/fuzz/pending/README.md

def dest(name):
    return os.path.join(pending if name in PENDING_NAMES else out, name)

def small(path, dst):
    """A copy with 512-byte pages (VACUUM): the same database, a tenth the size."""
    shutil.copy(path, dst)
    db = sqlite3.connect(dst, isolation_level=None)
    db.execute("PRAGMA page_size=512")
    db.execute("VACUUM")
    db.close()

def variant(base, name, *sql):
    dst = dest(name)
    small(os.path.join(src, base), dst)
    db = sqlite3.connect(dst, isolation_level=None)
    for s in sql:
        before = db.total_changes
        db.execute(s)
        if s.split()[0] in ("UPDATE", "DELETE", "INSERT") and db.total_changes == before:
            sys.exit("make-corpus: %s: changes nothing: %s" % (name, s))
    db.execute("VACUUM")
    db.close()

bases = sorted(os.listdir(src))
# The real indexes: one at the daemon's page size, every one small.
shutil.copy(os.path.join(src, "store-syn2.kit.db"), os.path.join(out, "store-syn2.kit.4k.db"))
for b in bases:
    small(os.path.join(src, b), os.path.join(out, b))

# Valid except one thing.  cache-* keep their meta facts, so that the
# harness takes them as the cached index of its kit (direct mode).
for b in ("cache-syn.kit.zst.db", "cache-syn2.kit.db", "store-syn2.kit.db"):
    p = b.split(".")[0]
    variant(b, p + "-huge-size.db", "UPDATE node SET size=1125899906842624 WHERE name=CAST('two-levels' AS BLOB)")
    variant(b, p + "-size-past-end.db", "UPDATE node SET size=size+8192 WHERE name=CAST('blocks.txt' AS BLOB)")
    variant(b, p + "-neg-offsets.db", "UPDATE node SET data_off=-4096, tree_off=-2 WHERE type=0")
    variant(b, p + "-offsets-far.db", "UPDATE node SET data_off=4611686018427387904, tree_off=9223372036854775807 WHERE type=0")
    variant(b, p + "-types.db", "UPDATE node SET type=7 WHERE name=CAST('README' AS BLOB)",
            "UPDATE node SET type=1 WHERE name=CAST('two-levels' AS BLOB)", "UPDATE node SET type=0 WHERE name=CAST('nvd' AS BLOB)",
            "UPDATE node SET type=-1 WHERE name=CAST('latest' AS BLOB)")
    variant(b, p + "-names.db", "UPDATE node SET name=zeroblob(300) WHERE name=CAST('README' AS BLOB)",
            "UPDATE node SET name=CAST('a/b' AS BLOB) WHERE name=CAST('bin' AS BLOB)", "UPDATE node SET name=x'610062' WHERE name=CAST('empty' AS BLOB)",
            "UPDATE node SET name=CAST('.' AS BLOB) WHERE name=CAST('rules' AS BLOB)", "UPDATE node SET name=CAST('..' AS BLOB) WHERE name=CAST('nvd' AS BLOB)")
    variant(b, p + "-target.db", "UPDATE node SET target=zeroblob(5000) WHERE name=CAST('latest' AS BLOB)",
            "UPDATE node SET type=2, target=NULL WHERE name=CAST('README' AS BLOB)")
    variant(b, p + "-cycle.db", "UPDATE node SET parent=9 WHERE name=CAST('feeds' AS BLOB)",
            "UPDATE node SET parent=ino WHERE name=CAST('big' AS BLOB)", "UPDATE node SET parent=0 WHERE name=CAST('rules' AS BLOB)")
    variant(b, p + "-digests.db", "UPDATE node SET sha256=x'00' WHERE name=CAST('README' AS BLOB)",
            "UPDATE node SET fsverity=zeroblob(31) WHERE name=CAST('two-levels' AS BLOB)",
            "UPDATE node SET fsverity=NULL, sha256=NULL WHERE name=CAST('blocks.txt' AS BLOB)",
            "UPDATE node SET fsverity=zeroblob(32) WHERE name=CAST('one-block' AS BLOB)")
    variant(b, p + "-columns.db", "UPDATE node SET size='big', mode=x'ff', data_off=1.5e300 WHERE name=CAST('a.json' AS BLOB)",
            "UPDATE node SET ino=-5 WHERE name=CAST('run' AS BLOB)")
    variant(b, p + "-meta.db", "UPDATE meta SET value='18446744073709551615' WHERE key IN ('files','bytes','signers')")
    variant(b, p + "-identity.db", "UPDATE meta SET value=replace(value, '2025-02-14', '2025-01-14') WHERE key='identity'")
    variant(b, p + "-no-identity.db", "DELETE FROM meta WHERE key='identity'")
    variant(b, p + "-schema.db", "DROP INDEX node_children", "DROP TABLE point",
            "CREATE TABLE point(out TEXT)")
    variant(b, p + "-no-node.db", "DROP TABLE node", "CREATE TABLE node(x)")
# A tree kept in the index (as for a kit without merkle.bin): right size with
# wrong hashes, and the wrong size.
variant("cache-syn2.kit.db", "cache-syn2-tree-garbage.db",
        "UPDATE node SET tree_off=-1 WHERE CAST(name AS TEXT) IN ('two-levels','blocks.txt')",
        "INSERT INTO tree SELECT fsverity, zeroblob(12288) FROM node WHERE name=CAST('two-levels' AS BLOB)",
        "INSERT INTO tree SELECT fsverity, x'00' FROM node WHERE name=CAST('blocks.txt' AS BLOB)")
# Seek points of a compressed kit: not starting at 0, a short window, bits
# out of range, out of order, far inputs.
z = "cache-syn.kit.zst.db"
variant(z, "cache-syn-points-not-0.db", "UPDATE point SET out=5")
variant(z, "cache-syn-points-many.db",
        "INSERT INTO point VALUES(4096, 99999999999, 200, x'0102')",
        "INSERT INTO point VALUES(8192, 3, 7, zeroblob(32768))",
        "INSERT INTO point VALUES(9223372036854775807, 3, 7, NULL)")
variant(z, "cache-syn-points-negative.db", "INSERT INTO point VALUES(-1, -1, -1, zeroblob(32768))")
variant(z, "cache-syn-no-points.db", "DELETE FROM point")
variant(z, "cache-syn-stream-size.db", "UPDATE meta SET value='1' WHERE key='streamSize'")
variant(z, "cache-syn-stream-size-bad.db", "UPDATE meta SET value=x'00' WHERE key='streamSize'")
g = "cache-ex.kit.gz.db"
variant(g, "cache-ex-points.db", "UPDATE point SET inpos=inpos+7, bits=9",
        "INSERT INTO point VALUES(100, 50, 3, zeroblob(32768))")
variant(g, "cache-ex-point-bits.db", "INSERT INTO point VALUES(100, 50, 9, zeroblob(32768))")
variant(g, "cache-ex-point-no-window.db", "INSERT INTO point VALUES(100, 50, 0, NULL)")
variant(g, "cache-ex-point-in-0.db", "INSERT INTO point VALUES(100, 0, 3, zeroblob(32768))")

# Raw damage to the file itself.
raw = open(os.path.join(out, "store-syn2.kit.db"), "rb").read()
def put(name, data):
    open(os.path.join(out, name), "wb").write(data)
put("raw-half.db", raw[: len(raw) // 2])
put("raw-header.db", raw[:100])
put("raw-empty.db", b"")
put("raw-not-sqlite.db", b"hello, not a database\n")
b = bytearray(raw); b[512:1024] = bytes(512); put("raw-page2-zero.db", bytes(b))
b = bytearray(raw); b[18] = b[19] = 2; put("raw-wal-header.db", bytes(b))
b = bytearray(raw); b[16:18] = b"\x00\x03"; put("raw-page-size.db", bytes(b))
b = bytearray(raw); b[28:32] = b"\xff\xff\xff\x00"; put("raw-page-count.db", bytes(b))
