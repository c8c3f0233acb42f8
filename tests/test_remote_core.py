"""Kits on site mirrors, through `stellakit verify URL` and `stellakit import URL`
(docs/mirrors.md, stellakit(1)): real nginx (http, https with a CA made here, basic
auth), and serverlib.FaultServer for every way a mirror fails.  Each failure gives exit 1
(unreachable, refused) or 4 (bad bytes) with one line, or fails over to a good mirror;
never a kit accepted from wrong bytes.  The mount-level behaviour is test_remote_mount*.py's.
"""

import shutil
import subprocess
import time

import pytest

import kitlib
import serverlib
from kitlib import assert_fail, assert_ok


@pytest.fixture
def www(tmp_path, packed):
    """A directory of kits (none, gzip, zstd) for nginx to serve: name -> PackedKit."""
    d = tmp_path / "www"
    d.mkdir()
    kits = {}
    for comp, name in (("none", "kit.tar"), ("gzip", "kit.tar.gz"), ("zstd", "kit.tar.zst")):
        pk = packed(comp)
        shutil.copy(pk.path, d / name)
        kits[name] = pk
    return d, kits


@pytest.fixture
def nginx(tmp_path, www):
    with serverlib.Nginx(tmp_path / "nginx", www[0]) as ng:
        yield ng


def verify(url, keys, *extra, timeout=120):
    return kitlib.run("verify", "-t", keys["ed25519"].pub, *extra, url, timeout=timeout)


def fault(pk):
    return serverlib.FaultServer({"/kit.tar": pk.path.read_bytes()})


# --------------------------------------------------------------------------- nginx

@pytest.mark.parametrize("name", ["kit.tar", "kit.tar.gz", "kit.tar.zst"])
def test_verify_url_over_http(nginx, www, keys, name):
    cp = verify(nginx.url(name), keys)
    assert_ok(cp)
    assert "valid" in cp.stdout and cp.stderr == ""
    # a local verify of the same file says the same, but for the name
    local = verify(str(www[0] / name), keys)
    assert cp.stdout.replace(nginx.url(name), "K") == local.stdout.replace(str(www[0] / name), "K")
    # every request was a range request answered 206, and the kit came about once
    log = [e for e in nginx.log() if e.path == "/" + name]
    assert log and all(e.status == 206 and e.range.startswith("bytes=") for e in log)
    size = (www[0] / name).stat().st_size
    assert size <= sum(e.bytes for e in log) <= size + 2 * 1024 * 1024


def test_verify_url_over_https_with_cacert(tmp_path, www, keys):
    tls = serverlib.make_ca(tmp_path / "ca")
    with serverlib.Nginx(tmp_path / "ngs", www[0], tls=tls) as ng:
        assert_ok(verify(ng.url("kit.tar.zst"), keys, "--cacert", tls.ca))
        # without the CA the certificate is not trusted: runtime failure, one line
        cp = verify(ng.url("kit.tar.zst"), keys)
        assert_fail(cp, 1, ("certificate", "ssl", "tls"))


def test_verify_url_with_basic_auth(tmp_path, www, keys):
    with serverlib.Nginx(tmp_path / "nga", www[0], basic=("scan", "s3cret")) as ng:
        assert_ok(verify(ng.url("kit.tar", userinfo="scan:s3cret"), keys))
        assert_fail(verify(ng.url("kit.tar"), keys), 1, ("401", "refused"))
        assert_fail(verify(ng.url("kit.tar", userinfo="scan:wrong"), keys), 1, ("401", "refused"))


def test_verify_url_netrc(tmp_path, www, keys):
    with serverlib.Nginx(tmp_path / "ngn", www[0], basic=("scan", "s3cret")) as ng:
        home = tmp_path / "home"
        home.mkdir()
        (home / ".netrc").write_text(f"machine 127.0.0.1 login scan password s3cret\n")
        (home / ".netrc").chmod(0o600)
        cp = kitlib.run("verify", "-t", keys["ed25519"].pub, ng.url("kit.tar"), env={"HOME": str(home)})
        assert_ok(cp)


def test_import_url(tmp_path, nginx, www, keys):
    store = tmp_path / "store"
    cp = kitlib.run("import", "-s", store, "-t", keys["ed25519"].pub, nginx.url("kit.tar.gz"))
    assert_ok(cp)
    assert "imported" in cp.stdout
    # the same kit, local, is then not newer: the store holds what the URL gave
    local = kitlib.run("import", "-s", store, "-t", keys["ed25519"].pub, www[1]["kit.tar.gz"].path)
    assert_fail(local, 7, ("sequence", "newer", "stale"))


def test_unreachable_and_missing(nginx, keys):
    port = serverlib.free_port()
    cp = verify(f"http://127.0.0.1:{port}/kit.tar", keys)
    assert_fail(cp, 1, ("connect", "refused", "failed"))
    assert_fail(verify(nginx.url("nothere.tar"), keys), 1, "404")


def test_oci_not_yet(keys):
    cp = verify("oci://127.0.0.1:1/repo:tag", keys)
    assert_fail(cp, 1, "oci")


def test_mirror_needs_url(packed, keys):
    cp = verify(str(packed("none").path), keys, "--mirror", "http://127.0.0.1:1/kit.tar")
    assert_fail(cp, 2, "mirror")


# --------------------------------------------------------------------------- faults, one mirror

@pytest.mark.parametrize("fault_name,setting,words", [
    ("ignore_range", True, ("200", "range")),
    ("truncate", 1000, ("short", "partial", "transfer")),
    ("reset", True, ("reset", "recv", "empty", "connection", "failure")),
    ("status", 503, "503"),
    ("redirect_loop", True, "redirect"),
])
def test_faulty_mirror_alone_fails_in_one_line(packed, keys, fault_name, setting, words):
    pk = packed("none")
    with fault(pk) as fs:
        setattr(fs, fault_name, setting)
        cp = verify(fs.url("kit.tar"), keys, "--timeout", "10")
        assert_fail(cp, 1, words)


def test_mid_read_fault_fails_in_one_line(packed, keys):
    # the first request (the kit's head) is answered, every later one is a 503
    pk = packed("none")
    with fault(pk) as fs:
        fs.status = 503
        fs.fail_after = 1
        cp = verify(fs.url("kit.tar"), keys, "--timeout", "5")
        assert_fail(cp, 1, ("input/output", "i/o"))
        assert fs.requests[0].status == 206 and fs.count >= 2


def test_hanging_mirror_times_out(packed, keys):
    pk = packed("none")
    with fault(pk) as fs:
        fs.hang = 60
        t0 = time.monotonic()
        cp = verify(fs.url("kit.tar"), keys, "--timeout", "2", timeout=30)
        assert_fail(cp, 1, ("timed out", "timeout", "time"))
        assert time.monotonic() - t0 < 10
        # and in the middle of the kit: the read fails in time too
        fs.clear_log()
        fs.fail_after = 1
        t0 = time.monotonic()
        cp = verify(fs.url("kit.tar"), keys, "--timeout", "2", timeout=30)
        assert_fail(cp, 1, ("input/output", "i/o"))
        assert time.monotonic() - t0 < 10


def test_flipped_bytes_are_exit_4(packed, keys):
    pk = packed("none")
    data = pk.path.read_bytes()
    # inside the biggest file's data, well past the head
    off = len(data) // 2
    with fault(pk) as fs:
        fs.flip = (off, 16)
        cp = verify(fs.url("kit.tar"), keys)
        assert_fail(cp, 4, ("sha-256", "sha256", "digest", "mismatch", "differ"))


def test_redirect_followed_and_credentials_stay_home(packed, keys):
    pk = packed("none")
    with fault(pk) as target, fault(pk) as front:
        front.auth = ("scan", "s3cret")
        front.redirect = target.origin
        cp = verify(front.url("kit.tar", userinfo="scan:s3cret"), keys)
        assert_ok(cp)
        assert front.count >= 1 and target.count >= 1
        # the front saw the credentials, the host it redirected to never did
        assert any("Authorization" in r.headers for r in front.requests)
        assert not any("Authorization" in r.headers or "authorization" in r.headers
                       for r in target.requests)


# --------------------------------------------------------------------------- failover

@pytest.mark.parametrize("fault_name,setting", [
    ("ignore_range", True),
    ("truncate", 1000),
    ("reset", True),
    ("status", 503),
    ("redirect_loop", True),
    ("hang", 30),
])
def test_failover_to_a_good_mirror(packed, keys, nginx, fault_name, setting):
    pk = packed("zstd")
    with fault(pk) as bad:
        setattr(bad, fault_name, setting)
        cp = verify(bad.url("kit.tar"), keys, "--mirror", nginx.url("kit.tar.zst"), "--timeout", "6",
                    timeout=60)
        assert_ok(cp)
        assert cp.stderr == ""
        assert bad.count >= 1
        # the failing mirror is skipped for a while, not asked for every chunk (a
        # redirect loop is one attempt of up to 9 requests)
        assert bad.count <= (3 * 9 if fault_name == "redirect_loop" else 3)
        assert nginx.bytes_served("kit.tar.zst") >= pk.path.stat().st_size


def test_failover_when_first_mirror_is_down(packed, keys, nginx):
    port = serverlib.free_port()
    cp = verify(f"http://127.0.0.1:{port}/kit.tar", keys, "--mirror", nginx.url("kit.tar"))
    assert_ok(cp)


def test_mirror_of_another_size_is_refused(tmp_path, packed, keys, nginx):
    # a mirror whose file is not the same kit is not used for chunks of this one
    pk = packed("none")
    with serverlib.FaultServer({"/kit.tar": pk.path.read_bytes()}) as good, \
            serverlib.FaultServer({"/kit.tar": pk.path.read_bytes() + b"\0" * 512}) as other:
        good.fail_first = 0     # no faults
        cp = verify(good.url("kit.tar"), keys, "--mirror", other.url("kit.tar"))
        assert_ok(cp)
