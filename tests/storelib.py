"""Helpers for the black-box tests of stellafs' store mode (stellafs(8): THE MOUNTED TREE,
"The control file", "Programs"; docs/store.md).

Builds on kitlib (keys, pack(), kit assembly); adds: self-checking versioned files,
packing with an explicit identity, `stellakit import`, a store's observable state
(file listing + store.db rows), and a mount manager that always unmounts and kills
the daemons it started.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

import kitlib
from kitlib import CREATED_EPOCH, EXPIRES_FAR, assert_ok, describe

FS = Path(os.environ.get("STELLAFS") or (kitlib.REPO / "build" / "fs" / "stellafs"))
SK = kitlib.BIN
KIT_ID = "store-kit"
BLOCK = 4096
NOBODY = 65534


# --------------------------------------------------------------------------- content

_VCACHE: dict = {}


def versioned_bytes(version: str, name: str, size: int) -> bytes:
    """Self-checking content: a first line naming VERSION and NAME, then a SHA-256 chain
    seeded by that line, so every 32-byte chunk depends on the version."""
    key = (version, name, size)
    if key not in _VCACHE:
        head = f"stella-check version={version} file={name}\n".encode()
        assert len(head) <= size, (head, size)
        need = size - len(head)
        out = bytearray(head)
        h = hashlib.sha256(head).digest()
        while len(out) < size:
            out += h
            h = hashlib.sha256(h).digest()
        _VCACHE[key] = bytes(out[:size])
    return _VCACHE[key]


_HEAD = re.compile(rb"stella-check version=([^ \n]+) file=([^\n]+)\n")


def check_versioned(data: bytes, name: str, size: int, versions) -> str | None:
    """The version DATA states when it is exactly versioned_bytes(version, NAME, SIZE) for
    one of VERSIONS; None when it is torn (head and body disagree, wrong length...)."""
    m = _HEAD.match(data)
    if not m:
        return None
    v = m.group(1).decode()
    if v not in versions or m.group(2).decode() != name or len(data) != size:
        return None
    return v if data == versioned_bytes(v, name, size) else None


def write_tree(root, files: dict, links: dict | None = None) -> Path:
    """Make a source tree: FILES maps name -> bytes (mode 0644), LINKS name -> target."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, 0o644)
    for name, target in (links or {}).items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, p)
    return root


def tree_files(root) -> dict:
    """{relpath: ("file", bytes, mode) | ("symlink", target)} of a tree (directories
    are left out: they are implied)."""
    root = Path(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            if os.path.islink(p):
                out[rel] = ("symlink", os.readlink(p))
            elif p.is_file():
                out[rel] = ("file", p.read_bytes(), os.lstat(p).st_mode & 0o7777)
    return out


def assert_same_tree(got_root, want_root):
    got, want = tree_files(got_root), tree_files(want_root)
    assert sorted(got) == sorted(want), \
        f"names differ under {got_root}: extra {sorted(set(got) - set(want))}, " \
        f"missing {sorted(set(want) - set(got))}"
    for k in want:
        if got[k] != want[k]:
            g, w = got[k], want[k]
            if g[0] == "file" and w[0] == "file":
                raise AssertionError(
                    f"{got_root}/{k}: content or mode differs from the source: got "
                    f"{len(g[1])} bytes sha256 {hashlib.sha256(g[1]).hexdigest()[:16]} "
                    f"mode {oct(g[2])}, want {len(w[1])} bytes sha256 "
                    f"{hashlib.sha256(w[1]).hexdigest()[:16]} mode {oct(w[2])}")
            raise AssertionError(f"{got_root}/{k}: got {g!r}, want {w!r}")


# --------------------------------------------------------------------------- stellakit

def pack_kit(src, out, key, version, sequence, *extra, kit_id=KIT_ID,
             expires=EXPIRES_FAR, sde=CREATED_EPOCH, base=None, compress="none"):
    """`stellakit pack` with an explicit identity; fails the test when packing fails."""
    args = ["--kit-id", kit_id, "--version", version, "--sequence", str(sequence),
            "--channel", "stable", "--expires-at", expires]
    if base is not None:
        args += ["--base", base]
    cp = kitlib.pack(src, out, [key], *args, *extra, compress=compress, sde=sde,
                     identity=False)
    assert cp.returncode == 0, "stellakit pack failed\n" + describe(cp)
    return Path(out)


def import_kit(store, trust, kit, *extra, timeout=120):
    return kitlib.run("import", "-s", store, "-t", trust, *extra, kit, timeout=timeout)


def import_ok(store, trust, kit, *extra):
    cp = assert_ok(import_kit(store, trust, kit, *extra))
    assert re.search(r"imported .* as snapshot ", cp.stdout), \
        "stdout should say 'imported ... as snapshot V'\n" + describe(cp)
    return cp


# --------------------------------------------------------------------------- store state

_SQLITE_SIDE = ("store.db-wal", "store.db-shm", "store.db-journal")


def store_listing(store) -> list:
    """Sorted relative paths under STORE (what `ls -R` shows), without SQLite's
    transient side files."""
    store = Path(store)
    out = []
    for dirpath, dirnames, filenames in os.walk(store):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = p.relative_to(store).as_posix()
            if rel in _SQLITE_SIDE:
                continue
            out.append(rel + ("/" if p.is_dir() and not p.is_symlink() else ""))
    return sorted(out)


def db_rows(store, sql):
    con = sqlite3.connect(str(Path(store) / "store.db"), timeout=30)
    try:
        return [tuple(r) for r in con.execute(sql).fetchall()]
    finally:
        con.close()


def db_tables(store, tables=("snapshot", "pointer", "ratchet")) -> dict:
    return {t: sorted(db_rows(store, f"select * from {t}")) for t in tables}


def store_state(store) -> dict:
    """Everything that must stay the same when an import or command fails."""
    return {"listing": store_listing(store), **db_tables(store)}


def db_versions(store) -> list:
    return sorted(r[0] for r in db_rows(store, "select version from snapshot"))


def db_pointer(store, name="current"):
    r = db_rows(store, f"select version from pointer where name = '{name}'")
    return r[0][0] if r else None


def blobs(store) -> set:
    """{sha256 hex} of the blob files under STORE/blobs/ab/..."""
    out = set()
    root = Path(store) / "blobs"
    if root.is_dir():
        for d in root.iterdir():
            for f in d.iterdir():
                out.add(f.name)
    return out


def blob_path(store, sha) -> Path:
    return Path(store) / "blobs" / sha[:2] / sha


def diff_state(before, after) -> str:
    lines = []
    for k in before:
        if before[k] != after.get(k):
            if k == "listing":
                lines.append(f"listing: added {sorted(set(after[k]) - set(before[k]))}, "
                             f"removed {sorted(set(before[k]) - set(after[k]))}")
            else:
                lines.append(f"{k}: before {before[k]!r}, after {after.get(k)!r}")
    return "\n".join(lines)


def assert_store_unchanged(store, before, what=""):
    after = store_state(store)
    assert after == before, f"the store changed {what}\n" + diff_state(before, after)


# --------------------------------------------------------------------------- mounting

def drop_caches():
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def is_mounted(mnt) -> bool:
    mnt = os.path.realpath(mnt)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if line.split()[4].replace("\\040", " ") == mnt:
                return True
    return False


def daemon_pids(mnt, prog=None) -> list:
    """Pids of PROG (default stellafs) processes whose last argument is MNT (the ones we
    started)."""
    mnt = str(mnt)
    name = Path(prog).name if prog else FS.name
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in argv if a]
        if argv and os.path.basename(argv[0]) == name and argv[-1] == mnt:
            out.append(int(p.name))
    return out


def pid_alive(pid) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return st.rsplit(")", 1)[1].split()[0] != "Z"


class Mounted:
    """One stellafs mount of a store."""

    def __init__(self, manager, store, path, opts, pids):
        self.manager = manager
        self.store = Path(store)
        self.path = Path(path)
        self.opts = opts
        self.pids = pids

    def __truediv__(self, other):
        return self.path / other

    @property
    def pid(self):
        assert len(self.pids) == 1, f"expected one stellafs daemon for {self.path}: {self.pids}"
        return self.pids[0]

    # control ---------------------------------------------------------------
    def control(self, cmd: str) -> int:
        """Write CMD as one line to control (open, write, close): 0 or the errno."""
        try:
            fd = os.open(self.path / "control", os.O_WRONLY)
        except OSError as e:
            return e.errno
        try:
            try:
                n = os.write(fd, (cmd + "\n").encode())
                assert n == len(cmd) + 1, f"short write to control: {n}"
            except OSError as e:
                return e.errno
        finally:
            try:
                os.close(fd)
            except OSError as e:  # an error reported at close counts too
                return e.errno
        return 0

    def control_ok(self, cmd):
        r = self.control(cmd)
        assert r == 0, f"`{cmd}` failed with {errno.errorcode.get(r, r)}\n" \
                       f"control log:\n{self.control_log()[-1500:]}"

    def control_log(self) -> str:
        return (self.path / "control").read_text(errors="replace")

    def log_line(self, cmd: str) -> str:
        """The last line of the control log for command CMD."""
        hits = [ln for ln in self.control_log().splitlines()
                if not ln.startswith("#") and (f" {cmd} ->" in ln)]
        assert hits, f"control log has no line for {cmd!r}:\n{self.control_log()[-1500:]}"
        return hits[-1]

    # views -----------------------------------------------------------------
    def current(self) -> str:
        return os.readlink(self.path / "current")

    def status(self) -> dict:
        return json.loads((self.path / "status.json").read_text())

    def health(self) -> str:
        return (self.path / "health").read_text().splitlines()[0].strip()

    def metric(self, name) -> float:
        for ln in (self.path / "metrics").read_text().splitlines():
            if ln.startswith(name + " ") or ln.startswith(name + "{"):
                return float(ln.rsplit(None, 1)[1])
        raise AssertionError(f"metrics has no {name}")

    def snapshots(self) -> list:
        return sorted(os.listdir(self.path / "snapshots"))

    def umount(self):
        self.manager.umount(self)


class MountManager:
    """Mounts stores and guarantees they are unmounted and their daemons gone."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.active: list[Mounted] = []
        self.aborted = None
        self._timer = None

    # watchdog: a hung daemon must fail the test, not hang the run ----------------
    def arm(self, seconds):
        """(Re)start the watchdog: after SECONDS, every active mount is force-unmounted
        (umount -f aborts the FUSE connection, so blocked syscalls return ENOTCONN)."""
        self.disarm()
        self._timer = threading.Timer(seconds, self._fire, args=(seconds,))
        self._timer.daemon = True
        self._timer.start()

    def disarm(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self, seconds):
        stacks = {}
        for m in list(self.active):
            stacks[str(m.path)] = daemon_stacks(m.pids)
        self.aborted = (f"the test was still running after {seconds}s; mounts force-aborted "
                        f"(umount -f). Daemon kernel stacks: {stacks}")
        for m in list(self.active):
            force_abort(m.path)

    def new_mountpoint(self) -> Path:
        p = Path(tempfile.mkdtemp(prefix="m", dir=self.base))
        os.chmod(p, 0o755)
        return p

    def run_mount(self, store, mnt, trust, *opts, timeout=60):
        o = ",".join([f"trust={trust}"] + list(opts))
        return subprocess.run([str(FS), "-o", o, str(store), str(mnt)], capture_output=True,
                              text=True, errors="replace", timeout=timeout)

    def mount(self, store, trust, *opts, mnt=None) -> Mounted:
        mnt = Path(mnt) if mnt is not None else self.new_mountpoint()
        cp = self.run_mount(store, mnt, trust, *opts)
        pids = daemon_pids(mnt)
        m = Mounted(self, store, mnt, opts, pids)
        if cp.returncode == 0 or pids or is_mounted(mnt):
            self.active.append(m)
        assert cp.returncode == 0, f"stellafs failed to mount {store} on {mnt}\n" + describe(cp)
        assert is_mounted(mnt), f"stellafs exited 0 but {mnt} is not mounted\n" + describe(cp)
        assert len(pids) == 1, f"expected one stellafs daemon serving {mnt}, found {pids}"
        return m

    def umount(self, m: Mounted, timeout=5):
        errs = []
        if is_mounted(m.path):
            deadline = time.time() + timeout
            while True:
                cp = subprocess.run(["umount", str(m.path)], capture_output=True, text=True,
                                    timeout=60)
                if cp.returncode == 0 or not is_mounted(m.path):
                    break
                if time.time() > deadline:
                    errs.append(f"umount {m.path}: {cp.stderr.strip()}; forced")
                    force_abort(m.path)
                    break
                time.sleep(0.2)
        for pid in m.pids:
            deadline = time.time() + 10
            while pid_alive(pid) and time.time() < deadline:
                time.sleep(0.05)
            if pid_alive(pid):
                errs.append(f"stellafs pid {pid} still running after unmount; killed")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if m in self.active:
            self.active.remove(m)
        return errs

    def cleanup(self):
        errs = []
        for m in list(self.active):
            errs += self.umount(m)
        return errs


def daemon_stacks(pids) -> dict:
    """{tid: first kernel frame} of the daemon threads (shows where a hang sits)."""
    out = {}
    for pid in pids:
        for t in Path(f"/proc/{pid}/task").glob("*"):
            try:
                st = (t / "stack").read_text().split("\n")[0]
            except OSError:
                st = "?"
            out[t.name] = re.sub(r"^\[<[0-9a-fx]+>\] ", "", st)
    return out


def force_abort(mnt):
    """Abort a (possibly hung) FUSE mount: umount -f aborts the connection, then detach."""
    subprocess.run(["umount", "-f", str(mnt)], capture_output=True, timeout=60)
    if is_mounted(mnt):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=60)


def kill_daemon(m: Mounted):
    """SIGKILL the daemon of M and detach the dead mount."""
    pid = m.pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while pid_alive(pid) and time.time() < deadline:
        time.sleep(0.02)
    assert not pid_alive(pid)
    subprocess.run(["umount", str(m.path)], capture_output=True)
    if is_mounted(m.path):
        subprocess.run(["umount", "-l", str(m.path)], capture_output=True)
    assert not is_mounted(m.path)
    if m in m.manager.active:
        m.manager.active.remove(m)


def as_user(cmd, uid=NOBODY, gid=NOBODY, groups=None, timeout=60):
    """Run the shell command CMD as UID/GID (setpriv), supplementary GROUPS or none."""
    g = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", *g,
                           "sh", "-c", cmd], capture_output=True, text=True,
                          errors="replace", timeout=timeout)


def fuse_usable() -> str | None:
    """None when FUSE can be used here, else the reason."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
        os.close(fd)
    except OSError as e:
        return f"cannot open /dev/fuse: {e}"
    if not (FS.is_file() and os.access(FS, os.X_OK)):
        return f"stellafs binary not found or not executable: {FS} (set STELLAFS=...)"
    if os.geteuid() != 0:
        return "the store tests need root (mounts, drop_caches, setpriv)"
    return None


def errname(e: int) -> str:
    return errno.errorcode.get(e, str(e)) if e else "ok"


# --------------------------------------------------------------------------- sample trees

# name -> size of the self-checking files of every version tree (multi-block sizes)
CHECK_FILES = {"feeds/check/f0": 100, "feeds/check/f1": 3 * BLOCK + 17,
               "feeds/check/f2": 20000, "feeds/check/f3": 70000}
COMMON_BIN = random.Random(42).randbytes(9000)
TOOL_BIN = random.Random(43).randbytes(6000)


def version_files(version, extra=None) -> dict:
    files = {n: versioned_bytes(version, n, s) for n, s in CHECK_FILES.items()}
    files["feeds/db.json"] = json.dumps({"version": version}).encode() + b"\n"
    files["feeds/common.bin"] = COMMON_BIN
    files["tools/tool.bin"] = TOOL_BIN
    files["notes.txt"] = b"notes\n"
    for k, v in (extra or {}).items():
        if v is None:
            files.pop(k, None)
        else:
            files[k] = v
    return files


def version_tree(root, version, extra=None) -> Path:
    """A small tree whose feeds/check/* files and feeds/db.json state VERSION;
    feeds/common.bin, tools/tool.bin and notes.txt are the same in every version (unless
    EXTRA changes them); feeds/latest -> db.json."""
    return write_tree(root, version_files(version, extra), {"feeds/latest": "db.json"})


def file_shas(root) -> set:
    return {hashlib.sha256(d[1]).hexdigest() for d in tree_files(root).values()
            if d[0] == "file"}


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def fuse_ok():
    """FUSE and the stellafs binary must work here: a failure, never a skip."""
    reason = fuse_usable()
    if reason:
        pytest.fail("cannot run the store-mode tests: " + reason, pytrace=False)
    return True


@pytest.fixture(scope="session")
def mnt_base():
    """A world-traversable directory for mountpoints (pytest's tmp dirs are 0700, and the
    unprivileged-user tests must reach the mount)."""
    d = Path(tempfile.mkdtemp(prefix="stellafs-store-test-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield d
    for p in d.iterdir():
        if not is_mounted(p):
            try:
                p.rmdir()
            except OSError:
                pass
    try:
        d.rmdir()
    except OSError:
        pass


@pytest.fixture
def mounts(fuse_ok, mnt_base):
    """Mount manager: unmounts everything at the end; a watchdog (60 s unless the test
    re-arms it) force-aborts the mounts of a hung test so that it fails instead."""
    mm = MountManager(mnt_base)
    mm.arm(60)
    yield mm
    mm.disarm()
    errs = mm.cleanup()
    if mm.aborted:
        errs.insert(0, mm.aborted)
    if errs:
        pytest.fail("teardown: " + "; ".join(errs), pytrace=False)


@pytest.fixture(scope="session")
def trust(keys):
    return keys["ed25519"].pub


@pytest.fixture(scope="session")
def signer(keys):
    return keys["ed25519"]
