"""Store mode's follow=URL,interval=S (docs/mirrors.md, "Following a published kit"): the
daemon polls a kit published on nginx with conditional requests, imports and activates
each newer one, and the store's ratchet refuses an older one (ESTALE in the journal,
current unchanged).  Real nginx on 127.0.0.1; nginx's access log is the oracle for the
conditional requests (304s).  Every wait is bounded; no skips.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import kitlib
import serverlib
import storelib

NOW = "now=2025-01-16T00:00:00Z"


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def current(mnt: Path) -> str | None:
    try:
        return os.readlink(mnt / "current").split("/", 1)[1]
    except OSError:
        return None


def publish(kit: Path, root: Path):
    """Replace root/kit.tar as a publisher would: a new file renamed into place."""
    tmp = root / ".kit.tar.new"
    shutil.copy(kit, tmp)
    os.rename(tmp, root / "kit.tar")


def test_follow_imports_newer_refuses_older(tmp_path, mounter, keys):
    key = keys["ed25519"]
    kits = {}
    for v, seq in (("v1", 10), ("v2", 20), ("v0", 5)):
        src = storelib.write_tree(tmp_path / f"src-{v}", {"feeds/version.txt": f"{v}\n".encode(),
                                                           "feeds/data.bin": os.urandom(200000)})
        kits[v] = storelib.pack_kit(src, tmp_path / f"{v}.tar", key, v, seq)
    root = tmp_path / "pub"
    root.mkdir(mode=0o755)
    publish(kits["v1"], root)
    store = tmp_path / "store"
    store.mkdir()
    with serverlib.Nginx(tmp_path / "ng", root=root) as ng:
        url = ng.url("kit.tar")
        m = mounter.mount(store, key.pub, NOW, f"follow={url}", "interval=1")
        wait_for(lambda: current(m.path) == "v1", 30, "v1 imported and current")
        assert (m.path / "current/feeds/version.txt").read_text() == "v1\n"
        # unchanged: conditional requests answered 304, nothing imported again
        wait_for(lambda: any(e.status == 304 for e in ng.log()), 15, "a 304 from nginx")
        st = m.status()
        assert st["follow"]["url"] == url and st["follow"]["lastPoll"]
        # a newer kit: imported and made current
        publish(kits["v2"], root)
        wait_for(lambda: current(m.path) == "v2", 30, "v2 imported and current")
        assert (m.path / "current/feeds/version.txt").read_text() == "v2\n"
        # an older one: refused by the ratchet, ESTALE in the journal, current stays
        publish(kits["v0"], root)
        wait_for(lambda: "ESTALE" in (m.path / "control").read_text() or
                 "Stale" in (m.path / "control").read_text(), 30, "the refusal in the journal")
        journal = (m.path / "control").read_text()
        line = [l for l in journal.splitlines() if "follow" in l][-1]
        assert "ESTALE" in line or "Stale" in line, journal
        assert current(m.path) == "v2"
        assert sorted(os.listdir(m.path / "snapshots")) == ["v1", "v2"]
        # refused once, not fetched again and again: the validator is remembered
        n = len([e for e in ng.log() if e.status == 200 or e.status == 206])
        time.sleep(3)
        assert len([e for e in ng.log() if e.status == 200 or e.status == 206]) == n


def test_follow_is_store_mode_only(mounter, keys, tmp_path):
    kit = tmp_path / "k.tar"
    kit.write_bytes(b"x")
    cp, _ = mounter.try_mount(kit, keys["ed25519"].pub, "follow=http://127.0.0.1:9/kit.tar")
    assert cp.returncode == 2 and "follow=" in cp.stderr and len(cp.stderr.strip().splitlines()) == 1


def test_sigterm_during_hanging_import_unmounts(tmp_path, mounter, keys):
    """systemctl stop while follow= imports from a mirror that hangs mid-import: the
    daemon unmounts before it waits for the import, so the mountpoint is gone (a plain
    directory again, not "Transport endpoint is not connected") within a bound, and the
    import's transfers are cancelled, so the daemon ends before its exit guard
    (fs/main.c, 5 s) would have to cut it short."""
    import errno
    import signal
    import subprocess
    key = keys["ed25519"]
    src = storelib.write_tree(tmp_path / "src", {"feeds/data.bin": os.urandom(3 << 20)})
    kit = storelib.pack_kit(src, tmp_path / "v1.tar", key, "v1", 10)
    store = tmp_path / "store"
    store.mkdir()
    # the probe is answered, every request of the import after it hangs
    with serverlib.FaultServer({"/kit.tar": kit.read_bytes()}) as fs:
        fs.hang = 120.0
        fs.fail_after = 1
        m = mounter.mount(store, key.pub, NOW, f"follow={fs.url('kit.tar')}", "interval=1", "timeout=60")
        wait_for(lambda: fs.count >= 2, 20, "the import asks the mirror for the kit")
        time.sleep(0.5)
        out = subprocess.run(["pgrep", "-f", "-n", f"stellafs.*{m.path}"], capture_output=True,
                             text=True).stdout.split()
        assert out, "the daemon's pid"
        pid = int(out[0])
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)

        def unmounted():
            try:
                os.listdir(m.path)
            except OSError as e:
                assert e.errno != errno.ENOTCONN, "the mountpoint was left to a dead daemon"
                return False
            return not os.path.ismount(m.path)
        wait_for(unmounted, 3, "the mountpoint is unmounted at SIGTERM")
        assert time.monotonic() - t0 < 3
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5 + 5, "the daemon exits")
        took = time.monotonic() - t0
        assert took < 4.5, f"the daemon took {took:.1f} s: the import was not cancelled"
        os.listdir(m.path)  # still a plain directory: no ENOTCONN


def test_stop_waits_for_a_slow_local_import_when_follow_is_set(tmp_path, mounter, keys):
    """Store mode with follow= and incoming=DIR on a slow medium: a stop while the
    incoming import runs waits for it (fs/main.c: the exit guard stands down once
    follow= has stopped; what is left is local), so the kit is imported whole, however
    long past the guard's 5 s it takes; before, the guard cut it short at 5 s and the
    kit was lost with the daemon.

    The slow medium: incoming= is a directory of a stellafs mount of another kit,
    served by a mirror that sends 3 s per MiB (the 16 MiB kit inside takes 10 s or more
    to read through it).  follow= asks a mirror that has nothing (404): it is set,
    that is all it takes."""
    import hashlib
    import signal
    import subprocess
    key = keys["ed25519"]
    inner_src = storelib.write_tree(tmp_path / "inner-src", {"feeds/data.bin": os.urandom(16 << 20),
                                                             "feeds/version.txt": b"v2\n"})
    inner = storelib.pack_kit(inner_src, tmp_path / "v2.tar", key, "v2", 20)
    outer_src = tmp_path / "outer-src"
    (outer_src / "drop").mkdir(parents=True)
    shutil.copy(inner, outer_src / "drop" / "v2.tar")
    outer = storelib.pack_kit(outer_src, tmp_path / "outer.tar", key, "media", 1, kit_id="usb-stick")
    store = tmp_path / "store"
    store.mkdir()
    with serverlib.FaultServer({"/outer.tar": outer.read_bytes()}) as medium, \
            serverlib.FaultServer({}) as feed:
        usb = mounter.mount(medium.url("outer.tar"), key.pub, NOW, "timeout=30")
        drop = usb.path / "current" / "drop"
        assert sorted(os.listdir(drop)) == ["v2.tar"]
        medium.delay_per_mib = 3.0
        m = mounter.mount(store, key.pub, NOW, f"follow={feed.url('kit.tar')}", "interval=1",
                          f"incoming={drop}", "timeout=30")
        out = subprocess.run(["pgrep", "-f", "-n", f"stellafs.*{m.path}"], capture_output=True,
                             text=True).stdout.split()
        assert out, "the daemon's pid"
        pid = int(out[0])

        kit_path = os.path.realpath(drop / "v2.tar")   # current is a symlink

        def importing():
            try:
                return any(os.readlink(f"/proc/{pid}/fd/{fd}") == kit_path
                           for fd in os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                return False
        wait_for(importing, 20, "the incoming import reads the kit")
        time.sleep(0.5)
        assert storelib.db_versions(store) == [], "the import ended before the stop: nothing shown"
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.ismount(m.path), 5, "the mountpoint is unmounted at SIGTERM")
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 90, "the daemon exits once the import is done")
        took = time.monotonic() - t0
        # the import, not the guard, ended the daemon: the kit is in the store, whole
        assert storelib.db_versions(store) == ["v2"], f"the import was cut short after {took:.1f} s"
        assert took > 5, f"the import ended {took:.1f} s after the stop: the guard was not put to the test"
        want = hashlib.sha256((inner_src / "feeds" / "data.bin").read_bytes()).hexdigest()
        assert want in storelib.blobs(store)
