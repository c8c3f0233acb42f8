"""Fixtures for the stellakit black-box tests.  Helpers live in kitlib.py (imported here
and by the test modules); this file holds the shared, session-scoped state."""

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kitlib  # noqa: E402

# tests/systemd/ boots a container: only the systemd stage of scripts/test.sh
# runs it (it sets STELLA_SYSTEMD_TREE), not every run of tests/.
collect_ignore = [] if os.environ.get("STELLA_SYSTEMD_TREE") else ["systemd"]


@pytest.fixture(scope="session", autouse=True)
def stellakit_bin():
    """The binary under test: $STELLAKIT or <repo>/build/tools/stellakit.  Missing is a
    failure, not a skip."""
    b = kitlib.BIN
    if not (b.is_file() and os.access(b, os.X_OK)):
        pytest.fail(f"stellakit binary not found or not executable: {b} "
                    f"(build it with meson, or set STELLAKIT=/path/to/stellakit)",
                    pytrace=False)
    return b


@pytest.fixture(scope="session")
def run():
    return kitlib.run


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    """Keys made with openssl genpkey, independent of `stellakit keygen`:
    ecdsa, ecdsa2, ed25519, rsa (3072), rsa1024, untrusted (ecdsa)."""
    d = tmp_path_factory.mktemp("keys")
    return {
        "ecdsa": kitlib.gen_key(d / "ecdsa", "ecdsa-p256"),
        "ecdsa2": kitlib.gen_key(d / "ecdsa2", "ecdsa-p256"),
        "ed25519": kitlib.gen_key(d / "ed25519", "ed25519"),
        "rsa": kitlib.gen_key(d / "rsa", "rsa-3072"),
        "rsa1024": kitlib.gen_key(d / "rsa1024", "rsa-1024"),
        "untrusted": kitlib.gen_key(d / "untrusted", "ecdsa-p256"),
    }


@pytest.fixture(scope="session")
def notakey(tmp_path_factory):
    p = tmp_path_factory.mktemp("notakey") / "notakey.pem"
    p.write_text("this is not a key\njust some text\n")
    return p


@pytest.fixture(scope="session")
def src_tree(tmp_path_factory):
    """The sample source tree (see kitlib.make_source_tree).  Do not modify it."""
    return kitlib.make_source_tree(tmp_path_factory.mktemp("src") / "tree")


@pytest.fixture(scope="session")
def small_tree(tmp_path_factory):
    return kitlib.make_small_tree(tmp_path_factory.mktemp("small") / "tree")


@dataclasses.dataclass
class PackedKit:
    path: Path
    src: Path
    keys: list
    compress: str

    @property
    def manifest_bytes(self):
        return kitlib.kit_manifest(self.path)[0]

    @property
    def manifest(self):
        return json.loads(self.manifest_bytes)

    @property
    def members(self):
        return kitlib.kit_members(self.path)

    @property
    def metadata(self):
        return json.loads(Path(str(self.path) + ".metadata.json").read_text())


@pytest.fixture(scope="session")
def packed(tmp_path_factory, src_tree, keys, stellakit_bin):
    """packed(compress="none", keys=("ed25519",)) -> PackedKit of the sample tree, packed
    once per session with IDENTITY, COMPONENT_ARGS and SOURCE_DATE_EPOCH=CREATED_EPOCH."""
    cache = {}

    def get(compress="none", keynames=("ed25519",)):
        ck = (compress, tuple(keynames))
        if ck not in cache:
            d = tmp_path_factory.mktemp(f"packed-{compress}-{'-'.join(keynames)}")
            out = d / "kit.tar"
            ks = [keys[k] for k in keynames]
            cp = kitlib.pack(src_tree, out, ks, compress=compress, components=True)
            if cp.returncode != 0:
                pytest.fail("stellakit pack of the sample tree failed\n" + kitlib.describe(cp))
            cache[ck] = PackedKit(out, src_tree, ks, compress)
        return cache[ck]

    return get


# --------------------------------------------------------------------------- mounting

@pytest.fixture(scope="session")
def stellafs_bin():
    """The daemon under test: $STELLAFS or <repo>/build/fs/stellafs.  Missing, or no
    usable /dev/fuse, is a failure, not a skip."""
    b = kitlib.FS_BIN
    if not (b.is_file() and os.access(b, os.X_OK)):
        pytest.fail(f"stellafs binary not found or not executable: {b} "
                    f"(build it with meson, or set STELLAFS=/path/to/stellafs)", pytrace=False)
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: the mount tests need FUSE", pytrace=False)
    return b


@pytest.fixture
def mounter(tmp_path, stellafs_bin):
    """A kitlib.Mounter for one test; everything it mounted is unmounted afterwards,
    whether the test passed or not."""
    m = kitlib.Mounter(tmp_path / "mounts")
    yield m
    bad = m.close()
    if bad:
        pytest.fail(f"could not unmount {bad}", pytrace=False)


@pytest.fixture(scope="session")
def session_mounter(tmp_path_factory, stellafs_bin):
    """A kitlib.Mounter shared by the session (for read-only tests)."""
    m = kitlib.Mounter(tmp_path_factory.mktemp("session-mounts"))
    yield m
    bad = m.close()
    if bad:
        pytest.fail(f"could not unmount {bad}", pytrace=False)


@pytest.fixture(scope="session")
def mounted_packed(packed, session_mounter, keys):
    """mounted_packed(compress="none") -> (PackedKit, kitlib.Mount): the sample tree's kit
    (signed with ed25519) mounted once per session, trusting the ed25519 key.  Read only."""
    cache = {}

    def get(compress="none"):
        if compress not in cache:
            pk = packed(compress)
            cache[compress] = (pk, session_mounter.mount(pk.path, keys["ed25519"].pub))
        return cache[compress]

    return get
