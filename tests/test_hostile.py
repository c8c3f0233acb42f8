"""Hostile and malformed kits: every one must be refused by `stellakit verify` with the
right exit code and exactly one "stellakit: ..." line naming what and where.

All kits here are assembled with tarfile and signed with the trusted key by openssl, so
that the defect under test is the only one."""

import copy
import random
import tarfile
import time

import pytest

import kitlib
from kitlib import (MANIFEST, SIGNAME, Member, assemble_kit, assert_fail, assert_ok,
                    basic_items, dump_manifest, file_item, link_item, make_manifest, run,
                    sign_bytes, signed_kit, sort_items, split_items)


@pytest.fixture(scope="module")
def key(keys):
    # ECDSA: openssl 3.0 cannot make an Ed25519 signature over 0 bytes (empty manifest)
    return keys["ecdsa"]


@pytest.fixture
def verify(key):
    def v(kit, *extra):
        return run("verify", "-t", key.pub, *extra, kit, timeout=30)
    return v


@pytest.fixture
def make(key, tmp_path):
    """make(items or (artifacts, members), compress=None, manifest_fields=None, **kw)
    -> path of a kit whose manifest is validly signed by the trusted key."""
    counter = [0]

    def mk(items, compress=None, manifest_fields=None, **kw):
        counter[0] += 1
        if isinstance(items, tuple):
            arts, members = items
        else:
            arts, members = split_items(items)
        m = make_manifest(arts, **(manifest_fields or {}))
        return signed_kit(tmp_path / f"kit{counter[0]}", m, members, [key], compress=compress,
                          **kw)
    return mk


@pytest.fixture
def make_raw_manifest(key, tmp_path):
    """Kit whose manifest member is exactly MBYTES (validly signed) + the basic members."""
    def mk(mbytes, members=None):
        if members is None:
            members = split_items(basic_items())[1]
        return signed_kit(tmp_path / "rawkit", mbytes, members, [key])
    return mk


def test_baseline_is_valid(make, verify):
    """The unmodified base kit used below verifies."""
    assert_ok(verify(make(basic_items())))


# --------------------------------------------------------------------------- unsafe names

UNSAFE = ["../x", "/abs", "a//b", "./a", "a/./b", "a/../b", "..", ".", "d/" + "x" * 256]


@pytest.mark.parametrize("name", UNSAFE, ids=lambda n: repr(n[:12]))
def test_unsafe_name_listed_and_present(make, verify, name):
    items = sort_items(basic_items() + [file_item(name, b"evil\n")])
    line = assert_fail(verify(make(items)), 3, "unsafe name")
    if len(name) < 100:
        assert name in line, line


@pytest.mark.parametrize("name", ["../x", "/abs"])
def test_unsafe_symlink_and_directory_names(make, verify, name):
    items = sort_items(basic_items() + [link_item(name, "a.txt")])
    assert_fail(verify(make(items)), 3, "unsafe name", names=(name,))
    items = sort_items(basic_items() + [kitlib.dir_item(name + "d")])
    assert_fail(verify(make(items)), 3, "unsafe name", names=(name + "d",))


def test_nul_in_manifest_name(make_raw_manifest, verify):
    arts, members = split_items(basic_items())
    arts = arts + [{"name": "zz\u0000evil", "size": 0, "sha256": kitlib.sha256_hex(b""),
                    "fsverity": kitlib.fsverity_bytes(b""), "mode": 420}]
    mbytes = dump_manifest(make_manifest(arts))
    assert b"\\u0000" in mbytes
    assert_fail(verify(make_raw_manifest(mbytes, members)), 3, "unsafe name")


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "a/../../evil"])
def test_unsafe_member_not_in_manifest(make, verify, name):
    arts, members = split_items(basic_items())
    members = [Member(name, b"evil\n")] + members
    assert_fail(verify(make((arts, members))), 3, ("unsafe name", "unlisted member"),
                names=(name,))


def test_unsafe_name_in_pax_path_header(make, verify):
    """ustar name is harmless, the PAX 'path' record (which wins) is not."""
    arts, members = split_items(basic_items())
    members = [Member("harmless", b"evil\n", pax={"path": "../../evil"})] + members
    assert_fail(verify(make((arts, members))), 3, ("unsafe name", "unlisted member"),
                names=("../../evil",))


# --------------------------------------------------------------------------- members

@pytest.mark.parametrize("compress", kitlib.COMPRESSIONS)
def test_unlisted_member(make, verify, compress):
    arts, members = split_items(basic_items())
    members = members + [Member("extra.txt", b"not in the manifest\n")]
    assert_fail(verify(make((arts, members), compress)), 3, "unlisted member",
                names=("extra.txt",))


def test_listed_member_missing(make, verify):
    arts, members = split_items(basic_items())
    members = [m for m in members if m.name != "dir/c"]
    assert_fail(verify(make((arts, members))), 3, "missing member", names=("dir/c",))


def test_listed_symlink_member_missing(make, verify):
    arts, members = split_items(basic_items())
    members = [m for m in members if m.name != "dir/link"]
    assert_fail(verify(make((arts, members))), 3, "missing member", names=("dir/link",))


def test_duplicate_member(make, verify):
    arts, members = split_items(basic_items())
    i = next(i for i, m in enumerate(members) if m.name == "dir/c")
    members.insert(i + 1, copy.deepcopy(members[i]))
    assert_fail(verify(make((arts, members))), 3, "duplicate member", names=("dir/c",))


def test_duplicate_member_with_other_content(make, verify):
    arts, members = split_items(basic_items())
    members.append(Member("emptydir", b"surprise"))  # same name again, as a file
    assert_fail(verify(make((arts, members))), 3, "duplicate member", names=("emptydir",))


def test_duplicate_name_in_manifest(make, verify):
    arts, members = split_items(basic_items())
    i = next(i for i, a in enumerate(arts) if a["name"] == "dir/c")
    arts.insert(i + 1, dict(arts[i]))
    assert_fail(verify(make((arts, members))), 3, "duplicate name", names=("dir/c",))


def test_hard_link_member(make, verify):
    items = basic_items()
    a = next(it for it in items if it.name == "a.txt")
    h = file_item("dir/h", a.member.data)
    h.member = Member("dir/h", type="hardlink", target="a.txt")
    items = sort_items(items + [h])
    assert_fail(verify(make(items)), 3, "hard link", names=("dir/h",))


@pytest.mark.parametrize("mtype", ["chr", "blk", "fifo"])
def test_device_and_fifo_members(make, verify, mtype):
    it = file_item("dev/thing", b"")
    it.member = Member("dev/thing", type=mtype, mode=0o644)
    items = sort_items(basic_items() + [it])
    assert_fail(verify(make(items)), 3, "unsupported type", names=("dev/thing",))


@pytest.mark.parametrize("mtype", ["fifo", "socket", "hardlink", "chardev"])
def test_unsupported_type_in_manifest(make, verify, mtype):
    arts, members = split_items(basic_items())
    arts = arts + [{"name": "zz", "type": mtype}]
    assert_fail(verify(make((arts, members))), 3, ("unsupported type", "type"),
                names=("zz",))


@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd", "../x"])
def test_symlink_escaping_kit(make, verify, target):
    items = sort_items(basic_items() + [link_item("evil", target)])
    assert_fail(verify(make(items)), 3, "escapes", names=("evil",))


def test_nested_symlink_escaping_kit(make, verify):
    items = sort_items(basic_items() + [link_item("dir/sub/l", "../../../etc")])
    assert_fail(verify(make(items)), 3, "escapes", names=("dir/sub/l",))


def test_symlink_member_target_differs_from_manifest(make, verify):
    items = basic_items()
    it = next(it for it in items if it.name == "dir/link")
    it.member.target = "c"
    assert_fail(verify(make(items)), (3, 4), names=("dir/link",))


def test_member_type_differs_from_manifest(make, verify):
    items = basic_items()
    it = next(it for it in items if it.name == "dir/link")
    it.member = Member("dir/link", b"b.bin")  # a regular file where a symlink is listed
    assert_fail(verify(make(items)), (3, 4), names=("dir/link",))


# --------------------------------------------------------------------------- order

def test_manifest_artifacts_not_sorted(make, verify):
    items = basic_items()
    i = next(i for i, it in enumerate(items) if it.name == "dir/b.bin")
    items[i], items[i + 1] = items[i + 1], items[i]
    assert_fail(verify(make(items)), 3, "order")


def test_members_not_sorted(make, verify):
    arts, members = split_items(basic_items())
    i = next(i for i, m in enumerate(members) if m.name == "dir/b.bin")
    members[i], members[i + 1] = members[i + 1], members[i]
    assert_fail(verify(make((arts, members))), 3, "order")


def test_path_component_order_is_not_bytewise(make, verify):
    """'a/b' before 'a-b' (as a per-component sort would do) is out of order."""
    items = [file_item(n, n.encode()) for n in ["B", "a/b", "a-b", "z"]]
    assert_fail(verify(make(items)), 3, "order")


def test_manifest_not_first_member(key, verify, tmp_path):
    arts, members = split_items(basic_items())
    mbytes = dump_manifest(make_manifest(arts))
    sig = kitlib.sig_text([sign_bytes(mbytes, key)])
    order = [members[0], Member(MANIFEST, mbytes), Member(SIGNAME, sig)] + members[1:]
    kit = assemble_kit(tmp_path / "kit", None, None, order)
    assert_fail(verify(kit), 3, "manifest")


def test_signature_not_second_member(key, verify, tmp_path):
    arts, members = split_items(basic_items())
    mbytes = dump_manifest(make_manifest(arts))
    sig = kitlib.sig_text([sign_bytes(mbytes, key)])
    order = [Member(MANIFEST, mbytes), members[0], Member(SIGNAME, sig)] + members[1:]
    kit = assemble_kit(tmp_path / "kit", None, None, order)
    assert_fail(verify(kit), 3, "signature member")


def test_signature_member_absent(verify, tmp_path):
    arts, members = split_items(basic_items())
    kit = assemble_kit(tmp_path / "kit", dump_manifest(make_manifest(arts)), None, members)
    assert_fail(verify(kit), (3, 5), "signature")


def test_empty_archive(verify, tmp_path):
    kit = assemble_kit(tmp_path / "kit", None, None, [])
    assert_fail(verify(kit), 3, ("manifest", "empty"))


def test_not_an_archive(verify, tmp_path):
    kit = tmp_path / "kit"
    kit.write_bytes(random.Random(5).randbytes(20000))
    assert_fail(verify(kit), 3)


# --------------------------------------------------------------------------- content

@pytest.mark.parametrize("compress", kitlib.COMPRESSIONS)
def test_size_mismatch(make, verify, compress):
    items = basic_items()
    it = next(it for it in items if it.name == "dir/b.bin")
    it.entry["size"] += 1
    assert_fail(verify(make(items, compress)), 4, "size mismatch", names=("dir/b.bin",))


def test_size_mismatch_empty_file(make, verify):
    items = basic_items()
    it = next(it for it in items if it.name == "dir/c")
    it.entry["size"] = 1
    assert_fail(verify(make(items)), 4, "size mismatch", names=("dir/c",))


def test_sha256_mismatch(make, verify):
    items = basic_items()
    it = next(it for it in items if it.name == "dir/b.bin")
    it.entry["sha256"] = kitlib.sha256_hex(b"something else")
    assert_fail(verify(make(items)), 4, "sha256 mismatch", names=("dir/b.bin",))


def test_fsverity_mismatch(make, verify):
    items = basic_items()
    it = next(it for it in items if it.name == "dir/b.bin")
    it.entry["fsverity"] = kitlib.fsverity_bytes(b"something else")
    assert_fail(verify(make(items)), 4, "fsverity mismatch", names=("dir/b.bin",))


def test_content_differs_same_size(make, verify):
    items = basic_items()
    it = next(it for it in items if it.name == "dir/b.bin")
    data = bytearray(it.member.data)
    data[4999] ^= 0xFF  # last byte, in the second fs-verity block
    it.member.data = bytes(data)
    assert_fail(verify(make(items, "gzip")), 4, "mismatch", names=("dir/b.bin",))


# --------------------------------------------------------------------------- manifest JSON

@pytest.mark.parametrize("text", [b"{not json", b"", b"[]", b"null", b'"x"',
                                  b'{"schemaVersion": 1', b'{"a":1} trailing'],
                         ids=["garbage", "empty", "array", "null", "string", "cut",
                              "trailing"])
def test_invalid_json_manifest(make_raw_manifest, verify, text):
    assert_fail(verify(make_raw_manifest(text)), 3, "manifest")


def test_manifest_not_utf8(make_raw_manifest, verify):
    arts, members = split_items(basic_items())
    mbytes = dump_manifest(make_manifest(arts, channel="st\u00e9ble"))
    mbytes = mbytes.replace("st\u00e9ble".encode(), b"st\xff\xfeble")
    assert_fail(verify(make_raw_manifest(mbytes, members)), 3, ("manifest", "utf"))


def test_deeply_nested_json(make_raw_manifest, verify):
    text = b'{"a":' + b"[" * 10000 + b"]" * 10000 + b"}"
    t = time.monotonic()
    cp = verify(make_raw_manifest(text))
    assert time.monotonic() - t < 5
    assert_fail(cp, 3, "manifest")


def test_huge_manifest_member_header(key, verify, tmp_path):
    """A manifest member whose header claims 2 GiB (the limit is 1 GiB), followed by a
    little data: refused quickly, without reading or allocating it."""
    ti = tarfile.TarInfo(MANIFEST)
    ti.size = 2 << 30
    ti.mtime = kitlib.CREATED_EPOCH
    ti.mode = 0o644
    header = ti.tobuf(tarfile.USTAR_FORMAT)
    assert len(header) == 512
    kit = tmp_path / "kit"
    kit.write_bytes(header + b"{" + b" " * 2047)
    assert kit.stat().st_size < 4096
    t = time.monotonic()
    cp = verify(kit)
    assert time.monotonic() - t < 5
    assert_fail(cp, 3, "too large")


def test_huge_signature_member_header(key, verify, tmp_path):
    arts, _ = split_items(basic_items())
    mbytes = dump_manifest(make_manifest(arts))
    head = kitlib.tar_bytes([Member(MANIFEST, mbytes)], format=tarfile.USTAR_FORMAT)
    end = 512 + -(-len(mbytes) // 512) * 512
    ti = tarfile.TarInfo(SIGNAME)
    ti.size = 1 << 30
    ti.mtime = kitlib.CREATED_EPOCH
    kit = tmp_path / "kit"
    kit.write_bytes(head[:end] + ti.tobuf(tarfile.USTAR_FORMAT) + b"A" * 1024)
    t = time.monotonic()
    cp = verify(kit)
    assert time.monotonic() - t < 5
    assert_fail(cp, 3, ("too large", "truncated"))


@pytest.mark.parametrize("field,value,keyword", [
    ("schemaVersion", 2, "schemaVersion"),
    ("schemaVersion", "1", "schemaVersion"),
    ("schemaVersion", kitlib.DELETE, "schemaVersion"),
    ("kitId", kitlib.DELETE, "kitId"),
    ("version", kitlib.DELETE, "version"),
    ("sequence", kitlib.DELETE, "sequence"),
    ("sequence", "many", "sequence"),
    ("createdAt", "2025-13-45", "createdAt"),
    ("createdAt", "2025-13-45T00:00:00Z", "createdAt"),
    ("expiresAt", "2025-02-30T00:00:00Z", "expiresAt"),
    ("expiresAt", "next month", "expiresAt"),
    ("artifacts", kitlib.DELETE, "artifacts"),
    ("artifacts", {"a.txt": {}}, "artifacts"),
], ids=lambda v: "DELETE" if v is kitlib.DELETE else str(v)[:24])
def test_bad_manifest_field(make_raw_manifest, verify, field, value, keyword):
    arts, members = split_items(basic_items())
    m = make_manifest(arts, **{field: value})
    assert_fail(verify(make_raw_manifest(dump_manifest(m), members)), 3, keyword)


@pytest.mark.parametrize("field,value", [
    ("sha256", "zz" * 32),
    ("sha256", "abcd"),
    ("fsverity", "0" * 64),            # no "sha256:" prefix
    ("fsverity", "sha256:xyz"),
    ("size", -1),
    ("size", "5000"),
])
def test_bad_artifact_field(make, verify, field, value):
    items = basic_items()
    it = next(it for it in items if it.name == "dir/b.bin")
    it.entry[field] = value
    assert_fail(verify(make(items)), 3, field, names=("dir/b.bin",))


def test_artifact_without_name(make, verify):
    items = basic_items()
    arts, members = split_items(items)
    del arts[1]["name"]
    assert_fail(verify(make((arts, members))), 3, "name")


# --------------------------------------------------------------------------- truncation

@pytest.fixture
def ustar_kit(make):
    rng = random.Random(11)
    items = sort_items(basic_items() + [file_item("dir/d.bin", rng.randbytes(20000)),
                                        file_item("zz.txt", b"last\n")])
    kit = make(items, format=tarfile.USTAR_FORMAT)
    with tarfile.open(kit) as tf:
        ti = tf.getmember("dir/d.bin")
    return kit, ti


def test_truncated_inside_header(ustar_kit, verify):
    kit, ti = ustar_kit
    kit.write_bytes(kit.read_bytes()[:ti.offset + 100])
    assert_fail(verify(kit), 3, "truncated")


def test_truncated_inside_data(ustar_kit, verify):
    kit, ti = ustar_kit
    kit.write_bytes(kit.read_bytes()[:ti.offset_data + 10000])
    assert_fail(verify(kit), 3, "truncated")


def test_truncated_inside_manifest(ustar_kit, verify):
    kit, _ = ustar_kit
    kit.write_bytes(kit.read_bytes()[:512 + 100])
    assert_fail(verify(kit), 3, "truncated")


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_truncated_compressed_stream(make, verify, compress):
    rng = random.Random(12)
    items = sort_items(basic_items() + [file_item("dir/r.bin", rng.randbytes(256 * 1024))])
    kit = make(items, compress)
    data = kit.read_bytes()
    kit.write_bytes(data[:len(data) * 6 // 10])
    assert_fail(verify(kit), 3)


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_corrupted_compressed_stream(make, verify, compress):
    rng = random.Random(13)
    items = sort_items(basic_items() + [file_item("dir/r.bin", rng.randbytes(256 * 1024))])
    kit = make(items, compress)
    data = bytearray(kit.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 16):
        data[i] ^= 0x5A
    kit.write_bytes(bytes(data))
    assert_fail(verify(kit), (3, 4))


def test_trailing_garbage(make, verify):
    kit = make(basic_items(), trailer=b"A" * 1024)
    assert_fail(verify(kit), 3, "trailing")


def test_trailing_garbage_after_gzip_tar(make, verify):
    kit = make(basic_items(), "gzip", trailer=b"A" * 1024)
    assert_fail(verify(kit), 3, "trailing")


def test_gzip_stream_with_garbage_after_it(make, verify):
    kit = make(basic_items(), "gzip")
    kit.write_bytes(kit.read_bytes() + b"garbage after the gzip member" * 10)
    assert_fail(verify(kit), 3)


def test_json_comment_hiding_deep_nesting(make_raw_manifest, verify):
    """yajl's tree parser accepts comments; a quote inside one must not blind
    the depth and NUL checks (this crashed verify before the fix)."""
    text = b'{"a": /* " */ ' + b"[" * 200000 + b"]" * 200000 + b"}"
    assert_fail(verify(make_raw_manifest(text)), 3, "manifest", ("comment", "nested"))


def test_json_line_comment_refused(make_raw_manifest, verify):
    arts, members = split_items(basic_items())
    mbytes = dump_manifest(make_manifest(arts)).replace(b"{", b"{ // hello\n", 1)
    assert_fail(verify(make_raw_manifest(mbytes, members)), 3, "comment")


def test_zstd_skippable_frame_after_kit(make, verify):
    kit = make(basic_items(), "zstd")
    frame = bytes([0x50, 0x2A, 0x4D, 0x18]) + (16).to_bytes(4, "little") + b"hidden payload!!"
    kit.write_bytes(kit.read_bytes() + frame)
    assert_fail(verify(kit), 3, "trailing")


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_decompression_bomb_refused(make, verify, compress):
    """Zero blocks after the end marker are tar padding, and compress to almost nothing:
    256 MiB of them inside a compressed kit of a few hundred KiB.  The stream is bounded
    by what the signed manifest accounts for, and refused past it, not expanded."""
    kit = make(basic_items(), compress, trailer=b"\0" * (256 << 20))
    assert kit.stat().st_size < (4 << 20)
    assert_fail(verify(kit), 3, "decompression bomb")


@pytest.mark.parametrize("compress", ["gzip", "zstd"])
def test_modest_zero_padding_in_compressed_stream_accepted(make, verify, compress):
    """The bound leaves room for ordinary padding (GNU tar pads to 10 KiB records)."""
    kit = make(basic_items(), compress, trailer=b"\0" * (64 << 10))
    assert_ok(verify(kit))
