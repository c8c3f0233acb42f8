"""`stellakit inspect [--json] KIT` and `stellakit diff OLD_KIT NEW_KIT`."""

import json
import random
import re

import pytest

import kitlib
from kitlib import (MERKLE, assert_fail, assert_ok, basic_items, dir_item, file_item,
                    kit_from_items, link_item, run, sort_items)

COMPRESSIONS = kitlib.COMPRESSIONS


# --------------------------------------------------------------------------- inspect

@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_inspect_json_matches_manifest(packed, compress):
    k = packed(compress)
    cp = assert_ok(run("inspect", "--json", k.path))
    j = json.loads(cp.stdout)
    m = k.manifest
    for f in ("kitId", "version", "sequence", "channel", "createdAt", "expiresAt"):
        assert j[f] == m[f], f
    assert j["compression"] == compress
    names = [ti.name for ti, _ in k.members]
    assert j["merkle"] is (MERKLE in names)
    assert j["signatures"] == len(kitlib.kit_sig_lines(k.path)) == 1
    # artifacts: same names, same order, same values for what the manifest says
    assert [a["name"] for a in j["artifacts"]] == [a["name"] for a in m["artifacts"]]
    for ja, ma in zip(j["artifacts"], m["artifacts"]):
        assert ja.get("type", "file") == ma.get("type", "file"), ma["name"]
        for f in ("size", "sha256", "fsverity", "mode", "target"):
            if f in ma:
                assert ja[f] == ma[f], (ma["name"], f)
    # components: the manifest's object, or a list of {name, path, ...}
    comps = j["components"]
    if isinstance(comps, dict):
        for name, c in m["components"].items():
            assert comps[name]["path"] == c["path"]
            assert comps[name]["capturedAt"] == c["capturedAt"]
    else:
        got = {c["name"]: c for c in comps}
        assert set(got) == set(m["components"])
        for name, c in m["components"].items():
            assert got[name]["path"] == c["path"]


def test_inspect_text(packed):
    k = packed("gzip")
    cp = assert_ok(run("inspect", k.path))
    out = cp.stdout
    for v in ("test-kit", "2025.01.15", "20250115", "stable", kitlib.CREATED_AT,
              kitlib.EXPIRES_FAR, "vulnerability-database", "feeds/vuln-db/vuln.db",
              "tools/run.sh", kitlib.UNICODE_NAME):
        assert v in out, v


def test_inspect_assembled_kit_two_signatures_no_merkle(keys, tmp_path):
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["ecdsa"], keys["rsa"]],
                         compress="zstd")
    j = json.loads(assert_ok(run("inspect", "--json", kit)).stdout)
    assert j["signatures"] == 2
    assert j["merkle"] is False
    assert j["compression"] == "zstd"
    assert [a["name"] for a in j["artifacts"]] == [it.name for it in basic_items()]
    link = next(a for a in j["artifacts"] if a["name"] == "dir/link")
    assert link["type"] == "symlink" and link["target"] == "b.bin"


def test_inspect_needs_no_trust(keys, tmp_path):
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["untrusted"]],
                         manifest_fields={"createdAt": "2019-12-01T00:00:00Z",
                                          "expiresAt": "2020-01-01T00:00:00Z"})
    j = json.loads(assert_ok(run("inspect", "--json", kit)).stdout)
    assert j["expiresAt"] == "2020-01-01T00:00:00Z"


def test_inspect_invalid_manifest(keys, tmp_path):
    _, members = kitlib.split_items(basic_items())
    kit = kitlib.signed_kit(tmp_path / "kit", b"{not json", members, [keys["ed25519"]])
    assert_fail(run("inspect", kit), 3, "manifest")
    assert_fail(run("inspect", "--json", kit), 3, "manifest")


def test_inspect_wrong_schema_version(keys, tmp_path):
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["ed25519"]],
                         manifest_fields={"schemaVersion": 99})
    assert_fail(run("inspect", "--json", kit), 3, "schemaVersion")


def test_inspect_not_an_archive(tmp_path):
    kit = tmp_path / "kit"
    kit.write_bytes(random.Random(1).randbytes(5000))
    assert_fail(run("inspect", kit), 3)


def test_inspect_truncated(keys, tmp_path):
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["ed25519"]])
    kit.write_bytes(kit.read_bytes()[:600])
    assert_fail(run("inspect", kit), 3, "truncated")


def test_inspect_usage():
    assert_fail(run("inspect"), 2)
    assert_fail(run("inspect", "--bogus", "x"), 2)


# --------------------------------------------------------------------------- diff

_DETAIL = re.compile(r" \([^()]*\)$")


def _diff_lines(cp):
    """The change lines of diff output as a set of "<c> NAME" strings.  Tolerant: other
    lines (a summary) and a trailing " (detail)" are ignored here; the exact format is
    checked by test_diff_output_format_is_exact."""
    lines = [_DETAIL.sub("", ln) for ln in cp.stdout.splitlines() if ln[:2] in ("+ ", "- ", "~ ")]
    assert len(lines) == len(set(lines)), cp.stdout
    return set(lines)


@pytest.fixture(scope="module")
def diff_kits(keys, tmp_path_factory):
    d = tmp_path_factory.mktemp("diff")
    rng = random.Random(99)
    big = rng.randbytes(9000)
    old = sort_items([
        file_item("a.txt", b"A\n"),
        file_item("b.txt", b"B\n"),
        file_item("c.txt", b"C\n"),
        file_item("d.txt", b"D\n"),
        file_item("big.bin", big),
        link_item("link1", "a.txt"),
        link_item("link2", "b.txt"),
        dir_item("emptyold"),
        dir_item("private", 0o700),
        file_item("typechg", b"was a file\n"),
        file_item("données/αβγ.json", b"{}"),
    ])
    big2 = bytearray(big)
    big2[8500] ^= 1
    new = sort_items([
        file_item("a.txt", b"A\n"),                   # unchanged
        file_item("b.txt", b"B2\n"),                  # content
        file_item("c.txt", b"C\n", 0o755),            # mode
        file_item("e.txt", b"E\n"),                   # added
        file_item("big.bin", bytes(big2)),            # same size, other content
        link_item("link1", "a.txt"),                  # unchanged
        link_item("link2", "c.txt"),                  # target
        dir_item("emptynew"),                         # added (directory)
        dir_item("private", 0o750),                   # directory mode
        link_item("typechg", "a.txt"),                # type
        file_item("données/αβγ.json", b"{}"),         # unchanged
    ])
    k_old = kit_from_items(d / "old.tar", old, [keys["ed25519"]])
    k_new = kit_from_items(d / "new.tar.zst", new, [keys["ecdsa"]], compress="zstd",
                           manifest_fields={"version": "2025.01.22", "sequence": 20250122})
    return k_old, k_new


def test_diff_reports_each_change(diff_kits):
    old, new = diff_kits
    cp = assert_ok(run("diff", old, new))
    assert _diff_lines(cp) == {"~ b.txt", "~ c.txt", "- d.txt", "+ e.txt", "~ big.bin",
                               "~ link2", "- emptyold", "+ emptynew", "~ private",
                               "~ typechg"}


def test_diff_reversed(diff_kits):
    old, new = diff_kits
    cp = assert_ok(run("diff", new, old))
    assert _diff_lines(cp) == {"~ b.txt", "~ c.txt", "+ d.txt", "- e.txt", "~ big.bin",
                               "~ link2", "+ emptyold", "- emptynew", "~ private",
                               "~ typechg"}


def test_diff_same_kit_has_no_changes(diff_kits):
    old, _ = diff_kits
    cp = assert_ok(run("diff", old, old))
    assert _diff_lines(cp) == set()


def test_diff_ignores_compression_and_signatures(packed):
    cp = assert_ok(run("diff", packed("none").path, packed("zstd", ("ecdsa",)).path))
    assert _diff_lines(cp) == set()


def test_diff_output_format_is_exact(diff_kits):
    """Contract: exactly one line "+ NAME" / "- NAME" / "~ NAME" per changed artifact,
    nothing else; identical kits print nothing."""
    old, new = diff_kits
    cp = assert_ok(run("diff", old, new))
    assert sorted(cp.stdout.splitlines()) == sorted(
        ["~ b.txt", "~ c.txt", "- d.txt", "+ e.txt", "~ big.bin", "~ link2", "- emptyold",
         "+ emptynew", "~ private", "~ typechg"]), cp.stdout
    assert assert_ok(run("diff", old, old)).stdout == ""


def test_diff_of_packed_trees(keys, tmp_path):
    v1 = kitlib.make_small_tree(tmp_path / "v1")
    v2 = kitlib.make_small_tree(tmp_path / "v2", extra={"notes.txt": None,
                                                         "feeds/db.json": b'{"records": 4}\n',
                                                         "feeds/new.json": b"[]\n"})
    (v2 / "tools" / "tool.bin").chmod(0o755)
    k1, k2 = tmp_path / "k1.tar", tmp_path / "k2.tar.gz"
    assert_ok(kitlib.pack(v1, k1, [keys["ed25519"]]))
    assert_ok(kitlib.pack(v2, k2, [keys["ed25519"]], compress="gzip"))
    cp = assert_ok(run("diff", k1, k2))
    assert _diff_lines(cp) == {"- notes.txt", "~ feeds/db.json", "+ feeds/new.json",
                               "~ tools/tool.bin"}


def test_diff_malformed_kit(diff_kits, tmp_path):
    old, _ = diff_kits
    bad = tmp_path / "bad.tar"
    bad.write_bytes(random.Random(2).randbytes(4096))
    assert_fail(run("diff", old, bad), 3)


def test_diff_usage(diff_kits):
    old, _ = diff_kits
    assert_fail(run("diff", old), 2)
    assert_fail(run("diff"), 2)
