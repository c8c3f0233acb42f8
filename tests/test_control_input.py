"""Black-box tests of what reaches the daemon from outside through the control file, the
incoming directory and the kit paths it is given (docs/mount.md "The control file",
docs/store.md): a reload judges the kit actually served, untrusted names cannot forge
journal lines, an import opens its path as the writer and never into the mount itself,
paths may hold blanks, hostile sizes are refused at their first block, and a socket is
not a kit.

Every mount is unmounted, and its daemon gone, by fixture teardown; every wait is
bounded."""

import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

import kitlib
from kitlib import assert_fail, describe
from storelib import (  # noqa: F401  (fuse_ok, mnt_base, mounts... are fixtures)
    FS, NOBODY, Mounted, as_user, assert_store_unchanged, daemon_pids, db_rows, errname,
    force_abort, fuse_ok, import_ok, is_mounted, mnt_base, mounts, pack_kit, signer,
    store_state, trust, version_tree)

ADMIN_GID = 4242
HELPER = Path(__file__).resolve().parent.parent / "systemd" / "stella-usb-import"


@pytest.fixture(scope="module")
def kits(tmp_path_factory, signer, keys):
    d = tmp_path_factory.mktemp("ci-kits")
    trees = {v: version_tree(d / f"tree-{v}", v) for v in ("v1", "v2", "all")}
    return {
        "v1": pack_kit(trees["v1"], d / "v1.tar", signer, "v1", 1),
        "v2": pack_kit(trees["v2"], d / "v2.tar", signer, "v2", 2),
        "v2zst": pack_kit(trees["v2"], d / "v2.tar.zst", signer, "v2", 2, compress="zstd"),
        "all": pack_kit(trees["all"], d / "all.tar", signer, "all", 3),
        # the same identity as v1, signed by another key
        "v1other": pack_kit(trees["v1"], d / "v1-other.tar", keys["ecdsa2"], "v1", 1),
    }


@pytest.fixture
def store1(tmp_path, kits, trust):
    s = tmp_path / "store"
    import_ok(s, trust, kits["v1"])
    return s


@pytest.fixture
def public_dir():
    """A directory every user can reach (pytest's tmp_path is under a 0700 one)."""
    d = Path(tempfile.mkdtemp(prefix="stella-ci-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def journal_lines(m):
    return [ln for ln in m.control_log().splitlines() if not ln.startswith("#")]


def wait_for(pred, what, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def control_in_thread(m, cmd, timeout=20):
    """m.control(CMD) on a thread: its errno, or pytest.fail when it has not returned
    after TIMEOUT seconds.  A daemon that hangs on a request to itself is killed (that
    aborts its connection; umount -f does not reach a daemon stuck this way), so that
    the thread, and whatever else waits on the mount, ends."""
    got = []
    t = threading.Thread(target=lambda: got.append(m.control(cmd)), daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for pid in m.pids:
            os.kill(pid, signal.SIGKILL)
        force_abort(m.path)
        t.join(10)
        pytest.fail(f"`{cmd}` did not return within {timeout}s: the mount hung")
    return got[0]


# --------------------------------------------------------------------------- 6: reload

def test_direct_reload_judges_the_served_kit_not_the_path(mounts, kits, keys, tmp_path, trust):
    """A reload in direct mode asks the re-read trust store about the kit the mount has
    open and serves.  Another kit (signed by another key) put at SOURCE's path must not
    make a reload vouch for what is still served."""
    kit = tmp_path / "kit.tar"
    shutil.copyfile(kits["v1"], kit)
    tdir = tmp_path / "trust"
    tdir.mkdir()
    shutil.copyfile(keys["ed25519"].pub, tdir / "signer.pub")
    mnt = mounts.new_mountpoint()
    m = mounts.mount(kit, tdir, f"cache={tmp_path / 'cache'}", mnt=mnt)
    assert m.health() == "HEALTHY"
    served = (m / "current/feeds/db.json").read_bytes()

    # the path now names a kit signed by ecdsa2; the trust store trusts only ecdsa2
    shutil.copyfile(kits["v1other"], tmp_path / "new.tar")
    os.rename(tmp_path / "new.tar", kit)
    (tdir / "signer.pub").unlink()
    shutil.copyfile(keys["ecdsa2"].pub, tdir / "other.pub")
    r = m.control("reload")
    assert r == errno.EKEYREJECTED, \
        f"reload vouched for a kit it does not serve: {errname(r)}, want EKEYREJECTED\n" \
        f"{m.control_log()[-800:]}"
    assert "EKEYREJECTED" in m.log_line("reload")
    assert m.health() != "HEALTHY", "the served kit's signer is no longer trusted"
    assert (m / "current/feeds/db.json").read_bytes() == served

    # trusting the served kit's key again: reload says so
    shutil.copyfile(keys["ed25519"].pub, tdir / "signer.pub")
    m.control_ok("reload")
    assert "1 trusted signature" in m.log_line("reload")


# --------------------------------------------------------------------------- 7: journal

FORGED = "2026-01-01T00:00:00Z uid=0 activate v9 -> ok"


def test_incoming_name_cannot_forge_journal_lines(mounts, store1, tmp_path, trust):
    """A file dropped into incoming/ whose name holds a newline is journalled (and its
    .reason written) on one line, the newline escaped: no forged `uid=0 ... -> ok`."""
    inc = tmp_path / "incoming"
    inc.mkdir()
    m = mounts.mount(store1, trust, f"incoming={inc}")
    name = f"x\n{FORGED}\n.tar"
    (tmp_path / "staged").write_bytes(b"not a kit, just some bytes\n" * 40)
    os.rename(tmp_path / "staged", inc / name)
    q = store1 / "quarantine"
    wait_for(lambda: (q / f"{name}.reason").exists(), "the bad kit to be quarantined")
    lines = journal_lines(m)
    assert not any(ln.startswith(FORGED) for ln in lines), \
        f"a file name forged a journal line:\n" + "\n".join(lines)
    hits = [ln for ln in lines if "(incoming)" in ln]
    assert len(hits) == 1 and "x\\n" in hits[0], lines
    assert re.match(r"^\S+ uid=0 import .* -> EBADMSG: ", hits[0]), hits[0]
    reason = (q / f"{name}.reason").read_text()
    assert reason.count("\n") == 1 and reason.endswith("\n"), repr(reason)
    # the store's journal table holds the same escaped line
    rows = [r[0] for r in db_rows(store1, "select command from journal")]
    assert not any("\n" in r for r in rows), rows


# --------------------------------------------------------------------------- 8: deputy

def test_import_opens_the_path_as_the_writer(mounts, store1, kits, public_dir, trust):
    """A member of admin_gid may import what it can read, and nothing else: a kit in a
    directory it cannot search, or one it cannot read, is refused with EACCES, the same
    whether or not the file exists (the journal is world-readable)."""
    m = mounts.mount(store1, trust, f"admin_gid={ADMIN_GID}")
    secret = public_dir / "secret"
    secret.mkdir(mode=0o700)
    shutil.copyfile(kits["v2"], secret / "v2.tar")
    unreadable = public_dir / "v2-root-only.tar"
    shutil.copyfile(kits["v2"], unreadable)
    os.chmod(unreadable, 0o600)
    before = store_state(store1)

    for p in (secret / "v2.tar", secret / "nosuch.tar", unreadable):
        cp = as_user(f"echo 'import {p}' > {m / 'control'}", groups=[ADMIN_GID])
        assert cp.returncode != 0, f"import {p} as uid {NOBODY} succeeded\n" + describe(cp)
        line = m.log_line(f"import {p}")
        assert f"uid={NOBODY}" in line and "EACCES" in line, line
    assert_store_unchanged(store1, before, "by imports the writer could not read")

    readable = public_dir / "v2.tar"
    shutil.copyfile(kits["v2"], readable)
    os.chmod(readable, 0o644)
    cp = as_user(f"echo 'import {readable}' > {m / 'control'}", groups=[ADMIN_GID])
    assert cp.returncode == 0, describe(cp) + m.control_log()[-800:]
    assert m.snapshots() == ["v1", "v2"]
    # root, the writer, still imports from anywhere
    shutil.copyfile(kits["all"], secret / "all.tar")
    m.control_ok(f"import {secret / 'all.tar'}")
    assert m.snapshots() == ["all", "v1", "v2"]


# --------------------------------------------------------------------------- 9: blanks

def test_import_path_with_blanks(mounts, store1, kits, public_dir, trust):
    """`import` takes the rest of the line as its path: a copier's `kit-v1 (1).tar`."""
    m = mounts.mount(store1, trust)
    p = public_dir / "kit-v2 (1).tar"
    shutil.copyfile(kits["v2"], p)
    m.control_ok(f"import {p}")
    assert m.snapshots() == ["v1", "v2"]
    assert f"{p}: imported as v2" in m.log_line(f"import {p}")


def test_usb_helper_imports_a_name_with_blanks_through_control(mounts, store1, kits,
                                                              public_dir, tmp_path, trust):
    """The USB helper imports through control when the store is mounted: a kit named
    `kit-v2 (1).tar` on the media is imported, not refused."""
    m = mounts.mount(store1, trust)
    media = public_dir / "media"
    media.mkdir()
    shutil.copyfile(kits["v2"], media / "kit-v2 (1).tar")
    env = dict(os.environ, STELLAKIT=str(kitlib.BIN))
    cp = subprocess.run([str(HELPER), "-s", str(store1), "-t", str(trust),
                         "-m", str(m.path), str(media)], capture_output=True, text=True,
                        env=env, timeout=120)
    assert cp.returncode == 0, describe(cp) + m.control_log()[-800:]
    assert "control" in cp.stderr, describe(cp)
    assert m.snapshots() == ["v1", "v2"]
    assert "kit-v2 (1).tar: imported as v2" in m.control_log()


def test_usb_helper_names_cannot_forge_log_records_or_results(mounts, store1, kits,
                                                             public_dir, tmp_path, trust):
    """A kit's file name on the stick is the stick's author's text: a newline in it must
    not start a log record of its own (with a <N> priority of its choosing), and a
    ` -> ` in it must not be taken for the journal's result separator."""
    m = mounts.mount(store1, trust)
    env = dict(os.environ, STELLAKIT=str(kitlib.BIN))
    media = public_dir / "media-arrow"
    media.mkdir()
    shutil.copyfile(kits["v2"], media / "kit -> EBADMSG.tar")
    cp = subprocess.run([str(HELPER), "-s", str(store1), "-t", str(trust),
                         "-m", str(m.path), str(media)], capture_output=True, text=True,
                        env=env, timeout=120)
    assert cp.returncode == 0, describe(cp) + m.control_log()[-800:]
    assert m.snapshots() == ["v1", "v2"]
    media = public_dir / "media-newline"
    media.mkdir()
    shutil.copyfile(kits["v2"], media / "kit\n<0>forged record.tar")
    cp = subprocess.run([str(HELPER), "-s", str(store1), "-t", str(trust),
                         "-m", str(m.path), str(media)], capture_output=True, text=True,
                        env=env, timeout=120)
    lines = cp.stderr.splitlines()
    assert cp.returncode == 2, describe(cp)
    assert lines and all(re.match(r"^<[0-7]>stella-usb-import: ", ln) for ln in lines), describe(cp)
    assert not any(ln.startswith("<0>forged") for ln in lines), describe(cp)
    assert any("name holds control characters" in ln for ln in lines), describe(cp)
    assert m.snapshots() == ["v1", "v2"]


# --------------------------------------------------------------------------- 10: -s

def mount_single_threaded(mounts, store, trust, mnt=None):
    mnt = mnt or mounts.new_mountpoint()
    cp = subprocess.run([str(FS), "-s", "-o", f"trust={trust}", str(store), str(mnt)],
                        capture_output=True, text=True, timeout=60)
    pids = daemon_pids(mnt)
    m = Mounted(mounts, store, mnt, ("-s",), pids)
    if cp.returncode == 0 or pids or is_mounted(mnt):
        mounts.active.append(m)
    assert cp.returncode == 0 and is_mounted(mnt), describe(cp)
    return m


def test_single_threaded_import_through_links_into_the_mount(mounts, store1, public_dir, trust):
    """With -s the thread running a command is the only one serving requests: a kit
    reached through a symbolic link into the mount, or through /proc/self/root, must be
    refused (EINVAL) before any lookup inside the mount, not hang the mount."""
    m = mount_single_threaded(mounts, store1, trust)
    link = public_dir / "link.tar"
    os.symlink(m.path / "current" / "feeds" / "db.json", link)
    dirlink = public_dir / "mnt"
    os.symlink(m.path, dirlink)
    for p in (link, dirlink / "current/feeds/db.json",
              f"/proc/self/root{m.path}/current/feeds/db.json"):
        r = control_in_thread(m, f"import {p}")
        assert r == errno.EINVAL, f"import {p}: {errname(r)}, want EINVAL"
        assert "inside this mount" in m.log_line(f"import {p}")
    m.control_ok("verify all")     # the mount still answers


def test_single_threaded_import_after_the_mount_point_moved(mounts, store1, trust):
    """The daemon tells its own mount by device, read once when it mounted: looked up by
    the mount point's name at each import, a rename of a directory above the mount point
    lost it, the check was skipped, and `-s` hung on a path through the mount."""
    outer = mounts.new_mountpoint()
    (outer / "inner").mkdir()
    m = mount_single_threaded(mounts, store1, trust, outer / "inner")
    pids = m.pids
    moved = outer.with_name(outer.name + "-moved")
    os.rename(outer, moved)
    try:
        there = Mounted(mounts, store1, moved / "inner", ("-s",), pids)
        p = moved / "inner" / "current" / "feeds" / "db.json"
        r = control_in_thread(there, f"import {p}")
        assert r == errno.EINVAL, f"import {p}: {errname(r)}, want EINVAL"
        there.control_ok("verify all")     # the mount still answers
    finally:
        os.rename(moved, outer)


# --------------------------------------------------------------------------- 11: sizes

def sparse_zeros(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_sparse_zeros_refused_at_the_first_block(tmp_path, keys, trust):
    """A sparse file of zeros says "no manifest" in its first block: refused at once,
    not read to its end (1 TiB here: minutes if read)."""
    kit = sparse_zeros(tmp_path / "zeros.tar", 1 << 40)
    t = time.monotonic()
    cp = kitlib.run("verify", "-t", keys["ed25519"].pub, kit, timeout=30)
    assert_fail(cp, 3, "zeros")
    assert time.monotonic() - t < 10


def test_valid_kit_with_appended_sparse_zeros_refused_at_once(tmp_path, kits, keys, trust):
    """An uncompressed kit file far longer than its manifest accounts for is refused
    once the manifest is read, not after reading the padding."""
    kit = tmp_path / "padded.tar"
    shutil.copyfile(kits["v2"], kit)
    with open(kit, "r+b") as f:
        f.truncate(kit.stat().st_size + (1 << 40))
    cp = kitlib.run("verify", "-t", keys["ed25519"].pub, kit, timeout=30)
    assert_fail(cp, 3, "accounts for")


def test_compressed_zeros_refused_at_the_first_block(tmp_path, keys, trust):
    raw = b"\0" * (8 << 20)
    kit = tmp_path / "zeros.tar.zst"
    kit.write_bytes(kitlib.compress_bytes(raw, "zstd"))
    cp = kitlib.run("verify", "-t", keys["ed25519"].pub, kit, timeout=30)
    assert_fail(cp, 3, "zeros")


def test_sparse_zeros_do_not_hold_the_command_lock(mounts, store1, tmp_path, public_dir, trust):
    """Control import and incoming/ refuse a sparse file of zeros at once; the control
    file answers meanwhile."""
    inc = tmp_path / "incoming"
    inc.mkdir()
    m = mounts.mount(store1, trust, f"incoming={inc}")
    z = sparse_zeros(public_dir / "zeros.tar", 1 << 40)
    t = time.monotonic()
    r = control_in_thread(m, f"import {z}", timeout=30)
    assert r == errno.EBADMSG, errname(r)
    assert time.monotonic() - t < 10
    sparse_zeros(tmp_path / "z.tar", 1 << 40)
    os.rename(tmp_path / "z.tar", inc / "z.tar")
    wait_for(lambda: (store1 / "quarantine" / "z.tar.reason").exists(),
             "the zeros to be quarantined", timeout=15)
    assert "zeros" in (store1 / "quarantine" / "z.tar.reason").read_text()
    m.control_ok("verify all")


def test_mount_of_sparse_zeros_refused_at_once(mounts, tmp_path, keys, trust):
    kit = sparse_zeros(tmp_path / "zeros.tar", 1 << 40)
    mnt = mounts.new_mountpoint()
    cp = mounts.run_mount(kit, mnt, keys["ed25519"].pub, f"cache={tmp_path / 'c'}",
                          timeout=30)
    kitlib._assert_refusal(cp, "stellafs", 3, ("zeros",))
    assert not is_mounted(mnt)


# --------------------------------------------------------------------------- 14: socket

def test_socket_is_not_a_kit(mounts, store1, kits, tmp_path, public_dir, trust):
    """A socket where a kit is expected is refused as a usage error (exit 2, EINVAL), as
    a FIFO is, not as a runtime failure."""
    sock_path = public_dir / "kit.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    try:
        cp = kitlib.run("verify", "-t", trust, sock_path, timeout=30)
        assert_fail(cp, 2, "socket")
        cp = kitlib.run("import", "-s", store1, "-t", trust, sock_path,
                        timeout=30)
        assert_fail(cp, 2, "socket")
        mnt = mounts.new_mountpoint()
        cp = mounts.run_mount(sock_path, mnt, trust,
                              f"cache={tmp_path / 'c'}", timeout=30)
        kitlib._assert_refusal(cp, "stellafs", 2, ("socket",))
        m = mounts.mount(store1, trust)
        r = m.control(f"import {sock_path}")
        assert r == errno.EINVAL, errname(r)
        assert "socket" in m.log_line(f"import {sock_path}")
    finally:
        s.close()


# --------------------------------------------------------------------------- verify all

def test_verify_all_and_a_snapshot_named_all(mounts, store1, kits, trust):
    """`verify all` checks every snapshot; `verify -- all` checks the one named all."""
    import_ok(store1, trust, kits["all"])
    m = mounts.mount(store1, trust)
    m.control_ok("verify all")
    line = m.log_line("verify all")
    assert "v1:" in line and "all:" in line, line
    m.control_ok("verify -- all")
    line = m.log_line("verify -- all")
    assert "all:" in line and "v1:" not in line, line
    m.control_ok("verify -- v1")
    assert "v1:" in m.log_line("verify -- v1")
    r = m.control("verify --")
    assert r == errno.EINVAL, errname(r)
