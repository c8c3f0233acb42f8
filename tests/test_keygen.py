"""`stellakit keygen [--type ecdsa-p256|ed25519|rsa-3072] PREFIX` against openssl."""

import base64
import os
import stat
from pathlib import Path

import pytest

import kitlib
from kitlib import assert_fail, assert_ok, run, sh

TYPES = ["ecdsa-p256", "ed25519", "rsa-3072"]

# what `openssl pkey -noout -text` says about each key type
TEXT_MARK = {
    "ecdsa-p256": ("prime256v1", "P-256"),
    "ed25519": ("ED25519",),
    "rsa-3072": ("3072 bit",),
}


def _check_pair(prefix: Path, kind: str):
    key = Path(str(prefix) + ".key")
    pub = Path(str(prefix) + ".pub")
    assert key.is_file() and pub.is_file()
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----\n"), key.read_text()[:80]
    assert "-----END PRIVATE KEY-----" in key.read_text()
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----\n"), pub.read_text()[:80]
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    sh("openssl", "pkey", "-in", key, "-noout")
    derived = sh("openssl", "pkey", "-in", key, "-pubout").stdout
    assert derived == pub.read_text()
    sh("openssl", "pkey", "-pubin", "-in", pub, "-noout")
    text = sh("openssl", "pkey", "-in", key, "-noout", "-text").stdout
    assert any(m in text for m in TEXT_MARK[kind]), text[:200]
    return kitlib.Key(kind, key, pub)


def test_keygen_default_is_ecdsa_p256(tmp_path):
    assert_ok(run("keygen", tmp_path / "k"))
    _check_pair(tmp_path / "k", "ecdsa-p256")


@pytest.mark.parametrize("kind", TYPES)
def test_keygen_type(tmp_path, kind):
    assert_ok(run("keygen", "--type", kind, tmp_path / "k"))
    k = _check_pair(tmp_path / "k", kind)
    # the pair works together under openssl: sign with .key, verify with .pub
    msg = tmp_path / "msg"
    msg.write_bytes(b"offline kit\n" * 100)
    sig = kitlib.sign_file(msg, k)
    assert kitlib.openssl_verify(msg, sig, k.pub, kind)
    assert not kitlib.openssl_verify_bytes(b"other bytes", sig, k.pub, kind)


def test_keygen_private_key_mode_ignores_umask(tmp_path):
    assert_ok(run("keygen", "--type", "ed25519", tmp_path / "k", umask=0))
    assert stat.S_IMODE(os.stat(tmp_path / "k.key").st_mode) == 0o600


def test_keygen_makes_fresh_keys(tmp_path):
    assert_ok(run("keygen", "--type", "ed25519", tmp_path / "a"))
    assert_ok(run("keygen", "--type", "ed25519", tmp_path / "b"))
    assert (tmp_path / "a.pub").read_text() != (tmp_path / "b.pub").read_text()


@pytest.mark.parametrize("kind", TYPES)
def test_keygen_keys_pack_and_verify(tmp_path, small_tree, kind):
    """A key from keygen signs a kit; verify accepts it with the .pub, and openssl
    accepts the detached kit signature."""
    assert_ok(run("keygen", "--type", kind, tmp_path / "k"))
    k = kitlib.Key(kind, tmp_path / "k.key", tmp_path / "k.pub")
    kit = tmp_path / "kit.tar"
    assert_ok(kitlib.pack(small_tree, kit, [k]))
    assert_ok(run("verify", "-t", k.pub, kit))
    sig = base64.b64decode(Path(str(kit) + ".sig").read_text().strip(), validate=True)
    assert kitlib.openssl_verify(kit, sig, k.pub, kind)


def test_keygen_unknown_type(tmp_path):
    cp = run("keygen", "--type", "dsa-1024", tmp_path / "k")
    assert_fail(cp, 2)
    assert not (tmp_path / "k.key").exists()


def test_keygen_missing_prefix():
    assert_fail(run("keygen"), 2)


def test_keygen_unknown_option(tmp_path):
    assert_fail(run("keygen", "--frobnicate", tmp_path / "k"), 2)


def test_keygen_unwritable_location(tmp_path):
    cp = run("keygen", tmp_path / "no" / "such" / "dir" / "k")
    assert_fail(cp, (1, 2), names=("no/such/dir",))
