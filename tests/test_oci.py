"""Kits in OCI registries (docs/mirrors.md, "OCI registries"): `stellakit push` against
Debian's docker-registry (CNCF distribution), plain and with TLS plus htpasswd, checked
with skopeo as the independent client; pulling by tag and digest (verify, import,
mount); tampering in the registry's storage; and, against a small registry of our own
(ocilib.FakeRegistry), what distribution cannot show: bearer tokens and their expiry,
blob redirects to storage and presigned URLs that expire, refused multi-range requests,
and manifests that lie.  Every server is started here on 127.0.0.1 and stopped by PID;
one that cannot start fails the test."""

import base64
import errno
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import kitlib
import ocilib
import serverlib
from kitlib import assert_fail, assert_ok, run, sh

SKOPEO = "/usr/bin/skopeo"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with ocilib.Registry(tmp_path_factory.mktemp("registry")) as r:
        yield r


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls-registry")
    tls = serverlib.make_ca(d / "ca")
    with ocilib.Registry(d / "reg", tls=tls, users={"alice": "s3cret"}) as r:
        r.ca = tls.ca
        yield r


@pytest.fixture
def kit(packed):
    return packed("none").path


@pytest.fixture
def isolated_env(tmp_path):
    """No credentials from the machine: HOME and the auth file point into tmp."""
    home = tmp_path / "home"
    home.mkdir()
    return {"HOME": home, "REGISTRY_AUTH_FILE": None, "DOCKER_CONFIG": None, "SSL_CERT_FILE": None}


def artifact_offset(kit) -> int:
    """A byte inside the largest artifact's data in an uncompressed kit."""
    import tarfile
    with tarfile.open(kit) as tf:
        big = max((m for m in tf.getmembers() if m.isreg()), key=lambda m: m.size)
        return big.offset_data + big.size // 2


def push(kit, ref, *extra, env=None):
    return run("push", *extra, kit, ref, env=env, timeout=120)


def skopeo(*args, timeout=120):
    if not os.access(SKOPEO, os.X_OK):
        pytest.fail("skopeo is missing (scripts/deps.sh installs it)", pytrace=False)
    return sh(SKOPEO, *args, timeout=timeout)


def pushed_digest(cp):
    assert_ok(cp)
    out = cp.stdout.strip()
    assert out.startswith("sha256:") and len(out) == 71, cp.stdout
    return out


# --------------------------------------------------------------------------- push

def test_push_is_the_artifact_skopeo_sees(registry, kit, isolated_env, tmp_path):
    ref = registry.ref("stella/kits:2025.01.15")
    digest = pushed_digest(push(kit, ref, env=isolated_env))
    raw = skopeo("inspect", "--raw", "--tls-verify=false",
                 f"docker://{registry.host}/stella/kits:2025.01.15").stdout.encode()
    assert ocilib.sha256_digest(raw) == digest
    m = json.loads(raw)
    assert m["schemaVersion"] == 2 and m["mediaType"] == ocilib.MANIFEST_TYPE
    assert m["artifactType"] == "application/vnd.stellaops.offline-kit.v1"
    assert m["config"] == {"mediaType": "application/vnd.oci.empty.v1+json",
                           "digest": ocilib.EMPTY_DIGEST, "size": 2}
    assert len(m["layers"]) == 1
    layer = m["layers"][0]
    data = Path(kit).read_bytes()
    assert layer["mediaType"] == "application/vnd.stellaops.offline-kit.v1.tar"
    assert layer["digest"] == "sha256:" + sh("sha256sum", kit).stdout.split()[0]
    assert layer["size"] == len(data)
    assert layer["annotations"] == {"org.opencontainers.image.title": Path(kit).name}
    km = json.loads(kitlib.kit_manifest(kit)[0])
    assert m["annotations"] == {
        "org.opencontainers.image.version": km["version"],
        "org.opencontainers.image.created": km["createdAt"],
        "io.stellaops.kit.id": km["kitId"],
        "io.stellaops.kit.sequence": str(km["sequence"]),
        "io.stellaops.kit.expires": km["expiresAt"],
    }
    # skopeo copies the artifact to an OCI layout: the layer blob is the kit's bytes
    lay = tmp_path / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/stella/kits:2025.01.15",
           f"oci:{lay}:k")
    blob = lay / "blobs" / "sha256" / layer["digest"].split(":")[1]
    assert sh("sha256sum", blob).stdout.split()[0] == sh("sha256sum", kit).stdout.split()[0]
    # by digest, the same manifest
    raw2 = skopeo("inspect", "--raw", "--tls-verify=false",
                  f"docker://{registry.host}/stella/kits@{digest}").stdout.encode()
    assert raw2 == raw


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_push_compressed_kit_media_type(registry, packed, compress, isolated_env):
    k = packed(compress).path
    pushed_digest(push(k, registry.ref(f"stella/c-{compress}:1"), env=isolated_env))
    m = json.loads(skopeo("inspect", "--raw", "--tls-verify=false",
                          f"docker://{registry.host}/stella/c-{compress}:1").stdout)
    assert m["layers"][0]["mediaType"] == f"application/vnd.stellaops.offline-kit.v1.tar+{compress}"


def test_push_chunked_gives_the_same_blob(registry, kit, isolated_env, tmp_path):
    ref = registry.ref("stella/chunked:1")
    pushed_digest(push(kit, ref, "--chunk-size", "4K", env=isolated_env))
    lay = tmp_path / "layout"
    skopeo("copy", "--src-tls-verify=false", f"docker://{registry.host}/stella/chunked:1", f"oci:{lay}:k")
    m = json.loads(skopeo("inspect", "--raw", "--tls-verify=false",
                          f"docker://{registry.host}/stella/chunked:1").stdout)
    blob = lay / "blobs" / "sha256" / m["layers"][0]["digest"].split(":")[1]
    assert blob.read_bytes() == Path(kit).read_bytes()


def test_push_chunks_and_skips_present_blobs(kit, isolated_env):
    """Against our own registry, which logs every request: chunked PATCHes of the asked
    size, then a second push of the same kit sends no blob again."""
    with ocilib.FakeRegistry() as fr:
        size = Path(kit).stat().st_size
        pushed_digest(push(kit, fr.ref("s/k:1"), "--chunk-size", "8K", env=isolated_env))
        patches = [e for e in fr.log if e[0] == "PATCH"]
        assert len(patches) == (size + 8191) // 8192
        assert fr.blobs[ocilib.sha256_digest(Path(kit).read_bytes())] == Path(kit).read_bytes()
        fr.log.clear()
        pushed_digest(push(kit, fr.ref("s/k:2"), env=isolated_env))
        methods = [e[0] for e in fr.log]
        assert "POST" not in methods and "PATCH" not in methods, fr.log
        assert [e[1] for e in fr.log if e[0] == "PUT"] == ["/v2/s/k/manifests/2"]


def test_push_refuses_a_bad_kit_and_pushes_nothing(registry, kit, tmp_path, isolated_env):
    bad = tmp_path / "bad.tar"
    data = bytearray(Path(kit).read_bytes())
    data[artifact_offset(kit)] ^= 0xFF
    bad.write_bytes(bytes(data))
    cp = push(bad, registry.ref("stella/bad:1"), env=isolated_env)
    assert cp.returncode == 4, kitlib.describe(cp)
    assert len(cp.stderr.strip().splitlines()) == 1
    insp = subprocess.run([SKOPEO, "inspect", "--raw", "--tls-verify=false",
                           f"docker://{registry.host}/stella/bad:1"], capture_output=True, timeout=60)
    assert insp.returncode != 0


@pytest.mark.parametrize("ref", ["oci://127.0.0.1:5000/s/k@sha256:" + "0" * 64, "oci://127.0.0.1:5000/S/k:1",
                                 "oci://127.0.0.1:5000/s/k", "http://127.0.0.1:5000/s/k:1",
                                 "oci://127.0.0.1:5000/s/../k:1"])
def test_push_usage(kit, ref):
    assert_fail(run("push", kit, ref), 2)


def test_push_help():
    cp = assert_ok(run("push", "--help"))
    assert "oci://REGISTRY/REPOSITORY:TAG" in cp.stdout and "--cacert" in cp.stdout


def test_push_unreachable_registry_exit_1(kit, isolated_env):
    port = serverlib.free_port()
    assert_fail(push(kit, f"oci://127.0.0.1:{port}/s/k:1", env=isolated_env), 1, "127.0.0.1")


# --------------------------------------------------------------------------- TLS and htpasswd

def test_push_tls_basic_auth(tls_registry, kit, tmp_path, isolated_env):
    r = tls_registry
    ref = r.ref("stella/kits:1")
    authf = ocilib.auth_file(tmp_path / "auth.json", r.host, "alice", "s3cret")
    env = dict(isolated_env, REGISTRY_AUTH_FILE=authf)
    digest = pushed_digest(push(kit, ref, "--cacert", r.ca, env=env))
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(r.ca, certs / "ca.crt")
    raw = skopeo("inspect", "--raw", "--cert-dir", certs, "--creds", "alice:s3cret",
                 f"docker://{r.host}/stella/kits:1").stdout.encode()
    assert ocilib.sha256_digest(raw) == digest
    # SSL_CERT_FILE instead of --cacert
    pushed_digest(push(kit, ref, env=dict(env, SSL_CERT_FILE=r.ca)))
    # ~/.docker/config.json when REGISTRY_AUTH_FILE is not set
    (isolated_env["HOME"] / ".docker").mkdir()
    ocilib.auth_file(isolated_env["HOME"] / ".docker" / "config.json", r.host, "alice", "s3cret")
    pushed_digest(push(kit, ref, "--cacert", r.ca, env=isolated_env))


def test_push_tls_refusals(tls_registry, kit, tmp_path, isolated_env):
    r = tls_registry
    ref = r.ref("stella/kits:2")
    authf = ocilib.auth_file(tmp_path / "auth.json", r.host, "alice", "s3cret")
    # the certificate is not trusted: no fallback to plain http, even on loopback
    assert_fail(push(kit, ref, env=dict(isolated_env, REGISTRY_AUTH_FILE=authf)), 1,
                ("certificate", "SSL"))
    # no credentials for it
    assert_fail(push(kit, ref, "--cacert", r.ca, env=isolated_env), 1, "credentials")
    # wrong password
    bad = ocilib.auth_file(tmp_path / "bad.json", r.host, "alice", "wrong")
    assert_fail(push(kit, ref, "--cacert", r.ca, env=dict(isolated_env, REGISTRY_AUTH_FILE=bad)), 1,
                "refused")
    # credentials for another registry only
    other = ocilib.auth_file(tmp_path / "other.json", "registry.example:5000", "alice", "s3cret")
    assert_fail(push(kit, ref, "--cacert", r.ca, env=dict(isolated_env, REGISTRY_AUTH_FILE=other)), 1,
                "credentials")
    # a malformed auth file is said, not ignored
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    assert_fail(push(kit, ref, "--cacert", r.ca, env=dict(isolated_env, REGISTRY_AUTH_FILE=junk)), 1,
                "credentials")


# --------------------------------------------------------------------------- bearer tokens (push)

def test_push_bearer_token_with_basic_credentials(kit, tmp_path, isolated_env):
    with ocilib.FakeRegistry(auth="bearer", users={"bob": "pw"}) as fr:
        authf = ocilib.auth_file(tmp_path / "auth.json", fr.host, "bob", "pw")
        env = dict(isolated_env, REGISTRY_AUTH_FILE=authf)
        pushed_digest(push(kit, fr.ref("team/kits:1"), env=env))
        assert fr.token_requests, "no token was asked for"
        want = "Basic " + base64.b64encode(b"bob:pw").decode()
        assert all(a == want for a, _ in fr.token_requests)
        assert any(q.get("scope") == ["repository:team/kits:pull,push"] for _, q in fr.token_requests)
        assert all(q.get("service") == ["fake-registry"] for _, q in fr.token_requests)
        # every registry request but the first ping carried the token
        assert all(a.startswith("Bearer ") for m, p, a, _ in fr.log[1:] if p != "/token")
        bad = ocilib.auth_file(tmp_path / "bad.json", fr.host, "bob", "nope")
        assert_fail(push(kit, fr.ref("team/kits:2"), env=dict(isolated_env, REGISTRY_AUTH_FILE=bad)), 1,
                    "refused")
        assert ("team/kits", "2") not in fr.manifests


def test_push_401_without_challenge(kit, isolated_env):
    with ocilib.FakeRegistry(auth="nochallenge") as fr:
        assert_fail(push(kit, fr.ref("s/k:1"), env=isolated_env), 1, "401", "challenge")


# --------------------------------------------------------------------------- pull: verify, import

def verify(ref, keys, *extra, env=None):
    return run("verify", "-t", keys["ed25519"].pub, *extra, ref, env=env, timeout=120)


def test_verify_and_import_by_tag_and_digest(registry, kit, keys, tmp_path, isolated_env):
    ref = registry.ref("stella/pull:1")
    digest = pushed_digest(push(kit, ref, env=isolated_env))
    cp = assert_ok(verify(ref, keys, env=isolated_env))
    assert "valid" in cp.stdout
    by_digest = registry.ref(f"stella/pull@{digest}")
    assert_ok(verify(by_digest, keys, env=isolated_env))
    store = tmp_path / "store"
    cp = assert_ok(run("import", "-s", store, "-t", keys["ed25519"].pub, by_digest, env=isolated_env))
    km = json.loads(kitlib.kit_manifest(kit)[0])
    st = json.loads(run("status", "-s", store, "--json").stdout)   # exit: the feeds' age
    assert st["current"] == km["version"]
    # an unknown digest: not there (runtime, 1)
    assert_fail(verify(registry.ref("stella/pull@sha256:" + "0" * 64), keys, env=isolated_env), 1,
                "manifest unknown")
    assert_fail(verify(registry.ref("stella/pull:nosuchtag"), keys, env=isolated_env), 1, "nosuchtag")
    # a wrong key is still a signature failure (5): the registry adds no trust
    assert_fail(run("verify", "-t", keys["untrusted"].pub, ref, env=isolated_env), 5)


def test_verify_tls_registry_with_credentials(tls_registry, kit, keys, tmp_path, isolated_env):
    r = tls_registry
    authf = ocilib.auth_file(tmp_path / "auth.json", r.host, "alice", "s3cret")
    env = dict(isolated_env, REGISTRY_AUTH_FILE=authf)
    ref = r.ref("stella/pull:1")
    pushed_digest(push(kit, ref, "--cacert", r.ca, env=env))
    assert_ok(verify(ref, keys, "--cacert", r.ca, env=env))
    assert_ok(verify(ref, keys, env=dict(env, SSL_CERT_FILE=r.ca)))
    assert_fail(verify(ref, keys, env=env), 1, ("certificate", "SSL"))
    assert_fail(verify(ref, keys, "--cacert", r.ca, env=isolated_env), 1, "credentials")


def test_tamper_in_registry_storage_is_a_mismatch(registry, kit, keys, isolated_env):
    ref = registry.ref("stella/tamper:1")
    pushed_digest(push(kit, ref, env=isolated_env))
    data = registry.blob_data(ocilib.sha256_digest(Path(kit).read_bytes()))
    assert data.read_bytes() == Path(kit).read_bytes()
    raw = bytearray(data.read_bytes())
    raw[artifact_offset(kit)] ^= 0x55
    data.write_bytes(bytes(raw))
    try:
        assert_fail(verify(ref, keys, env=isolated_env), 4)
    finally:
        data.write_bytes(Path(kit).read_bytes())


# --------------------------------------------------------------------------- pull: our own registry

@pytest.fixture
def kit_bytes(kit):
    return Path(kit).read_bytes()


def test_bearer_token_anonymous_and_refreshed(kit_bytes, keys, isolated_env):
    """Anonymous bearer tokens, each good for two requests only: every refusal is met
    with a fresh token (challenge) and the kit verifies."""
    with ocilib.FakeRegistry(auth="bearer", token_uses=2) as fr:
        fr.put_kit("s/k", "1", ocilib.kit_manifest(kit_bytes), kit_bytes)
        assert_ok(verify(fr.ref("s/k:1"), keys, env=isolated_env))
        assert len(fr.token_requests) >= 3, fr.token_requests
        assert all(a == "" for a, _ in fr.token_requests)    # anonymous
        assert all(q.get("scope") == ["repository:s/k:pull"] for _, q in fr.token_requests)
        blob_gets = [e for e in fr.log if e[0] == "GET" and "/blobs/" in e[1]]
        assert len(blob_gets) >= 4


def test_long_token_and_long_challenge(kit_bytes, keys, isolated_env):
    """A 3 KiB token (registries' JWTs run to kilobytes) and a 1.5 KiB challenge are
    sent and taken whole: every blob read carries the whole token."""
    with ocilib.FakeRegistry(auth="bearer", token_len=3072, service="s" * 1500) as fr:
        fr.put_kit("s/k", "1", ocilib.kit_manifest(kit_bytes), kit_bytes)
        assert_ok(verify(fr.ref("s/k:1"), keys, env=isolated_env))
        blob_gets = [e for e in fr.log if e[0] == "GET" and "/blobs/" in e[1]]
        assert len(blob_gets) >= 2
        assert all(len(e[2]) == len("Bearer ") + 3072 for e in blob_gets), [len(e[2]) for e in blob_gets]


def test_over_long_challenge_is_an_error_not_a_cut(kit_bytes, keys, isolated_env):
    with ocilib.FakeRegistry(auth="bearer", service="s" * 5000) as fr:
        fr.put_kit("s/k", "1", ocilib.kit_manifest(kit_bytes), kit_bytes)
        assert_fail(verify(fr.ref("s/k:1"), keys, env=isolated_env), 1, "WWW-Authenticate longer")
        assert fr.token_requests == []


def test_bearer_token_expiry_is_renewed_before_use(kit_bytes, keys, isolated_env):
    """Tokens that live one second, blob reads that take 1.1 s each: a new token is
    fetched before a use that would present an expired one, so the registry never
    refuses one (its only 401 is the first GET /v2/).  Each read outlasts a token,
    so the renewal is certain: with shorter reads the chunks after the first are
    fetched in parallel and may all fall inside the first token's second."""
    with ocilib.FakeRegistry(auth="bearer", token_ttl=1, blob_delay=1.1) as fr:
        fr.put_kit("s/k", "1", ocilib.kit_manifest(kit_bytes), kit_bytes)
        assert_ok(verify(fr.ref("s/k:1"), keys, env=isolated_env))
        assert len(fr.token_requests) >= 2, fr.token_requests
        assert fr.refused == 1, fr.log


def test_bearer_token_service_refuses(kit_bytes, keys, tmp_path, isolated_env):
    with ocilib.FakeRegistry(auth="bearer", users={"bob": "pw"}) as fr:
        fr.put_kit("s/k", "1", ocilib.kit_manifest(kit_bytes), kit_bytes)
        assert_fail(verify(fr.ref("s/k:1"), keys, env=isolated_env), 1, "token", "refused")
        bad = ocilib.auth_file(tmp_path / "bad.json", fr.host, "bob", "nope")
        assert_fail(verify(fr.ref("s/k:1"), keys, env=dict(isolated_env, REGISTRY_AUTH_FILE=bad)), 1,
                    "refused")
        good = ocilib.auth_file(tmp_path / "good.json", fr.host, "bob", "pw")
        assert_ok(verify(fr.ref("s/k:1"), keys, env=dict(isolated_env, REGISTRY_AUTH_FILE=good)))


def test_basic_auth_registry(kit_bytes, keys, tmp_path, isolated_env):
    with ocilib.FakeRegistry(auth="basic", users={"bob": "pw"}) as fr:
        fr.put_kit("s/k", "1", ocilib.kit_manifest(kit_bytes), kit_bytes)
        good = ocilib.auth_file(tmp_path / "good.json", f"https://{fr.host}", "bob", "pw")
        assert_ok(verify(fr.ref("s/k:1"), keys, env=dict(isolated_env, REGISTRY_AUTH_FILE=good)))
        assert_fail(verify(fr.ref("s/k:1"), keys, env=isolated_env), 1, "credentials")


def test_401_without_a_challenge(kit_bytes, keys, isolated_env):
    with ocilib.FakeRegistry(auth="nochallenge") as fr:
        fr.put_kit("s/k", "1", ocilib.kit_manifest(kit_bytes), kit_bytes)
        assert_fail(verify(fr.ref("s/k:1"), keys, env=isolated_env), 1, "401", "challenge")


def test_blob_redirect_to_storage_never_carries_credentials(kit_bytes, keys, tmp_path, isolated_env):
    """Blob reads are sent on to object storage with presigned URLs that live one
    second: storage never sees the registry's credentials, and every storage read came
    through a fresh redirect from the registry (no presigned URL is kept and reused
    after it expired)."""
    st = ocilib.Storage().start()
    try:
        with ocilib.FakeRegistry(auth="bearer", users={"bob": "pw"}, storage=st, presign_ttl=1) as fr:
            fr.put_kit("s/k", "1", ocilib.kit_manifest(kit_bytes), kit_bytes)
            authf = ocilib.auth_file(tmp_path / "a.json", fr.host, "bob", "pw")
            assert_ok(verify(fr.ref("s/k:1"), keys, env=dict(isolated_env, REGISTRY_AUTH_FILE=authf)))
            assert st.gets >= 4 and st.auth_seen
            assert all(a == "" for a in st.auth_seen), st.auth_seen
            blob_gets = [e for e in fr.log if e[0] == "GET" and "/blobs/" in e[1]]
            assert all(e[2].startswith("Bearer ") for e in blob_gets)
            assert len(blob_gets) == len(st.auth_seen)
            assert st.expired == 0
    finally:
        st.stop()


def test_storage_challenge_never_gets_the_registry_credentials(kit_bytes, keys, tmp_path, isolated_env):
    """Storage the registry redirects blob reads to answers 401 with a bearer challenge
    whose realm is a third server: that challenge is not the registry's, so the realm
    is never asked for a token, let alone sent the registry's basic credentials; the
    read is refused."""
    evil = ocilib.Storage().start()
    st = ocilib.Storage().start()
    st.challenge_after = 1     # the client's first look at the blob is served
    st.challenge = f'Bearer realm="http://127.0.0.1:{evil.port}/token",service="x",scope="y"'
    try:
        with ocilib.FakeRegistry(auth="bearer", users={"bob": "pw"}, storage=st) as fr:
            fr.put_kit("s/k", "1", ocilib.kit_manifest(kit_bytes), kit_bytes)
            authf = ocilib.auth_file(tmp_path / "a.json", fr.host, "bob", "pw")
            r = verify(fr.ref("s/k:1"), keys, env=dict(isolated_env, REGISTRY_AUTH_FILE=authf))
            assert r.returncode != 0, r.stdout + r.stderr
            assert st.auth_seen and all(a == "" for a in st.auth_seen), st.auth_seen
            assert evil.auth_seen == [], evil.auth_seen
            assert "401" in r.stderr, r.stderr
    finally:
        st.stop()
        evil.stop()


def test_multi_range_is_never_asked(kit_bytes, keys, isolated_env):
    with ocilib.FakeRegistry() as fr:
        fr.put_kit("s/k", "1", ocilib.kit_manifest(kit_bytes), kit_bytes)
        assert_ok(verify(fr.ref("s/k:1"), keys, env=isolated_env))
        ranges = [e[3] for e in fr.log if "/blobs/" in e[1]]
        assert ranges and all("," not in r for r in ranges), ranges
        assert fr.multirange_refused == 0


def test_manifest_digest_mismatch(kit_bytes, keys, isolated_env):
    with ocilib.FakeRegistry() as fr:
        good = ocilib.kit_manifest(kit_bytes)
        fr.put_kit("s/k", "1", good, kit_bytes)
        other = ocilib.sha256_digest(b"another manifest")
        fr.manifests[("s/k", other)] = good          # the registry answers the wrong bytes
        assert_fail(verify(fr.ref(f"s/k@{other}"), keys, env=isolated_env), 4, "digest mismatch")
        fr.digest_header = other                       # and lies about a tag's digest
        assert_fail(verify(fr.ref("s/k:1"), keys, env=isolated_env), 4, "digest mismatch")


@pytest.mark.parametrize("case,code,words", [
    ("layer media type", 3, ("not a kit", "layer media type")),
    ("artifact type", 3, ("not a kit", "artifact type")),
    ("no layer", 3, ("missing", "layer")),
    ("two layers", 3, ("2 layers",)),
    ("index", 3, ("not a kit",)),
    ("size", 4, ("descriptor",)),
    ("blob missing", 1, ("blob",)),
])
def test_bad_manifests(kit_bytes, keys, isolated_env, tmp_path, case, code, words):
    km = ocilib.kit_manifest
    d = ocilib.sha256_digest(kit_bytes)
    layer = {"mediaType": ocilib.KIT_TYPE + ".tar", "digest": d, "size": len(kit_bytes)}
    m = {
        "layer media type": km(kit_bytes, media="application/vnd.oci.image.layer.v1.tar"),
        "artifact type": km(kit_bytes, artifact="application/vnd.example.sbom"),
        "no layer": km(kit_bytes, layers=[]),
        "two layers": km(kit_bytes, layers=[layer, layer]),
        "index": json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                             "manifests": []}).encode(),
        "size": km(kit_bytes, size=len(kit_bytes) - 1),
        "blob missing": km(kit_bytes, digest="sha256:" + "ab" * 32),
    }[case]
    with ocilib.FakeRegistry() as fr:
        fr.put_kit("s/k", "1", m, kit_bytes)
        assert_fail(verify(fr.ref("s/k:1"), keys, env=isolated_env), code, *words)
        store = tmp_path / "store"
        assert_fail(run("import", "-s", store, "-t", keys["ed25519"].pub, fr.ref("s/k:1"),
                        env=isolated_env), code)
        assert not (store / "snapshots").exists() or not any((store / "snapshots").iterdir())


def test_mirrors_of_a_registry_kit(kit, kit_bytes, keys, tmp_path, isolated_env):
    """--mirror after an oci:// source: another registry, or a plain URL of the same kit,
    serves when the first registry cannot be reached; a mirror that is not the kit
    (here: another artifact type) stops the open instead of being routed around."""
    dead = f"oci://127.0.0.1:{serverlib.free_port()}/s/k:1"
    assert_fail(verify(dead, keys, env=isolated_env), 1, "unreachable")
    root = tmp_path / "www"
    root.mkdir(mode=0o755)
    shutil.copy(kit, root / "kit.tar")
    os.chmod(root / "kit.tar", 0o644)
    with ocilib.FakeRegistry() as fr, serverlib.Nginx(tmp_path / "ng", root=root) as ng:
        fr.put_kit("s/k", "1", ocilib.kit_manifest(kit_bytes), kit_bytes)
        fr.put_kit("s/k", "sbom", ocilib.kit_manifest(kit_bytes, artifact="application/x"), kit_bytes)
        assert_ok(verify(dead, keys, "--mirror", fr.ref("s/k:1"), env=isolated_env))
        assert_ok(verify(dead, keys, "--mirror", ng.url("kit.tar"), env=isolated_env))
        assert ng.bytes_served("kit.tar") > 0
        assert_fail(verify(dead, keys, "--mirror", fr.ref("s/k:sbom"), "--mirror", ng.url("kit.tar"),
                           env=isolated_env), 3, "not a kit")


# --------------------------------------------------------------------------- mounts

BLOCK = 4096
NOW = "now=2025-01-16T00:00:00Z"   # the sample kit's components judged the day after


@pytest.fixture
def daemon_env(monkeypatch, tmp_path):
    """The daemon inherits the test's environment: no credentials from the machine."""
    home = tmp_path / "dhome"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for k in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "SSL_CERT_FILE"):
        monkeypatch.delenv(k, raising=False)
    return home


def tree_digests(root: Path) -> dict:
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    out = {}
    for i in range(0, len(files), 200):
        cp = sh("sha256sum", "--", *files[i:i + 200], cwd=root)
        for line in cp.stdout.splitlines():
            d, name = line.split(None, 1)
            out[name.lstrip("*")] = d
    return out


def test_mount_by_tag_and_by_digest(registry, kit, keys, src_tree, mounter, daemon_env):
    ref = registry.ref("stella/mount:1")
    digest = pushed_digest(push(kit, ref))
    want = tree_digests(src_tree)
    for r in (ref, registry.ref(f"stella/mount@{digest}")):
        m = mounter.mount(r, keys["ed25519"].pub, NOW, "timeout=20")
        assert tree_digests(m.path / "current") == want
        st = m.status()
        assert st["mirrors"][0]["url"] == r and st["mirrors"][0]["state"] == "ok"
        mounter.umount(m.path)


def test_mount_from_a_registry_that_demands_a_client_certificate(kit, keys, src_tree, mounter, daemon_env,
                                                                 tmp_path):
    """A TLS registry that asks every client for a certificate (distribution's
    http.tls.clientcas): with client_cert= and client_key= the registry's API (ping,
    manifest) and the blob reads present it and the tree is the source's; without them
    the mount fails, exit 1, one line."""
    tls = serverlib.make_ca(tmp_path / "ca", client=True)
    with ocilib.Registry(tmp_path / "reg", tls=tls) as r:
        ref = r.ref("stella/mtls:1")
        pushed_digest(push(kit, ref, "--cacert", tls.ca))
    r.client_cas = True
    with r:
        m = mounter.mount(ref, keys["ed25519"].pub, NOW, "timeout=20", f"cacert={tls.ca}",
                          f"client_cert={tls.client_cert}", f"client_key={tls.client_key}")
        assert tree_digests(m.path / "current") == tree_digests(src_tree)
        mounter.umount(m.path)
        cp, mnt = mounter.try_mount(ref, keys["ed25519"].pub, NOW, "timeout=5", f"cacert={tls.ca}")
        assert cp.returncode == 1, cp.stderr
        assert len(cp.stderr.strip().splitlines()) == 1, cp.stderr
        assert not os.path.ismount(mnt)


def test_mount_refuses_what_is_not_the_kit(kit_bytes, keys, mounter, daemon_env):
    with ocilib.FakeRegistry() as fr:
        fr.put_kit("s/k", "1", ocilib.kit_manifest(kit_bytes, size=len(kit_bytes) + 1), kit_bytes)
        fr.put_kit("s/k", "img", ocilib.kit_manifest(kit_bytes, artifact="application/x"), kit_bytes)
        cp, mnt = mounter.try_mount(fr.ref("s/k:1"), keys["ed25519"].pub, NOW)
        assert cp.returncode == 4 and "descriptor" in cp.stderr, cp.stderr
        assert len(cp.stderr.strip().splitlines()) == 1
        assert not os.path.ismount(mnt)
        cp, mnt = mounter.try_mount(fr.ref("s/k:img"), keys["ed25519"].pub, NOW)
        assert cp.returncode == 3 and "not a kit" in cp.stderr, cp.stderr
        assert not os.path.ismount(mnt)


def test_tamper_in_registry_storage_eio_on_exactly_the_bad_blocks(registry, kit, keys, src_tree, mounter,
                                                                   daemon_env):
    import tarfile
    victim, bad_block = "feeds/vuln-db/vuln.db", 37
    ref = registry.ref("stella/tamper-mount:1")
    pushed_digest(push(kit, ref))
    data = registry.blob_data(ocilib.sha256_digest(Path(kit).read_bytes()))
    with tarfile.open(kit) as tf:
        off = tf.getmember(victim).offset_data
    good = data.read_bytes()
    raw = bytearray(good)
    for i in range(16):
        raw[off + bad_block * BLOCK + 100 + i] ^= 0xFF
    data.write_bytes(bytes(raw))
    try:
        m = mounter.mount(ref, keys["ed25519"].pub, NOW, "timeout=20")
        want = (src_tree / victim).read_bytes()
        nblocks = (len(want) + BLOCK - 1) // BLOCK
        fd = os.open(m.path / "current" / victim, os.O_RDONLY)
        failed = []
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            for b in list(range(0, 8)) + [bad_block - 1, bad_block, bad_block + 1] + \
                    list(range(nblocks - 4, nblocks)):
                try:
                    assert os.pread(fd, BLOCK, b * BLOCK) == want[b * BLOCK:(b + 1) * BLOCK], b
                except OSError as e:
                    assert e.errno == errno.EIO
                    failed.append(b)
        finally:
            os.close(fd)
        assert failed == [bad_block]
        assert (m.path / "health").read_text().splitlines()[0] == "CRITICAL"
    finally:
        data.write_bytes(good)


def test_mount_token_and_presigned_url_expire_while_mounted(keys, mounter, tmp_path, daemon_env):
    """Bearer tokens and presigned storage URLs that live one second; reads after both
    expired still succeed: a new token is fetched, the blob URL is asked of the registry
    again, storage never sees credentials nor an expired URL."""
    import storelib
    big = os.urandom(8 << 20)
    src = storelib.write_tree(tmp_path / "src", {"feeds/big.bin": big, "feeds/v.txt": b"v\n"})
    kit_bytes = storelib.pack_kit(src, tmp_path / "k.tar", keys["ed25519"], "v1", 1).read_bytes()
    st = ocilib.Storage().start()
    try:
        with ocilib.FakeRegistry(auth="bearer", users={"bob": "pw"}, storage=st, presign_ttl=1,
                                 token_ttl=1) as fr:
            fr.put_kit("s/k", "1", ocilib.kit_manifest(kit_bytes), kit_bytes)
            ocilib.auth_file(tmp_path / "auth.json", fr.host, "bob", "pw")
            os.environ["REGISTRY_AUTH_FILE"] = str(tmp_path / "auth.json")
            m = mounter.mount(fr.ref("s/k:1"), keys["ed25519"].pub, NOW, "timeout=20")
            tokens0, gets0 = len(fr.token_requests), st.gets
            time.sleep(2.5)
            assert (m.path / "current/feeds/big.bin").read_bytes() == big
            assert st.gets > gets0, "the file was not read from the registry after the sleep"
            assert len(fr.token_requests) > tokens0
            assert st.auth_seen and all(a == "" for a in st.auth_seen), st.auth_seen
            assert st.expired == 0
            want = "Basic " + base64.b64encode(b"bob:pw").decode()
            assert all(a == want for a, _ in fr.token_requests)
    finally:
        os.environ.pop("REGISTRY_AUTH_FILE", None)
        st.stop()


def test_hanging_token_service_reads_and_umount_within_timeout(keys, mounter, tmp_path, daemon_env):
    """Tokens that live one second, then a token service that hangs: four readers of
    four places in a file at once each fail within timeout= (+ slack), not one after
    another (one token fetch at a time, the others waiting within their own deadline,
    outside any lock); an unmount meanwhile ends the hanging fetch (it is cancelled)
    rather than waiting for timeout=."""
    import errno
    import threading
    import storelib
    big = os.urandom(24 << 20)
    src = storelib.write_tree(tmp_path / "src", {"feeds/big.bin": big, "feeds/v.txt": b"v\n"})
    kit_bytes = storelib.pack_kit(src, tmp_path / "k.tar", keys["ed25519"], "v1", 1).read_bytes()
    with ocilib.FakeRegistry(auth="bearer", token_ttl=1) as fr:
        fr.put_kit("s/k", "1", ocilib.kit_manifest(kit_bytes), kit_bytes)
        m = mounter.mount(fr.ref("s/k:1"), keys["ed25519"].pub, NOW, "timeout=15")
        fr.token_delay = 60
        time.sleep(2.5)        # the token expired: the next read asks for one
        results = {}

        def reader(i):
            t0 = time.monotonic()
            try:
                fd = os.open(m.path / "current/feeds/big.bin", os.O_RDONLY)
            except OSError as e:
                results[i] = (e.errno, 0)
                return
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                os.pread(fd, 4096, (4 + 5 * i) << 20)
                results[i] = (0, time.monotonic() - t0)
            except OSError as e:
                results[i] = (e.errno, time.monotonic() - t0)
            finally:
                os.close(fd)

        ths = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(4)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in ths), results
        assert all(e != 0 and secs < 15 + 3 for e, secs in results.values()), results
        # another fetch hangs now; the unmount cancels it
        ths = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(4, 6)]
        for t in ths:
            t.start()
        time.sleep(1)
        t0 = time.monotonic()
        mounter.umount(m.path)
        assert time.monotonic() - t0 < 6


def current_version(mnt: Path):
    try:
        return os.readlink(mnt / "current").split("/", 1)[1]
    except OSError:
        return None


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_follow_a_moving_tag(registry, keys, tmp_path, mounter, daemon_env):
    import storelib
    key = keys["ed25519"]
    kits = {}
    for v, seq in (("v1", 10), ("v2", 20), ("v0", 5)):
        src = storelib.write_tree(tmp_path / f"src-{v}", {"feeds/version.txt": f"{v}\n".encode(),
                                                           "feeds/data.bin": os.urandom(100000)})
        kits[v] = storelib.pack_kit(src, tmp_path / f"{v}.tar", key, v, seq)
    ref = registry.ref("stella/follow:stable")
    pushed_digest(push(kits["v1"], ref))
    store = tmp_path / "store"
    store.mkdir()
    m = mounter.mount(store, key.pub, NOW, f"follow={ref}", "interval=1")
    wait_for(lambda: current_version(m.path) == "v1", 30, "v1 imported and current")
    assert m.status()["follow"]["url"] == ref
    pushed_digest(push(kits["v2"], ref))          # the tag moves: a new kit
    wait_for(lambda: current_version(m.path) == "v2", 30, "v2 imported and current")
    assert (m.path / "current/feeds/version.txt").read_text() == "v2\n"
    pushed_digest(push(kits["v0"], ref))          # moved back to an older sequence: refused
    wait_for(lambda: "ESTALE" in (m.path / "control").read_text() or
             "Stale" in (m.path / "control").read_text(), 30, "the refusal in the journal")
    assert current_version(m.path) == "v2"
    assert sorted(os.listdir(m.path / "snapshots")) == ["v1", "v2"]


# --------------------------------------------------------------------------- the resolve's one bound

def test_resolve_is_bounded_by_one_timeout(kit_bytes, keys, isolated_env, mounter, daemon_env):
    """Resolving a kit (ping, token, manifest, the blob's size) shares one timeout=
    (core/oci.c): a registry that answers every step in 1.2 s, each well under a 3 s
    timeout but the four of them over it, fails `stellakit verify` and a mount within
    about 3 s, exit 1, one line naming the registry (its URL) and the 3 s timeout --
    rather than succeeding after 5 s or more, as when each step took the timeout afresh.
    A token service that hangs is met within the same bound.  Nothing is mounted."""
    slack = 3
    with ocilib.FakeRegistry(auth="bearer") as fr:
        fr.put_kit("s/k", "1", ocilib.kit_manifest(kit_bytes), kit_bytes)
        assert_ok(verify(fr.ref("s/k:1"), keys, "--timeout", "30", env=isolated_env))  # it is the kit
        fr.delay = 1.2
        for what in ("verify", "mount"):
            fr.log.clear()
            t0 = time.monotonic()
            if what == "verify":
                cp = verify(fr.ref("s/k:1"), keys, "--timeout", "3", env=isolated_env)
                line = assert_fail(cp, 1, "3 s timeout", names=[f"127.0.0.1:{fr.port}"])
            else:
                cp, mnt = mounter.try_mount(fr.ref("s/k:1"), keys["ed25519"].pub, NOW, "timeout=3")
                line = kitlib.assert_fs_fail(cp, 1, "3 s timeout")
                assert f"127.0.0.1:{fr.port}" in line, line
                assert not kitlib.is_mounted(mnt)
            took = time.monotonic() - t0
            assert took < 3 + slack, f"{what}: {took:.1f} s for a 3 s timeout: {line}"
            # the resolve got as far as the bound let it: not past its third step
            steps = [(m, p) for m, p, _, _ in fr.log]
            assert 2 <= len(steps) <= 3, (what, steps)
        # the token service hangs: the same bound, the same one line
        fr.delay = 0.0
        fr.token_delay = 60
        t0 = time.monotonic()
        cp = verify(fr.ref("s/k:1"), keys, "--timeout", "3", env=isolated_env)
        line = assert_fail(cp, 1, "3 s timeout", "token", names=[f"127.0.0.1:{fr.port}"])
        assert time.monotonic() - t0 < 3 + slack, line
