"""`stellakit pack`: the archive it writes, checked with GNU tar, tarfile, sha256sum,
fsverity and openssl."""

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

import kitlib
from kitlib import (CREATED_AT, CREATED_EPOCH, EXPIRES_FAR, INDEX, MANIFEST, MERKLE, SIGNAME,
                    SIZE_FILES, assert_fail, assert_ok, run, sh)

COMPRESSIONS = kitlib.COMPRESSIONS


# --------------------------------------------------------------------------- side files

@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_pack_writes_kit_and_side_files(packed, compress):
    k = packed(compress)
    for suffix in ("", ".sha256", ".metadata.json", ".sig"):
        p = Path(str(k.path) + suffix)
        assert p.is_file() and p.stat().st_size > 0, p
    assert kitlib.compression_of(k.path) == compress


@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_sha256_file_is_sha256sum_format(packed, compress):
    k = packed(compress)
    text = Path(str(k.path) + ".sha256").read_text()
    assert text == f"{kitlib.sha256_file(k.path)}  {k.path.name}\n"
    cp = sh("sha256sum", "-c", k.path.name + ".sha256", cwd=k.path.parent, check=False)
    assert cp.returncode == 0, cp.stdout + cp.stderr


@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_metadata_matches_manifest_and_file(packed, compress):
    k = packed(compress)
    md, m = k.metadata, k.manifest
    for f in ("kitId", "version", "sequence", "channel", "createdAt", "expiresAt"):
        assert md[f] == m[f], f
    assert md["size"] == k.path.stat().st_size
    assert md["sha256"] == kitlib.sha256_file(k.path)
    assert md["manifestSha256"] == hashlib.sha256(k.manifest_bytes).hexdigest()


def test_gzip_has_no_name_or_time(packed):
    data = packed("gzip").path.read_bytes()
    assert data[:3] == b"\x1f\x8b\x08"
    assert data[3] & 0x08 == 0, "gzip header carries a file name"
    assert data[4:8] == b"\0\0\0\0", "gzip header carries a time"


def test_uncompressed_is_plain_tar(packed):
    data = packed("none").path.read_bytes()
    assert data[257:262] == b"ustar"
    assert len(data) % 512 == 0


# --------------------------------------------------------------------------- manifest

def test_manifest_identity_fields(packed):
    m = packed("none").manifest
    assert m["schemaVersion"] == 1
    assert m["kitId"] == "test-kit"
    assert m["version"] == "2025.01.15"
    assert m["sequence"] == 20250115 and isinstance(m["sequence"], int)
    assert m["channel"] == "stable"
    assert m["createdAt"] == CREATED_AT  # from SOURCE_DATE_EPOCH
    assert m["expiresAt"] == EXPIRES_FAR
    assert "base" not in m


def test_manifest_components(packed):
    comps = packed("none").manifest["components"]
    assert set(comps) == {"vulnerability-database", "tools"}
    v = comps["vulnerability-database"]
    assert v["path"] == "feeds/vuln-db"
    assert v["capturedAt"] == CREATED_AT
    assert v["warnAgeDays"] == 7 and v["maxAgeDays"] == 14 and v["records"] == 245000
    t = comps["tools"]
    assert t["path"] == "tools"
    assert t["capturedAt"] == "2025-01-10T00:00:00Z"
    assert "records" not in t
    assert t.get("warnAgeDays", 7) == 7 and t.get("maxAgeDays", 14) == 14


def _by_name(artifacts):
    out = {}
    for a in artifacts:
        assert a["name"] not in out, f"duplicate artifact {a['name']}"
        out[a["name"]] = a
    return out


def test_manifest_artifacts_match_source_tree(packed, src_tree):
    """Every regular file, symlink, empty or non-0755 directory of the source appears
    with the digests/modes computed by hashlib + `fsverity digest`; nothing else."""
    arts = packed("none").manifest["artifacts"]
    got = _by_name(arts)
    want = kitlib.expected_artifacts(src_tree)
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        g = got[name]
        assert kitlib.artifact_type(g) == w.get("type", "file"), name
        if "type" not in w:
            for f in ("size", "sha256", "fsverity", "mode"):
                assert g[f] == w[f], (name, f, g[f], w[f])
        elif w["type"] == "symlink":
            assert g["target"] == w["target"], name
        else:
            assert g.get("mode", 0o755) == w["mode"], name
    # implied (0755, non-empty) directories are not listed
    assert "feeds" not in got and "a/b" not in got and "sizes" not in got
    assert got["secrets"]["type"] == "directory" and got["secrets"]["mode"] == 0o700
    assert got["empty"]["type"] == "directory"
    assert got["tools/run.sh"]["mode"] == 0o755
    assert got["secrets/token"]["mode"] == 0o600
    assert got["tools/README"]["mode"] == 0o644
    assert got["feeds/latest"]["type"] == "symlink"
    assert got["feeds/latest"]["target"] == "vuln-db"


def test_manifest_artifacts_sorted_bytewise(packed):
    names = [a["name"] for a in packed("none").manifest["artifacts"]]
    assert names == sorted(names, key=kitlib.name_key)
    assert names.index("B.txt") < names.index("a-b.txt") < names.index("a/b/c/d/deep.txt")


@pytest.fixture(scope="module")
def extracted(packed, tmp_path_factory):
    """The uncompressed sample kit extracted with GNU tar."""
    d = tmp_path_factory.mktemp("extract-none")
    return kitlib.gnu_tar_extract(packed("none").path, d)


@pytest.mark.parametrize("size", sorted(SIZE_FILES), ids=lambda s: f"size{s}")
def test_artifact_digests_match_sha256sum_and_fsverity(packed, extracted, size):
    name = SIZE_FILES[size]
    a = _by_name(packed("none").manifest["artifacts"])[name]
    f = extracted / name
    assert f.stat().st_size == size == a["size"]
    assert a["sha256"] == sh("sha256sum", f).stdout.split()[0]
    assert a["fsverity"] == sh("fsverity", "digest", f).stdout.split()[0]
    assert a["fsverity"].startswith("sha256:")


# --------------------------------------------------------------------------- archive

@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_member_order(packed, compress):
    k = packed(compress)
    names = [ti.name for ti, _ in k.members]
    assert names[0] == MANIFEST
    assert names[1] == SIGNAME
    # kit format 1.1: the index third, bound by the manifest's "index"
    assert names[2] == INDEX
    data = dict((ti.name, d) for ti, d in k.members)[INDEX]
    assert k.manifest["index"] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert list(k.manifest).index("index") < list(k.manifest).index("artifacts")
    rest = names[3:]
    if rest and rest[0] == MERKLE:
        rest = rest[1:]
    assert rest == sorted(rest, key=kitlib.name_key)
    assert rest == [a["name"] for a in k.manifest["artifacts"]]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_members_owner_and_mtime(packed, compress):
    k = packed(compress)
    for ti, _ in k.members:
        assert (ti.uid, ti.gid) == (0, 0), ti.name
        assert ti.mtime == CREATED_EPOCH, (ti.name, ti.mtime)


def test_members_agree_with_artifacts(packed):
    k = packed("none")
    arts = _by_name(k.manifest["artifacts"])
    for ti, data in k.members[2:]:
        if ti.name in (MERKLE, INDEX):
            continue
        a = arts[ti.name]
        t = kitlib.artifact_type(a)
        if t == "file":
            assert ti.isreg(), ti.name
            assert len(data) == a["size"] and hashlib.sha256(data).hexdigest() == a["sha256"]
            assert stat.S_IMODE(ti.mode) == a["mode"], ti.name
        elif t == "symlink":
            assert ti.issym() and ti.linkname == a["target"], ti.name
        else:
            assert t == "directory" and ti.isdir(), ti.name
            assert stat.S_IMODE(ti.mode) == a.get("mode", 0o755), ti.name
        assert not (ti.islnk() or ti.ischr() or ti.isblk() or ti.isfifo())


@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_gnu_tar_extraction_reproduces_source(packed, src_tree, tmp_path, compress):
    k = packed(compress)
    out = kitlib.gnu_tar_extract(k.path, tmp_path / "x", compress)
    assert (out / MANIFEST).read_bytes() == k.manifest_bytes
    assert (out / SIGNAME).is_file()
    got = kitlib.snapshot_tree(out, exclude=("manifest",))
    want = kitlib.snapshot_tree(src_tree)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name


# --------------------------------------------------------------------------- signatures

def test_openssl_verifies_ecdsa_kit_and_manifest_signatures(packed, keys, tmp_path):
    k = packed("none", ("ecdsa",))
    pub = keys["ecdsa"].pub
    line = Path(str(k.path) + ".sig").read_text()
    assert line.endswith("\n") and len(line.strip().splitlines()) == 1
    der = base64.b64decode(line.strip(), validate=True)
    assert der[0] == 0x30, "ECDSA signature must be DER"
    (tmp_path / "kit.sig.der").write_bytes(der)
    cp = sh("openssl", "dgst", "-sha256", "-verify", pub, "-signature",
            tmp_path / "kit.sig.der", k.path, check=False)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    lines = kitlib.kit_sig_lines(k.path)
    assert len(lines) == 1
    (tmp_path / "manifest.json").write_bytes(k.manifest_bytes)
    (tmp_path / "m.sig.der").write_bytes(base64.b64decode(lines[0], validate=True))
    cp = sh("openssl", "dgst", "-sha256", "-verify", pub, "-signature",
            tmp_path / "m.sig.der", tmp_path / "manifest.json", check=False)
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_openssl_verifies_ed25519_signatures(packed, keys):
    k = packed("zstd")
    key = keys["ed25519"]
    sig = base64.b64decode(Path(str(k.path) + ".sig").read_text().strip(), validate=True)
    assert kitlib.openssl_verify(k.path, sig, key.pub, "ed25519")
    lines = kitlib.kit_sig_lines(k.path)
    assert len(lines) == 1
    assert kitlib.openssl_verify_bytes(k.manifest_bytes, base64.b64decode(lines[0]),
                                       key.pub, "ed25519")


def test_multiple_keys_each_sign_manifest(packed, keys):
    k = packed("gzip", ("ecdsa", "ed25519"))
    lines = kitlib.kit_sig_lines(k.path)
    assert len(lines) == 2
    for name in ("ecdsa", "ed25519"):
        key = keys[name]
        assert sum(kitlib.openssl_verify_bytes(k.manifest_bytes, base64.b64decode(ln),
                                               key.pub, key.kind) for ln in lines) == 1, name
    # the whole-kit signature is by the first key
    sig = base64.b64decode(Path(str(k.path) + ".sig").read_text().strip())
    assert kitlib.openssl_verify(k.path, sig, keys["ecdsa"].pub, "ecdsa-p256")


def test_rsa_key_signatures(small_tree, keys, tmp_path):
    kit = tmp_path / "kit.tar"
    key = keys["rsa"]
    assert_ok(kitlib.pack(small_tree, kit, [key]))
    sig = base64.b64decode(Path(str(kit) + ".sig").read_text().strip(), validate=True)
    assert len(sig) == 384
    assert kitlib.openssl_verify(kit, sig, key.pub, key.kind)
    mb, _ = kitlib.kit_manifest(kit)
    (line,) = kitlib.kit_sig_lines(kit)
    assert kitlib.openssl_verify_bytes(mb, base64.b64decode(line), key.pub, key.kind)


# --------------------------------------------------------------------------- reproducible

@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_reproducible_with_ed25519(packed, src_tree, keys, tmp_path, compress):
    first = packed(compress)
    # same content in another place, with other file mtimes
    copy = kitlib.copy_tree(src_tree, tmp_path / "copy")
    for dirpath, dirnames, filenames in os.walk(copy):
        for n in dirnames + filenames:
            os.utime(Path(dirpath) / n, (1e9, 1e9), follow_symlinks=False)
    out = tmp_path / "again" / "kit.tar"
    out.parent.mkdir()
    assert_ok(kitlib.pack(copy, out, [keys["ed25519"]], compress=compress, components=True))
    assert out.read_bytes() == first.path.read_bytes()
    assert Path(str(out) + ".sha256").read_text() == Path(str(first.path) + ".sha256").read_text()


def test_ecdsa_packs_differ_only_in_signature_member(small_tree, keys, tmp_path):
    kits = []
    for n in ("one", "two"):
        out = tmp_path / n / "kit.tar"
        out.parent.mkdir()
        assert_ok(kitlib.pack(small_tree, out, [keys["ecdsa"]]))
        kits.append(kitlib.kit_members(out))
    a, b = kits
    assert [ti.name for ti, _ in a] == [ti.name for ti, _ in b]
    for (ta, da), (tb, db) in zip(a, b):
        if ta.name == SIGNAME:
            continue
        assert (ta.type, ta.mode, ta.uid, ta.gid, ta.mtime, ta.size, ta.linkname) == \
               (tb.type, tb.mode, tb.uid, tb.gid, tb.mtime, tb.size, tb.linkname), ta.name
        assert da == db, ta.name


# --------------------------------------------------------------------------- options

def test_created_at_defaults_to_source_date_epoch(small_tree, keys, tmp_path):
    kit = tmp_path / "kit.tar"
    assert_ok(kitlib.pack(small_tree, kit, [keys["ed25519"]], sde=1700000000))
    m = kitlib.kit_manifest(kit)[1]
    assert m["createdAt"] == "2023-11-14T22:13:20Z"
    assert all(ti.mtime == 1700000000 for ti, _ in kitlib.kit_members(kit))


def test_created_at_option_wins_over_source_date_epoch(small_tree, keys, tmp_path):
    kit = tmp_path / "kit.tar"
    assert_ok(kitlib.pack(small_tree, kit, [keys["ed25519"]], "--created-at",
                          "2024-06-01T12:00:00Z", sde=1700000000))
    m = kitlib.kit_manifest(kit)[1]
    assert m["createdAt"] == "2024-06-01T12:00:00Z"
    assert json.loads(Path(str(kit) + ".metadata.json").read_text())["createdAt"] == \
        "2024-06-01T12:00:00Z"


def test_expires_in_days(small_tree, keys, tmp_path):
    kit = tmp_path / "kit.tar"
    args = ["--kit-id", "k", "--version", "1", "--sequence", "1", "--expires-in", "30"]
    cp = run("pack", "-k", keys["ed25519"].key, *args, small_tree, kit,
             env={"SOURCE_DATE_EPOCH": CREATED_EPOCH})
    assert_ok(cp)
    m = kitlib.kit_manifest(kit)[1]
    assert m["createdAt"] == CREATED_AT
    assert m["expiresAt"] == "2025-02-14T00:00:00Z"


def test_base_kit(small_tree, keys, tmp_path):
    old = tmp_path / "old.tar"
    cp = run("pack", "-k", keys["ed25519"].key, "--kit-id", "k", "--version", "2025.01.08",
             "--sequence", "20250108", "--expires-at", EXPIRES_FAR, small_tree, old,
             env={"SOURCE_DATE_EPOCH": CREATED_EPOCH})
    assert_ok(cp)
    new = tmp_path / "new.tar.zst"
    cp = run("pack", "-k", keys["ed25519"].key, "--kit-id", "k", "--version", "2025.01.15",
             "--sequence", "20250115", "--expires-at", EXPIRES_FAR, "--compress", "zstd",
             "--base", old, small_tree, new, env={"SOURCE_DATE_EPOCH": CREATED_EPOCH})
    assert_ok(cp)
    old_mb, old_m = kitlib.kit_manifest(old)
    assert "base" not in old_m
    m = kitlib.kit_manifest(new)[1]
    assert m["base"]["version"] == "2025.01.08"
    assert m["base"]["manifestSha256"] == hashlib.sha256(old_mb).hexdigest()


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("drop", ["--version", "--sequence"])
def test_pack_requires_version_and_sequence(small_tree, keys, tmp_path, drop):
    args = {"--kit-id": "k", "--version": "1", "--sequence": "1",
            "--expires-at": EXPIRES_FAR}
    del args[drop]
    flat = [x for kv in args.items() for x in kv]
    kit = tmp_path / "kit.tar"
    cp = run("pack", "-k", keys["ed25519"].key, *flat, small_tree, kit,
             env={"SOURCE_DATE_EPOCH": CREATED_EPOCH})
    assert_fail(cp, 2, drop.lstrip("-"))
    assert not kit.exists()


def test_pack_key_not_a_key(small_tree, notakey, tmp_path):
    kit = tmp_path / "kit.tar"
    cp = kitlib.pack(small_tree, kit, [notakey])
    assert_fail(cp, 2, "key")
    assert not kit.exists()


def test_pack_public_key_is_not_a_signing_key(small_tree, keys, tmp_path):
    kit = tmp_path / "kit.tar"
    cp = kitlib.pack(small_tree, kit, [keys["ecdsa"].pub])
    assert_fail(cp, 2, "key")
    assert not kit.exists()


def test_pack_without_key(small_tree, tmp_path):
    assert_fail(kitlib.pack(small_tree, tmp_path / "kit.tar", []), 2)


def test_pack_bad_compression(small_tree, keys, tmp_path):
    cp = kitlib.pack(small_tree, tmp_path / "kit.tar", [keys["ed25519"]], compress="lzma")
    assert_fail(cp, 2, ("compress", "lzma"))
    assert not (tmp_path / "kit.tar").exists()


def test_pack_unknown_option(small_tree, keys, tmp_path):
    cp = kitlib.pack(small_tree, tmp_path / "kit.tar", [keys["ed25519"]], "--no-such-option")
    assert_fail(cp, 2)


def test_pack_missing_arguments(small_tree, keys):
    assert_fail(run("pack", "-k", keys["ed25519"].key, *kitlib.IDENTITY, small_tree), 2)
    assert_fail(run("pack"), 2)


def test_pack_bad_time(small_tree, keys, tmp_path):
    cp = kitlib.pack(small_tree, tmp_path / "kit.tar", [keys["ed25519"]],
                     "--created-at", "2025-13-45T00:00:00Z")
    assert_fail(cp, 2)


def test_pack_refuses_fifo_in_source(keys, tmp_path):
    src = kitlib.make_small_tree(tmp_path / "src")
    os.mkfifo(src / "feeds" / "pipe")
    kit = tmp_path / "kit.tar"
    cp = kitlib.pack(src, kit, [keys["ed25519"]])
    assert cp.returncode != 0, kitlib.describe(cp)
    assert_fail(cp, cp.returncode, names=("feeds/pipe",))
    assert not kit.exists()


def test_pack_refuses_symlink_escaping_source(keys, tmp_path):
    src = kitlib.make_small_tree(tmp_path / "src")
    os.symlink("../../etc/passwd", src / "feeds" / "evil")
    kit = tmp_path / "kit.tar"
    cp = kitlib.pack(src, kit, [keys["ed25519"]])
    assert cp.returncode != 0, kitlib.describe(cp)
    assert_fail(cp, cp.returncode, names=("feeds/evil",))
    assert not kit.exists()


@pytest.mark.parametrize("spec,word", [
    ("db=../outside", "path"),
    ("db=/abs", "path"),
    ("x" * 130 + "=feeds", "128"),
    ("db=feeds,warn=9,max=3", "max"),
    ("db=feeds,colour=blue", "unknown"),
])
def test_pack_refuses_bad_component(keys, tmp_path, spec, word):
    """A component pack would write but every reader would refuse is a usage
    error, and no kit is written."""
    src = kitlib.make_small_tree(tmp_path / "src")
    kit = tmp_path / "kit.tar"
    cp = kitlib.pack(src, kit, [keys["ed25519"]], "--component", spec)
    assert_fail(cp, 2, word)
    assert not kit.exists()
