"""`stellakit verify` parses the manifest as a stream, 256 KiB at a time, and merges
the members with the artifacts pulled from it (docs/kit-format.md, "memory of
`stellakit verify`").  Hostile manifests large enough that what is wrong sits across
a piece boundary must be refused exactly as the whole parser refuses them: exit 3 and
one line; valid ones the stream cannot take in order (artifacts not sorted) still
verify.  Kits are assembled with tarfile and signed by openssl (kitlib)."""

import copy
import json
import time

import pytest

from kitlib import Member, assert_fail, assert_ok, file_item, link_item, make_manifest, run, signed_kit

CHUNK = 256 << 10
N = 3000  # artifacts: a manifest of about 700 KB, three pieces


@pytest.fixture(scope="module")
def key(keys):
    return keys["ed25519"]


@pytest.fixture(scope="module")
def base():
    """N files of the same content under feeds/, sorted: (artifacts, members)."""
    proto = file_item("x", b"{\"id\":1}\n")
    arts, members = [], []
    for i in range(N):
        name = "feeds/d%02d/CVE-%07d.json" % (i // 1000, i)
        e = dict(proto.entry, name=name)
        arts.append(e)
        members.append(Member(name, proto.member.data, "file", proto.member.mode))
    return arts, members


@pytest.fixture
def kit(key, tmp_path):
    n = [0]

    def mk(manifest, members):
        n[0] += 1
        return signed_kit(tmp_path / f"kit{n[0]}", manifest, members, [key])
    return mk


def verify(key, path, timeout=60):
    return run("verify", "-t", key.pub, path, timeout=timeout)


def dump(m) -> bytes:
    return json.dumps(m, indent=2).encode()


def index_across_boundary(arts, mbytes_of):
    """The index of the artifact whose entry spans the first piece boundary."""
    mb = mbytes_of(arts)
    for i, a in enumerate(arts):
        at = mb.find(json.dumps(a["name"]).encode())
        if at > CHUNK:
            return i - 1
    raise AssertionError("manifest smaller than a piece")


def test_large_manifest_verifies(key, kit, base):
    arts, members = base
    m = dump(make_manifest(arts))
    assert len(m) > 2 * CHUNK
    cp = verify(key, kit(m, members))
    assert_ok(cp)
    assert "%d files" % N in cp.stdout


def test_unsorted_manifest_still_verifies(key, kit, base):
    """Section 4.4 allows any order; the members stay sorted.  The stream hands such a
    manifest back and it is parsed whole."""
    arts, members = copy.deepcopy(base)
    i = index_across_boundary(arts, lambda a: dump(make_manifest(a)))
    arts[i], arts[i + 1] = arts[i + 1], arts[i]
    assert_ok(verify(key, kit(dump(make_manifest(arts)), members)))


def test_duplicate_name_across_boundary(key, kit, base):
    arts, members = copy.deepcopy(base)
    i = index_across_boundary(arts, lambda a: dump(make_manifest(a)))
    arts[i + 1] = dict(arts[i])
    line = assert_fail(verify(key, kit(dump(make_manifest(arts)), members)), 3, "duplicate name")
    assert arts[i]["name"] in line


def test_truncated_mid_artifacts(key, kit, base):
    arts, members = base
    m = dump(make_manifest(arts))
    for cut in (CHUNK - 3, CHUNK + 1, len(m) // 2 + 7, len(m) - 5):
        assert_fail(verify(key, kit(m[:cut], members)), 3, "manifest", "invalid JSON")


def test_inside_a_file_with_names_between(key, kit, base):
    """Rule 2 when the file and the name inside it are far apart in bytewise order:
    "f" (a file), then "f-0".. "f-1999", then "f/x", past a piece boundary."""
    arts, members = base
    proto = arts[0]
    extra = [dict(proto, name="f")] + [dict(proto, name="f-%04d" % i) for i in range(2000)]
    extra.append(dict(proto, name="f/x"))
    allarts = sorted(arts + extra, key=lambda a: a["name"].encode())
    assert dump(make_manifest(allarts)).find(b'"f/x"') > CHUNK
    line = assert_fail(verify(key, kit(dump(make_manifest(allarts)), members)), 3, "inside", "file")
    assert '"f/x"' in line and '"f"' in line


def test_symlink_escape_after_many_files(key, kit, base):
    arts, members = base
    links = [link_item("zz/b/s", "../.."), link_item("zz/b/l", "s/..")]
    allarts = arts + sorted([it.entry for it in links], key=lambda a: a["name"].encode())
    assert_fail(verify(key, kit(dump(make_manifest(allarts)), members)), 3, "escapes")


def test_deep_nesting_past_a_boundary(key, kit, base):
    arts, members = copy.deepcopy(base)
    i = index_across_boundary(arts, lambda a: dump(make_manifest(a)))
    m = dump(make_manifest(arts))
    name = json.dumps(arts[i + 2]["name"]).encode()
    m = m.replace(name + b",", name + b', "x": ' + b"[" * 5000 + b"]" * 5000 + b",", 1)
    assert_fail(verify(key, kit(m, members)), 3, "manifest", "nested")


def test_huge_string(key, kit, base):
    """A 64 MiB string in an unknown key (allowed) is read in linear time, and a
    64 KiB name is refused."""
    arts, members = copy.deepcopy(base)
    arts[N // 2]["note"] = "n" * (64 << 20)
    t = time.monotonic()
    assert_ok(verify(key, kit(dump(make_manifest(arts)), members), timeout=120))
    took = time.monotonic() - t
    arts[N // 2].pop("note")
    arts[N // 2]["name"] = "feeds/" + "a" * (64 << 10)
    assert_fail(verify(key, kit(dump(make_manifest(arts)), members)), 3, "unsafe name")
    # not a timing test: a quadratic lexer took minutes here, linear takes seconds
    assert took < 100


def test_listed_member_missing_reported_after_the_walk(key, kit, base):
    """A missing member is reported once the walk is over (a corrupt member, later
    in the archive, comes first), as before the merge."""
    arts, members = copy.deepcopy(base)
    del members[10]
    line = assert_fail(verify(key, kit(dump(make_manifest(arts)), members)), 3, "missing member")
    assert arts[10]["name"] in line
    members[-1] = Member(members[-1].name, b"{\"id\":2}\n", "file", members[-1].mode)
    assert_fail(verify(key, kit(dump(make_manifest(arts)), members)), 4, "sha256 mismatch")
