"""`stellakit verify`: kits from pack, kits assembled by the tests (tarfile + openssl),
kits written by GNU tar; trust stores, thresholds, signatures and expiry."""

import os
import random
import shutil
import tarfile

import pytest

import kitlib
from kitlib import (MANIFEST, SIGNAME, assert_fail, assert_ok, basic_items, file_item,
                    kit_from_items, run, sh)

COMPRESSIONS = kitlib.COMPRESSIONS
KEY_TYPES = ["ecdsa", "ed25519", "rsa"]


def trust_dir(tmp_path, *keys, name="trust"):
    d = tmp_path / name
    d.mkdir()
    for i, k in enumerate(keys):
        shutil.copy(k.pub, d / f"{i}-{k.key.stem}.pub")
    return d


# --------------------------------------------------------------------------- valid kits

@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_packed_kit_verifies(packed, keys, compress):
    k = packed(compress)
    cp = assert_ok(run("verify", "-t", keys["ed25519"].pub, k.path))
    assert cp.stdout.strip(), "verify should print a success summary"


def test_packed_kit_verifies_with_trust_dir(packed, keys, tmp_path):
    d = trust_dir(tmp_path, keys["untrusted"], keys["ed25519"])
    assert_ok(run("verify", "-t", d, packed("none").path))


def test_packed_two_key_kit_meets_threshold_2(packed, keys, tmp_path):
    d = trust_dir(tmp_path, keys["ecdsa"], keys["ed25519"])
    assert_ok(run("verify", "-t", d, "--threshold", "2", packed("gzip", ("ecdsa", "ed25519")).path))


@pytest.mark.parametrize("keyname", KEY_TYPES)
@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_assembled_kit_verifies(keys, tmp_path, compress, keyname):
    """A kit built entirely by the test (tarfile, openssl signature, no merkle.bin)."""
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys[keyname]], compress=compress)
    assert_ok(run("verify", "-t", keys[keyname].pub, kit))


def test_assembled_ustar_kit_verifies(keys, tmp_path):
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["ecdsa"]],
                         format=tarfile.USTAR_FORMAT)
    assert_ok(run("verify", "-t", keys["ecdsa"].pub, kit))


def test_assembled_kit_with_long_and_unicode_names(keys, tmp_path):
    rng = random.Random(3)
    items = kitlib.sort_items(basic_items() + [
        file_item("long/" + kitlib.LONG_COMPONENT, b"x" * 10),
        file_item(kitlib.UNICODE_NAME, '{"α": 1}'.encode()),
        file_item("big/blocks.bin", rng.randbytes(3 * 4096 + 17)),
        kitlib.dir_item("private", 0o700),
        file_item("private/key", b"secret", 0o600),
    ])
    kit = kit_from_items(tmp_path / "kit", items, [keys["ed25519"]], compress="zstd")
    assert_ok(run("verify", "-t", keys["ed25519"].pub, kit))


def test_bytewise_order_is_accepted(keys, tmp_path):
    """Names sorted by bytes: 'B' < 'a-b' < 'a/b' < 'z' < 'é'."""
    names = ["B", "a-b", "a/b", "z", "é"]
    items = [file_item(n, n.encode()) for n in names]
    assert [it.name for it in kitlib.sort_items(items)] == names
    kit = kit_from_items(tmp_path / "kit", items, [keys["ed25519"]])
    assert_ok(run("verify", "-t", keys["ed25519"].pub, kit))


def test_internal_relative_symlink_is_accepted(keys, tmp_path):
    items = kitlib.sort_items(basic_items() + [kitlib.link_item("dir/up", "../a.txt"),
                                               kitlib.link_item("top", "dir")])
    kit = kit_from_items(tmp_path / "kit", items, [keys["ed25519"]])
    assert_ok(run("verify", "-t", keys["ed25519"].pub, kit))


@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_gnu_tar_written_kit_verifies(keys, tmp_path, compress):
    """The same kind of kit written by GNU tar (posix format, its own headers, record
    padding, directory names with a trailing slash)."""
    items = basic_items()
    arts, _ = kitlib.split_items(items)
    mbytes = kitlib.dump_manifest(kitlib.make_manifest(arts))
    root = tmp_path / "root"
    (root / "manifest").mkdir(parents=True)
    (root / MANIFEST).write_bytes(mbytes)
    (root / SIGNAME).write_text(kitlib.sign_bytes(mbytes, keys["ecdsa"]) + "\n")
    for it in items:
        p = root / it.name
        m = it.member
        p.parent.mkdir(parents=True, exist_ok=True)
        if m.type == "file":
            p.write_bytes(m.data)
            p.chmod(m.mode)
        elif m.type == "symlink":
            p.symlink_to(m.target)
        else:
            p.mkdir(exist_ok=True)
            p.chmod(m.mode)
    flag = {"gzip": ["-z"], "zstd": ["--zstd"]}.get(compress, [])
    kit = tmp_path / "gnu-kit"
    sh("tar", *flag, "--format=posix", "--owner=0", "--group=0", "--numeric-owner",
       "--mtime=@1736899200", "--no-recursion", "-cf", kit, "-C", root, MANIFEST, SIGNAME,
       *[it.name for it in items])
    assert kitlib.compression_of(kit) == compress
    assert_ok(run("verify", "-t", keys["ecdsa"].pub, kit))


def test_zero_padding_after_end_is_fine(keys, tmp_path):
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["ed25519"]],
                         trailer=b"\0" * 10240)
    assert_ok(run("verify", "-t", keys["ed25519"].pub, kit))


def test_minimal_end_of_archive_is_fine(keys, tmp_path):
    """Exactly two zero blocks after the last member, no record padding."""
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["ed25519"]])
    raw = kit.read_bytes()
    with tarfile.open(kit) as tf:
        last = tf.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    assert raw[end:] == b"\0" * (len(raw) - end) and len(raw) - end >= 1024
    kit.write_bytes(raw[:end + 1024])
    assert_ok(run("verify", "-t", keys["ed25519"].pub, kit))


# --------------------------------------------------------------------------- trust store

def test_trust_dir_ignores_files_that_are_not_pub_or_pem(keys, tmp_path):
    d = trust_dir(tmp_path, keys["ed25519"])
    (d / "README").write_text("keys for the kit\n")
    (d / "old.pub.disabled").write_text("not a key\n")
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["ed25519"]])
    assert_ok(run("verify", "-t", d, kit))


def test_trust_dir_accepts_pem_suffix(keys, tmp_path):
    d = tmp_path / "trust"
    d.mkdir()
    shutil.copy(keys["rsa"].pub, d / "release.pem")
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["rsa"]])
    assert_ok(run("verify", "-t", d, kit))


def test_trust_file_not_a_key(notakey, keys, tmp_path):
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["ed25519"]])
    assert_fail(run("verify", "-t", notakey, kit), 2, "key")


def test_trust_dir_with_a_bad_pub_file(notakey, keys, tmp_path):
    d = trust_dir(tmp_path, keys["ed25519"])
    shutil.copy(notakey, d / "broken.pub")
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["ed25519"]])
    assert_fail(run("verify", "-t", d, kit), 2, "key", names=("broken.pub",))


NOT_FOUND = ("no such file", "not found", "does not exist", "missing")


def test_trust_file_missing(keys, tmp_path):
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["ed25519"]])
    assert_fail(run("verify", "-t", tmp_path / "nope.pub", kit), (1, 2), NOT_FOUND,
                names=("nope.pub",))


def test_kit_file_missing(keys, tmp_path):
    assert_fail(run("verify", "-t", keys["ed25519"].pub, tmp_path / "nokit.tar"), (1, 2),
                NOT_FOUND, names=("nokit.tar",))


def test_rsa_1024_does_not_count(keys, tmp_path):
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["rsa1024"]])
    cp = run("verify", "-t", keys["rsa1024"].pub, kit)
    assert_fail(cp, (2, 5))


# --------------------------------------------------------------------------- thresholds

@pytest.mark.parametrize("pair", [("ecdsa", "ed25519"), ("ecdsa", "rsa"), ("ed25519", "rsa")])
def test_threshold_2_met_by_two_distinct_keys(keys, tmp_path, pair):
    ks = [keys[p] for p in pair]
    kit = kit_from_items(tmp_path / "kit", basic_items(), ks)
    assert_ok(run("verify", "-t", trust_dir(tmp_path, *ks), "--threshold", "2", kit))


def test_threshold_3_met_by_three_keys_any_line_order(keys, tmp_path):
    ks = [keys["rsa"], keys["ed25519"], keys["ecdsa"]]
    kit = kit_from_items(tmp_path / "kit", basic_items(), ks)
    d = trust_dir(tmp_path, keys["ecdsa"], keys["ed25519"], keys["rsa"])
    assert_ok(run("verify", "-t", d, "--threshold", "3", kit))


def test_threshold_2_with_one_good_signer(keys, tmp_path):
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["ecdsa"], keys["untrusted"]])
    d = trust_dir(tmp_path, keys["ecdsa"], keys["ed25519"])
    assert_fail(run("verify", "-t", d, "--threshold", "2", kit), 5, "threshold")


def test_threshold_same_key_twice_counts_once(keys, tmp_path):
    # two distinct lines (ECDSA is randomized) from the same key
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["ecdsa"], keys["ecdsa"]])
    lines = kitlib.kit_sig_lines(kit)
    assert len(lines) == 2 and lines[0] != lines[1]
    d = trust_dir(tmp_path, keys["ecdsa"], keys["ed25519"])
    assert_fail(run("verify", "-t", d, "--threshold", "2", kit), 5, "threshold")


def test_threshold_same_public_key_under_two_names_counts_once(keys, tmp_path):
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["ecdsa"], keys["ecdsa"]])
    d = tmp_path / "trust"
    d.mkdir()
    shutil.copy(keys["ecdsa"].pub, d / "a.pub")
    shutil.copy(keys["ecdsa"].pub, d / "b.pem")
    assert_fail(run("verify", "-t", d, "--threshold", "2", kit), 5, ("threshold", "signature"))


def test_threshold_2_with_single_trust_file(keys, tmp_path):
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["ecdsa"], keys["ed25519"]])
    assert_fail(run("verify", "-t", keys["ecdsa"].pub, "--threshold", "2", kit), 5,
                "threshold")


# --------------------------------------------------------------------------- signatures

def test_untrusted_signer(keys, tmp_path):
    kit = kit_from_items(tmp_path / "kit", basic_items(), [keys["untrusted"]])
    assert_fail(run("verify", "-t", keys["ecdsa"].pub, kit), 5, "signature")


@pytest.mark.parametrize("keyname", KEY_TYPES)
def test_signature_over_other_bytes(keys, tmp_path, keyname):
    arts, members = kitlib.split_items(basic_items())
    m = kitlib.make_manifest(arts)
    other = kitlib.dump_manifest(dict(m, version="2025.01.16"))
    line = kitlib.sign_bytes(other, keys[keyname])
    kit = kitlib.assemble_kit(tmp_path / "kit", kitlib.dump_manifest(m), [line], members)
    assert_fail(run("verify", "-t", keys[keyname].pub, kit), 5, "signature")


def test_empty_signature_member(keys, tmp_path):
    arts, members = kitlib.split_items(basic_items())
    kit = kitlib.assemble_kit(tmp_path / "kit", kitlib.dump_manifest(kitlib.make_manifest(arts)),
                              b"", members)
    assert_fail(run("verify", "-t", keys["ecdsa"].pub, kit), 5, "signature")


@pytest.mark.parametrize("garbage", ["!!!! not base64 ????", "AAAA", "QUJD" * 30])
def test_garbage_signature_line(keys, tmp_path, garbage):
    arts, members = kitlib.split_items(basic_items())
    kit = kitlib.assemble_kit(tmp_path / "kit", kitlib.dump_manifest(kitlib.make_manifest(arts)),
                              [garbage], members)
    assert_fail(run("verify", "-t", keys["ecdsa"].pub, kit), 5, "signature")


def test_tampered_manifest_in_packed_kit(packed, keys, tmp_path):
    """Change the version string inside the (still valid JSON) manifest of a packed,
    uncompressed kit: the signature no longer matches."""
    raw = packed("none").path.read_bytes()
    assert raw.count(b'"2025.01.15"') == 1
    kit = tmp_path / "kit.tar"
    kit.write_bytes(raw.replace(b'"2025.01.15"', b'"2025.01.16"'))
    assert_fail(run("verify", "-t", keys["ed25519"].pub, kit), 5, "signature")


def test_tampered_file_in_packed_kit(packed, keys, tmp_path):
    """Flip one byte inside an artifact's data in a packed, uncompressed kit."""
    k = packed("none")
    name = "sizes/size-4097"
    with tarfile.open(k.path) as tf:
        ti = tf.getmember(name)
    raw = bytearray(k.path.read_bytes())
    raw[ti.offset_data + 4096] ^= 0x01
    kit = tmp_path / "kit.tar"
    kit.write_bytes(bytes(raw))
    assert_fail(run("verify", "-t", keys["ed25519"].pub, kit), 4, "mismatch", names=(name,))


# --------------------------------------------------------------------------- expiry

def _expiring_kit(tmp_path, key, expires="2025-02-15T00:00:00Z",
                  created="2025-01-15T00:00:00Z"):
    return kit_from_items(tmp_path / "kit", basic_items(), [key],
                          manifest_fields={"createdAt": created, "expiresAt": expires})


def test_expired_relative_to_now(keys, tmp_path):
    kit = _expiring_kit(tmp_path, keys["ed25519"])
    cp = run("verify", "-t", keys["ed25519"].pub, "--now", "2025-03-01T00:00:00Z", kit)
    assert_fail(cp, 6, "expired")


def test_not_expired_before_expiry(keys, tmp_path):
    kit = _expiring_kit(tmp_path, keys["ed25519"])
    assert_ok(run("verify", "-t", keys["ed25519"].pub, "--now", "2025-02-01T00:00:00Z", kit))


def test_allow_expired(keys, tmp_path):
    kit = _expiring_kit(tmp_path, keys["ed25519"])
    assert_ok(run("verify", "-t", keys["ed25519"].pub, "--now", "2025-03-01T00:00:00Z",
                  "--allow-expired", kit))


def test_expired_by_real_clock(keys, tmp_path):
    kit = _expiring_kit(tmp_path, keys["ed25519"], "2020-01-01T00:00:00Z",
                        "2019-12-01T00:00:00Z")
    assert_fail(run("verify", "-t", keys["ed25519"].pub, kit), 6, "expired")


def test_signature_checked_before_expiry(keys, tmp_path):
    kit = _expiring_kit(tmp_path, keys["untrusted"])
    cp = run("verify", "-t", keys["ed25519"].pub, "--now", "2025-03-01T00:00:00Z", kit)
    assert_fail(cp, 5, "signature")


# --------------------------------------------------------------------------- usage

@pytest.fixture
def good_kit(keys, tmp_path):
    return kit_from_items(tmp_path / "kit", basic_items(), [keys["ed25519"]])


def test_usage_unknown_option(keys, good_kit):
    assert_fail(run("verify", "-t", keys["ed25519"].pub, "--bogus", good_kit), 2)


def test_usage_missing_kit(keys):
    assert_fail(run("verify", "-t", keys["ed25519"].pub), 2)


def test_usage_missing_trust(good_kit):
    assert_fail(run("verify", good_kit), 2)


@pytest.mark.parametrize("value", ["0", "-1", "two", "\t1", "\v2", " 1", "+1", "257"])
def test_usage_bad_threshold(keys, good_kit, value):
    assert_fail(run("verify", "-t", keys["ed25519"].pub, "--threshold", value, good_kit), 2)


def test_usage_bad_now(keys, good_kit):
    assert_fail(run("verify", "-t", keys["ed25519"].pub, "--now", "yesterday", good_kit), 2)


def test_unknown_subcommand():
    assert_fail(run("frobnicate"), 2)


def test_fifo_in_trust_dir_refused_not_waited_on(keys, good_kit, tmp_path):
    """A FIFO named like a key: opening it to read would block until a writer came (a
    mount or a reload would hang).  It is refused as not a key file, at once."""
    d = tmp_path / "trust"
    d.mkdir()
    shutil.copy(keys["ed25519"].pub, d / "good.pub")
    os.mkfifo(d / "evil.pub")
    assert_fail(run("verify", "-t", d, good_kit, timeout=20), 2, "regular file",
                names=("evil.pub",))
    assert_fail(run("verify", "-t", d / "evil.pub", good_kit, timeout=20), 2, "regular file",
                names=("evil.pub",))
