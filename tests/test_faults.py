"""Fault injection (docs/hardening.md, "Fault injection"): the I/O, allocation, OpenSSL and
SQLite calls that stellakit and stellafs make fail, one at a time, and every run must end
well.

The binaries are the fault build of tests/fault/ (stellakit-fault, stellafs-fault: the
same objects as stellakit and stellafs, linked with -Wl,--wrap): STELLA_FAULT_N=N fails
the Nth wrapped call, and STELLA_FAULT_REPORT names a file where a process writes which
call it failed (at once) and how many it made (at exit: a process that crashed or hung
writes no exit line).  A count run (N=0) gives the number of calls; the loops then fail
each of them in turn (a stride where said):

- `stellakit pack` (none, gzip, zstd), `verify` (none, gzip, zstd, and a tampered kit that
  must never pass), `import --activate` into a store that has a snapshot; the gzip and
  zstd loops take every other call in the ASan build (see variant_ns);
- a store-mode mount + reads + `activate` through the control file + unmount, with the
  fault in the daemon: every call before it detaches, a stride through its start-up and
  through the calls made while serving, every call of its shutdown (see SERVE_RUNS).

A faulted stellakit either succeeds with exactly the result of an unfaulted run (the
fault hit a call whose failure is harmless: a close of a file it only read), or fails with
exit code 1 and one stderr line naming the injected error (kitlib.assert_fail); never a
signal, a sanitizer report (in the ASan build every error path is leak-checked), a kit
without its sidecars or a temporary left behind, or a store that changed: a failed import
leaves the store exactly as it was, files and rows.  The daemon either refuses with one
line and mounts nothing, or stays up and answers each operation with the right bytes or
an errno, keeps its view and store.db in agreement, and exits after the unmount.

KNOWN holds kinds of problem the loops tolerate while their fix is pending (each with a
strict xfail test that asserts there are none, so a fix makes it XPASS and fail).  It is
empty: the five kinds found when this suite was written are fixed.

Work directories are on tmpfs (/dev/shm) when there is one, and JOBS runs go at once.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import kitlib
import storelib
from kitlib import CREATED_EPOCH, EXPIRES_FAR, describe
from storelib import fuse_ok, mnt_base  # noqa: F401  (fixtures)

BUILD = Path(os.environ.get("STELLA_BUILD") or (kitlib.REPO / "build"))
FAULT_DIR = BUILD / "tests" / "fault"
SK_FAULT = FAULT_DIR / "stellakit-fault"
FS_FAULT = FAULT_DIR / "stellafs-fault"


def _is_asan(binary: Path) -> bool:
    try:
        return b"__asan_init" in binary.read_bytes()
    except OSError:
        return False


ASAN = _is_asan(SK_FAULT)

# --------------------------------------------------------------------------- known bugs

KNOWN: dict = {}

# --------------------------------------------------------------------------- fault kinds

# What fault.c makes each wrapped call fail with (see its header).
IO_EIO = {"read", "pread", "fsync", "syncfs", "close", "rename", "renameat", "opendir",
          "readdir", "fflush"}
IO_ENOSPC = {"write", "fwrite", "mkostemp", "tmpfile", "mkdtemp", "mkdir", "mkdirat"}
IO_EITHER = {"open", "openat"}  # ENOSPC when creating, else EIO
ALLOC = {"malloc", "calloc", "realloc", "strdup", "realpath", "fdopendir", "mmap",
         "EVP_MD_CTX_new", "BIO_new", "BIO_new_mem_buf", "i2d_PUBKEY", "ZSTD_createCCtx",
         "ZSTD_createDCtx", "inflateInit2", "archive_read_new", "archive_write_new",
         "archive_entry_new", "yajl_gen_alloc", "EVP_Digest"}
CRYPTO = {"EVP_DigestInit_ex2", "EVP_DigestSignInit_ex", "EVP_DigestVerifyInit_ex",
          "EVP_DigestSign", "EVP_DigestSignFinal"}
SQLITE = {"sqlite3_open_v2", "sqlite3_prepare_v2", "sqlite3_prepare_v3", "sqlite3_step",
          "sqlite3_exec"}

EIO_TEXT, ENOSPC_TEXT = "input/output error", "no space left on device"
MEM_TEXT = ("cannot allocate memory", "out of memory")


def fault_words(op):
    """The texts one of which the refusal line must contain for a failure of OP: the
    injected error, as strerror() or SQLite (sqlite3_errstr) word it."""
    if op in IO_EIO:
        return (EIO_TEXT,)
    if op in IO_ENOSPC:
        return (ENOSPC_TEXT,)
    if op in IO_EITHER:
        return (EIO_TEXT, ENOSPC_TEXT)
    if op in ALLOC:
        return MEM_TEXT
    if op in CRYPTO:
        return ("openssl",) + MEM_TEXT
    if op in SQLITE:
        return ("disk i/o error",) + MEM_TEXT
    raise AssertionError(f"fault.c failed an op this test does not know: {op!r}")


# errnos an operation on the mount may fail with when a call inside the daemon failed
SERVE_ERRNOS = {errno.EIO, errno.ENOMEM, errno.ENOSPC}

# --------------------------------------------------------------------------- reports

_FIRE = re.compile(r"fire pid=(\d+) n=(\d+) op=(\S+) caller=0x([0-9a-f]+)")
_EXIT = re.compile(r"exit pid=(\d+) calls=(\d+) fork=(\d+) loop=(\d+) end=(\d+)")


@dataclasses.dataclass
class Report:
    """A process's lines in the report file: the fault it fired (if any) and, when it
    exited normally, its counts."""
    pid: int
    op: str | None = None
    caller: int = 0
    exited: bool = False
    calls: int = 0
    fork: int = 0
    loop: int = 0
    end: int = 0


def read_reports(path: Path) -> list:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = {}
    for ln in text.splitlines():
        if m := _FIRE.fullmatch(ln.strip()):
            r = out.setdefault(int(m[1]), Report(int(m[1])))
            r.op, r.caller = m[3], int(m[4], 16)
        elif m := _EXIT.fullmatch(ln.strip()):
            r = out.setdefault(int(m[1]), Report(int(m[1])))
            r.exited, r.calls, r.fork, r.loop, r.end = True, int(m[2]), int(m[3]), int(m[4]), int(m[5])
        else:
            raise AssertionError(f"{path}: unparsable fault report line {ln!r}")
    return list(out.values())


@functools.lru_cache(maxsize=None)
def where(binary: Path, caller: int) -> str:
    """The function (and with debug info, the inlined chain and lines) at CALLER."""
    if not caller:
        return "?"
    cp = subprocess.run(["addr2line", "-f", "-i", "-e", str(binary), hex(caller)],
                        capture_output=True, text=True)
    lines = cp.stdout.split("\n")
    frames = []
    for i in range(0, len(lines) - 1, 2):
        fn, loc = lines[i], lines[i + 1]
        loc = loc.rsplit("/", 1)[-1] if "?" not in loc else ""
        frames.append(fn + (f" ({loc})" if loc else ""))
    return " <- ".join(frames) or "?"


def sanitizer_logs(pids) -> str:
    """Sanitizer reports written for PIDS (ASAN_OPTIONS / UBSAN_OPTIONS log_path=...).
    They are left in place: scripts/test.sh also fails the run on them."""
    out = []
    for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
        m = re.search(r"(?:^|:)log_path=([^:]+)", os.environ.get(var, ""))
        if not m:
            continue
        for pid in pids:
            p = Path(f"{m.group(1)}.{pid}")
            if p.exists():
                out.append(f"{p}:\n{p.read_text(errors='replace')[:4000]}")
    return "\n".join(out)


# --------------------------------------------------------------------------- runs

@dataclasses.dataclass
class Run:
    n: int
    binary: Path
    cp: subprocess.CompletedProcess
    reports: list
    what: str = "fault"

    @property
    def report(self) -> Report | None:
        """The exit report of the process we ran (stellakit)."""
        done = [r for r in self.reports if r.exited]
        return done[-1] if done else None

    @property
    def op(self) -> str | None:
        fired = [r for r in self.reports if r.op]
        return fired[0].op if fired else None

    @property
    def where(self) -> str:
        fired = [r for r in self.reports if r.op]
        return where(self.binary, fired[0].caller) if fired else "-"

    def title(self) -> str:
        return f"{self.what} #{self.n}: {self.op or 'none fired'} in {self.where}"


class Problems:
    """Problems found by a loop, each of a kind (KNOWN kinds are tolerated by the loop
    tests and asserted by the xfail tests)."""

    def __init__(self):
        self.items = []  # (kind, text)
        self.lock = threading.Lock()

    def add(self, kind, run, msg):
        head = run.title() if isinstance(run, Run) else str(run)
        detail = describe(run.cp) if isinstance(run, Run) else ""
        with self.lock:
            self.items.append((kind, f"[{kind}] {head}: {msg}\n{detail}".rstrip()))

    def of(self, kinds):
        return [t for k, t in self.items if k in kinds]

    def unknown(self):
        return [t for k, t in self.items if k not in KNOWN]

    def __len__(self):
        return len(self.items)


def _report_path() -> Path:
    fd, p = tempfile.mkstemp(prefix="stella-fault-", suffix=".report")
    os.close(fd)
    return Path(p)


def _timed_out(args, e: subprocess.TimeoutExpired):
    """A CompletedProcess for a run that was killed after its timeout (exit -SIGKILL)."""
    out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    return subprocess.CompletedProcess(args, -signal.SIGKILL, out,
                                       err + f"\n[still running after {e.timeout}s: killed]")


def run_tool(n, *args, env=None, cwd=None, timeout=60) -> Run:
    """Run stellakit-fault ARGS with the Nth call failing (0: count only)."""
    rp = _report_path()
    rp.unlink()
    e = dict(os.environ)
    e.pop("SOURCE_DATE_EPOCH", None)
    e.update({k: str(v) for k, v in (env or {}).items()})
    e["STELLA_FAULT_N"] = str(n)
    e["STELLA_FAULT_REPORT"] = str(rp)
    argv = [str(SK_FAULT)] + [os.fspath(a) for a in args]
    try:
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, errors="replace", env=e,
                                cwd=cwd, timeout=timeout)
        except subprocess.TimeoutExpired as te:
            cp = _timed_out(argv, te)
        return Run(n, SK_FAULT, cp, read_reports(rp))
    finally:
        rp.unlink(missing_ok=True)


def count_calls(run: Run, what) -> int:
    """The number of calls of an unfaulted run, which must have succeeded."""
    assert run.cp.returncode == 0, f"{what}: the unfaulted fault build failed\n" + describe(run.cp)
    assert run.report, f"{what}: no fault report from the count run\n" + describe(run.cp)
    assert run.report.calls > 0, f"{what}: the count run made no wrapped call: is the " \
                                 f"fault build wrapping anything?"
    return run.report.calls


def check_tool_run(run: Run, problems: Problems, on_ok, on_fail, classify=None):
    """The contract of a faulted stellakit run (see the module doc).  on_ok(run) and
    on_fail(run) check the outcome and return a problem text or None; classify(run) may
    name a KNOWN kind for a run that shows that bug."""
    cp, rc = run.cp, run.cp.returncode
    if rc < 0:
        hung = "still running after" in cp.stderr
        problems.add("hang" if hung else "crash", run,
                     "hangs" if hung else f"killed by signal {signal.Signals(-rc).name}")
        return
    logs = sanitizer_logs([r.pid for r in run.reports])
    if rc in (86, 87) or logs:
        problems.add("sanitizer", run, f"sanitizer report (exit {rc})\n{logs}")
        return
    if not run.report:
        problems.add("crash", run, "exited without writing the fault report (abnormal exit)")
        return
    if run.op is None:
        problems.add("no-fire", run, f"the fault did not fire: the run made "
                                     f"{run.report.calls} calls, not the count run's")
    kind = classify(run) if classify else None
    if kind == "fine":
        return
    if kind:
        problems.add(kind, run, KNOWN[kind])
        return
    if rc == 0:
        msg = on_ok(run)
        if msg:
            problems.add("wrong-success", run, "exit 0, but " + msg)
        return
    try:
        kitlib.assert_fail(cp, 1, fault_words(run.op) if run.op else ())
    except AssertionError as e:
        problems.add("bad-refusal", run, str(e).split("\n")[0])
    msg = on_fail(run)
    if msg:
        problems.add("partial-state", run, msg)


def strided(count, runs_max):
    """1..count, or every k-th of them (and the last) when there are more than
    runs_max."""
    k = max(1, -(-count // runs_max))
    ns = list(range(1, count + 1, k))
    if ns[-1] != count:
        ns.append(count)
    return ns


# Two runs at a time (the machine has two CPUs; a run is mostly process start-up).
JOBS = int(os.environ.get("STELLA_FAULT_JOBS") or 2)


def variant_ns(count):
    """The Ns of a compressed variant (gzip, zstd) of a loop whose uncompressed run fails
    every call: they repeat its calls but for the (de)compression's own, so in the ASan
    build, where a run costs about three times more, every other N is enough."""
    return strided(count, -(-count // 2)) if ASAN else range(1, count + 1)


def parallel(ns, fn):
    """fn(slot, n) for every n of NS, JOBS at a time; slot (0..JOBS-1) names the work
    directory the call may use alone.  Returns the results in the order of NS."""
    free = list(range(JOBS))
    lock = threading.Lock()

    def task(n):
        with lock:
            slot = free.pop()
        try:
            return fn(slot, n)
        finally:
            with lock:
                free.append(slot)

    with ThreadPoolExecutor(JOBS) as ex:
        return list(ex.map(task, ns))


def assert_no_problems(problems: Problems, what, total):
    known = {}
    for k, _ in problems.items:
        if k in KNOWN:
            known[k] = known.get(k, 0) + 1
    print(f"{what}: {total} runs" +
          (f"; known bugs shown: {known}" if known else ""))
    bad = problems.unknown()
    assert not bad, f"{what}: {len(bad)} of {total} faulted runs went wrong:\n\n" + \
        "\n\n".join(bad[:12]) + (f"\n\n... and {len(bad) - 12} more" if len(bad) > 12 else "")


def assert_no_known(results, kind):
    hits = [t for p in results for t in p.of({kind})]
    assert not hits, f"{len(hits)} runs show the known bug: {KNOWN[kind]}\n\n" + \
        "\n\n".join(hits[:5])


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", autouse=True)
def fault_build():
    """The fault build must be there: a failure, not a skip."""
    for b in (SK_FAULT, FS_FAULT):
        if not (b.is_file() and os.access(b, os.X_OK)):
            pytest.fail(f"fault build missing: {b} (built by tests/fault/meson.build in "
                        f"STELLA_BUILD={BUILD})", pytrace=False)


def _write(root: Path, files: dict, links=None, modes=None, dirs=()):
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, (modes or {}).get(name, 0o644))
    for name, target in (links or {}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, root / name)
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root / d, 0o755)
    return root


def version_files(v) -> dict:
    """A small version tree: two files state the version (one spans several blocks, so
    it has a Merkle tree), two are the same in every version."""
    return {
        "feeds/check/f1": storelib.versioned_bytes(v, "feeds/check/f1", 3 * 4096 + 17),
        "feeds/db.json": json.dumps({"version": v}).encode() + b"\n",
        "feeds/common.bin": storelib.COMMON_BIN,
        "notes.txt": b"notes\n",
    }


@dataclasses.dataclass
class World:
    d: Path
    key: kitlib.Key
    pack_src: Path
    trees: dict          # version -> source tree
    kits: dict           # name -> kit path
    store1: Path         # store with v1 (current)
    store12: Path        # store with v1 (current) and v2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    # The work happens on tmpfs when there is one: a store's syncfs and SQLite's fsyncs
    # on a disk would make each import ten times slower.
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="stella-faults-", dir=shm))
    else:
        d = tmp_path_factory.mktemp("faults")
    try:
        yield make_world(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def make_world(d: Path) -> World:
    key = kitlib.gen_key(d / "keys" / "ed25519", "ed25519")  # reproducible packs
    pack_src = _write(d / "pack-src", {
        "feeds/db/vuln.bin": storelib.versioned_bytes("p", "vuln", 20000),
        "feeds/db/index.json": b'{"records": 3}\n',
        "tools/run.sh": b"#!/bin/sh\necho hi\n",
        "notes.txt": b"",
    }, links={"feeds/latest": "db"}, modes={"tools/run.sh": 0o755}, dirs=["empty"])
    trees = {v: _write(d / f"tree-{v}", version_files(v), links={"feeds/latest": "db.json"})
             for v in ("v1", "v2")}
    kits = {}
    for v, seq in (("v1", 1), ("v2", 2)):
        kits[v] = storelib.pack_kit(trees[v], d / f"{v}.tar", key, v, seq)
    kits["v2.zst"] = storelib.pack_kit(trees["v2"], d / "v2.tar.zst", key, "v2", 2,
                                       compress="zstd")
    store1, store12 = d / "store1", d / "store12"
    storelib.import_ok(store1, key.pub, kits["v1"])
    storelib.import_ok(store12, key.pub, kits["v1"])
    storelib.import_ok(store12, key.pub, kits["v2"])
    return World(d, key, pack_src, trees, kits, store1, store12)


# --------------------------------------------------------------------------- pack

def pack_args(w: World, comp, out: Path):
    return ["pack", "-k", w.key.key, "--kit-id", "fault-kit", "--version", "p1",
            "--sequence", "7", "--channel", "stable", "--expires-at", EXPIRES_FAR,
            "--component", "vuln=feeds/db,warn=7,max=14", "--compress", comp,
            w.pack_src, out]


def dir_files(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())} if d.exists() else {}


def pack_loop(w: World, comp) -> tuple[Problems, int]:
    name = {"none": "kit.tar", "gzip": "kit.tar.gz", "zstd": "kit.tar.zst"}[comp]
    env = {"SOURCE_DATE_EPOCH": CREATED_EPOCH}
    ref_dir = w.d / f"pack-ref-{comp}"
    ref_dir.mkdir()
    cp = kitlib.run(*pack_args(w, comp, ref_dir / name), env=env)
    kitlib.assert_ok(cp)
    ref = dir_files(ref_dir)
    assert sorted(ref) == sorted([name, name + ".sha256", name + ".metadata.json", name + ".sig"])

    def out(slot):
        return w.d / f"pack-out-{comp}-{slot}"

    def fresh(slot):
        shutil.rmtree(out(slot), ignore_errors=True)
        out(slot).mkdir()
        return out(slot)

    count = count_calls(run_tool(0, *pack_args(w, comp, fresh(0) / name), env=env), "pack")
    assert dir_files(out(0)) == ref, "the fault build packs other bytes than stellakit"
    problems = Problems()

    def one(slot, n):
        o = fresh(slot)

        def on_ok(run):
            got = dir_files(o)
            if got != ref:
                return (f"the outputs differ from an unfaulted pack: files {sorted(got)}, "
                        f"differing {sorted(k for k in got if got.get(k) != ref.get(k))}")
            return None

        def on_fail(run):
            left = sorted(dir_files(o))
            return f"a failed pack left {left} behind" if left else None

        run = run_tool(n, *pack_args(w, comp, o / name), env=env)
        check_tool_run(run, problems, on_ok, on_fail)

    ns = range(1, count + 1) if comp == "none" else variant_ns(count)
    parallel(ns, one)
    return problems, len(ns)


@pytest.mark.parametrize("comp", ["none", "gzip", "zstd"])
def test_pack_faults(world, comp):
    problems, count = pack_loop(world, comp)
    assert_no_problems(problems, f"stellakit pack --compress {comp}", count)


# --------------------------------------------------------------------------- verify

@pytest.fixture(scope="module")
def verify_results(world):
    w = world
    kits = dict(w.kits)
    kits["v2.gz"] = storelib.pack_kit(w.trees["v2"], w.d / "v2.tar.gz", w.key, "v2", 2,
                                      compress="gzip")
    tampered = w.d / "tampered.tar"
    shutil.copy(w.kits["v2"], tampered)
    kitlib.flip_byte(tampered, kitlib.member_data_offset(tampered, "feeds/check/f1") + 5000)
    ref_bad = kitlib.run("verify", "-t", w.key.pub, tampered)
    assert ref_bad.returncode == 4, describe(ref_bad)

    results = {}
    for label, kit in (("none", kits["v2"]), ("gzip", kits["v2.gz"]), ("zstd", kits["v2.zst"]),
                       ("tampered", tampered)):
        args = ["verify", "-t", w.key.pub, kit]
        count = run_tool(0, *args)
        if label == "tampered":
            assert count.cp.returncode == 4 and count.cp.stderr == ref_bad.stderr, \
                describe(count.cp)
            count = count.report.calls
        else:
            count = count_calls(count, f"verify {label}")

        def on_ok(run, label=label, kit=kit):
            if label == "tampered":
                return "a kit with a changed byte was accepted"
            if not run.cp.stdout.startswith(f"{kit}: valid: "):
                return f"stdout does not say valid: {run.cp.stdout!r}"
            return None

        def classify(run, label=label):
            if label == "tampered" and run.cp.returncode == 4 and \
                    run.cp.stderr == ref_bad.stderr:
                return "fine"   # refused as without a fault
            return None

        problems = Problems()
        ns = variant_ns(count) if label in ("gzip", "zstd") else range(1, count + 1)
        parallel(ns, lambda slot, n, on_ok=on_ok, classify=classify: check_tool_run(
            run_tool(n, *args), problems, on_ok, lambda run: None, classify))
        results[label] = (problems, len(ns))
    return results


@pytest.mark.parametrize("label", ["none", "gzip", "zstd", "tampered"])
def test_verify_faults(verify_results, label):
    problems, count = verify_results[label]
    assert_no_problems(problems, f"stellakit verify ({label} kit)", count)


# --------------------------------------------------------------------------- import

def store_state(store: Path) -> dict:
    """What must be exactly as before after a failed import: the files (tmp/ included)
    and the rows (imported_at aside), and every blob's content matching its name."""
    st = {"listing": storelib.store_listing(store)}
    con = sqlite3.connect(f"file:{store / 'store.db'}?mode=ro", uri=True, timeout=30)
    try:
        st["snapshot"] = sorted(con.execute(
            "select version, kit_id, sequence, manifest_sha256, files, bytes from snapshot"))
        st["pointer"] = sorted(con.execute("select * from pointer"))
        st["ratchet"] = sorted(con.execute("select * from ratchet"))
    finally:
        con.close()
    bad = [b for b in storelib.blobs(store)
           if kitlib.sha256_file(storelib.blob_path(store, b)) != b]
    if bad:
        st["bad-blobs"] = bad
    return st


@pytest.fixture(scope="module")
def import_results(world):
    w = world
    d = w.d / "import"
    d.mkdir()
    args = lambda s: ["import", "-s", s, "-t", w.key.pub, "--activate", w.kits["v2"]]  # noqa
    before = store_state(w.store1)
    ref = d / "ref"
    shutil.copytree(w.store1, ref, symlinks=True)
    storelib.import_ok(ref, w.key.pub, w.kits["v2"], "--activate")
    after = store_state(ref)
    assert after["pointer"] == [("current", "v2"), ("previous", "v1")], after

    def fresh(slot):
        s = d / f"s{slot}"
        shutil.rmtree(s, ignore_errors=True)
        shutil.copytree(w.store1, s, symlinks=True)
        return s

    count = count_calls(run_tool(0, *args(fresh(0))), "import")
    assert store_state(d / "s0") == after
    problems = Problems()

    def one(slot, n):
        s = fresh(slot)

        def on_ok(run):
            if not re.search(r"imported .* as snapshot v2", run.cp.stdout):
                return f"stdout does not say imported: {run.cp.stdout!r}"
            now = store_state(s)
            return None if now == after else \
                "the store is not what an unfaulted import makes:\n" + \
                storelib.diff_state(after, now)

        def on_fail(run):
            now = store_state(s)
            return None if now == before else \
                "the failed import changed the store:\n" + storelib.diff_state(before, now)

        run = run_tool(n, *args(s))
        check_tool_run(run, problems, on_ok, on_fail)
        return run

    runs = parallel(range(1, count + 1), one)
    # Two faulted stores to mount and `verify all`: the last failed run (a fault in the
    # commit) and the last that succeeded, made again (the runs are deterministic).
    keep = {}
    for outcome, ok in (("failed", False), ("ok", True)):
        hits = [r for r in runs if (r.cp.returncode == 0) == ok]
        if hits:
            run = hits[-1]
            s = fresh(0)
            run_tool(run.n, *args(s))
            keep[outcome] = (run.title(), d / f"keep-{outcome}")
            shutil.copytree(s, keep[outcome][1], symlinks=True)
    return problems, count, keep


def test_import_faults(import_results):
    problems, count, _ = import_results
    assert_no_problems(problems, "stellakit import --activate", count)


def test_import_faulted_stores_verify(import_results, world, fuse_ok, mnt_base):  # noqa: F811
    """A store after a faulted import (the last one that failed in the commit, and one
    that succeeded) mounts, lists what store.db says, and passes `verify all`."""
    _, _, keep = import_results
    assert set(keep) == {"ok", "failed"}, keep
    mm = storelib.MountManager(mnt_base)
    mm.arm(60)
    try:
        for outcome, (title, store) in sorted(keep.items()):
            m = mm.mount(store, world.key.pub)
            want = sorted(storelib.db_versions(store))
            assert m.snapshots() == want, f"{title}: mount lists {m.snapshots()}, db {want}"
            r = m.control("verify all")
            assert r == 0, f"{title}: verify all -> {storelib.errname(r)}: " \
                           f"{m.log_line('verify all')}"
            m.umount()
    finally:
        mm.disarm()
        errs = mm.cleanup()
    assert not errs, errs


# --------------------------------------------------------------------------- the daemon

# Runs of the mount + read + switch scenario with the fault in the daemon:
# - every call before it detaches (the foreground checks: a fault must be refused);
# - its start-up after detaching (single-threaded, a fixed order of calls, mostly opening
#   each snapshot's index: the same few call sites once per snapshot): a stride of at most
#   START_RUNS runs through it;
# - serving (several threads: the watcher reacts to store.db's changes, so the Nth call
#   may differ between runs): a stride of at most SERVE_RUNS runs;
# - every call of the shutdown after the unmount (STELLA_FAULT_SHUTDOWN).
# The strides keep this part near half the budget of the whole file; an ASan run costs
# about three times more.
SERVE_RUNS = 25 if ASAN else 40
START_RUNS = 60 if ASAN else 100


def fs_pids(mnt: Path) -> list:
    return storelib.daemon_pids(mnt, FS_FAULT)


def _errno_of(fn):
    try:
        return fn(), 0
    except OSError as e:
        return None, e.errno


def db_pointers(store: Path) -> dict:
    con = sqlite3.connect(f"file:{store / 'store.db'}?mode=ro", uri=True, timeout=30)
    try:
        return dict(con.execute("select name, version from pointer"))
    finally:
        con.close()


class DaemonScenario:
    """The mount + read + switch scenario, in JOBS slots (a mount point and a store each)."""

    def __init__(self, w: World, mnt_base: Path):
        self.w = w
        self.template = w.store12
        self.before = store_state(self.template)
        self.files = {v: version_files(v) for v in ("v1", "v2")}
        self.mnts, self.stores = [], []
        for slot in range(JOBS):
            m = Path(tempfile.mkdtemp(prefix="fault-mnt-", dir=mnt_base))
            os.chmod(m, 0o755)
            self.mnts.append(m)
            self.stores.append(w.d / f"daemon-store-{slot}")

    def cleanup(self):
        errs = []
        for mnt in self.mnts:
            if storelib.is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
            if storelib.is_mounted(mnt):
                storelib.force_abort(mnt)
                errs.append(f"{mnt} had to be force-unmounted")
            for pid in fs_pids(mnt):
                os.kill(pid, signal.SIGKILL)
                errs.append(f"stellafs-fault pid {pid} was still running; killed")
            try:
                os.rmdir(mnt)
            except OSError:
                pass
        return errs

    @staticmethod
    def unmount_and_wait(mnt, pids):
        """Unmount; the daemon must then exit by itself.  Returns an error text or None."""
        err = None
        if storelib.is_mounted(mnt):
            cp = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, text=True)
            if storelib.is_mounted(mnt):
                storelib.force_abort(mnt)
                err = f"fusermount3 -u failed ({cp.stderr.strip()}): forced"
        # it exits in tens of milliseconds (an ASan one checks for leaks first)
        deadline = time.monotonic() + (8 if ASAN else 4)
        while any(storelib.pid_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.005)
        alive = [p for p in pids if storelib.pid_alive(p)]
        for p in alive:
            os.kill(p, signal.SIGKILL)
        if alive:
            err = f"the daemon {alive} did not exit after the unmount: killed"
        return err

    def run(self, slot, n, shutdown=False) -> tuple[Run, list]:
        """One mount + read + switch + unmount with the Nth call failing (shutdown: the
        Nth call after the FUSE loop returned); returns the run and what was seen:
        [("mounted"|"not-mounted", daemon pids), (kind, text)...]."""
        mnt, store = self.mnts[slot], self.stores[slot]
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(self.template, store, symlinks=True)
        rp = _report_path()
        rp.unlink()
        env = dict(os.environ)
        env.update(STELLA_FAULT_N="0" if shutdown else str(n), STELLA_FAULT_REPORT=str(rp))
        if shutdown:
            env["STELLA_FAULT_SHUTDOWN"] = str(n)
        obs = []
        # a hung daemon must fail the run, not hang the suite: abort the mount
        timer = threading.Timer(60, storelib.force_abort, args=(mnt,))
        timer.daemon = True
        timer.start()
        try:
            argv = [str(FS_FAULT), "-o", f"trust={self.w.key.pub}", str(store), str(mnt)]
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                try:
                    cp = subprocess.run(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                        env=env, timeout=60)
                except subprocess.TimeoutExpired as te:
                    cp = _timed_out(argv, te)
                    obs.append(("hang", "stellafs did not return within 60 s"))
                out.seek(0)
                err.seek(0)
                cp.stdout = out.read().decode("utf-8", "replace")
                cp.stderr = err.read().decode("utf-8", "replace") + (cp.stderr or "")
            pids = fs_pids(mnt)
            mounted = storelib.is_mounted(mnt)
            if cp.returncode == 0 and mounted:
                obs += self.exercise(mnt, store)
            problem = self.unmount_and_wait(mnt, pids)
            if problem:
                obs.append(("hang", problem))
        finally:
            timer.cancel()
            reports = read_reports(rp)
            rp.unlink(missing_ok=True)
        obs.insert(0, ("mounted" if mounted else "not-mounted", pids))
        return Run(n, FS_FAULT, cp, reports, "shutdown fault" if shutdown else "fault"), obs

    def read_check(self, mnt, rel, version):
        """Read REL: its bytes must be those of VERSION, or the read fails with an errno."""
        data, e = _errno_of(lambda: (mnt / rel).read_bytes())
        if e == errno.ENOTCONN:
            return ("dead", f"read {rel}: ENOTCONN: the daemon is gone")
        if e:
            if e in SERVE_ERRNOS:
                return None
            if e == errno.ENOENT:  # feeds -> current/feeds: current went missing
                return ("refresh", f"read {rel}: ENOENT")
            return ("serve-errno", f"read {rel}: {errno.errorcode.get(e, e)}")
        if data != self.files[version][rel]:
            return ("wrong-data", f"read {rel}: {len(data)} bytes that are not {version}'s")
        return None

    @staticmethod
    def current(mnt):
        """(version or None, problem or None) of /stella/current."""
        t, e = _errno_of(lambda: os.readlink(mnt / "current"))
        if e == errno.ENOTCONN:
            return None, ("dead", "readlink current: ENOTCONN")
        if e in SERVE_ERRNOS:
            return None, None
        if e:
            return None, ("refresh", f"readlink current: {errno.errorcode.get(e, e)}")
        m = re.fullmatch(r"snapshots/(v[12])", t)
        if not m:
            return None, ("wrong-current", f"current -> {t!r}")
        return m.group(1), None

    def exercise(self, mnt, store) -> list:
        obs = []
        _, e = _errno_of(lambda: json.loads((mnt / "status.json").read_text()))
        if e == errno.ENOTCONN:
            return [("dead", "status.json: ENOTCONN")]
        if e and e not in SERVE_ERRNOS:
            obs.append(("serve-errno", f"status.json: {errno.errorcode.get(e, e)}"))
        cur, p = self.current(mnt)
        obs.append(p)
        if cur not in (None, "v1"):
            obs.append(("wrong-current", f"current is {cur} before any switch"))
        if cur:
            for rel in ("feeds/check/f1", "feeds/db.json"):
                obs.append(self.read_check(mnt, rel, cur))
        r = storelib.Mounted(None, store, mnt, (), []).control("activate v2")
        if r == errno.ENOTCONN:
            return [o for o in obs if o] + [("dead", "control: ENOTCONN")]
        if r and r not in SERVE_ERRNOS:
            obs.append(("serve-errno", f"activate v2 -> {errno.errorcode.get(r, r)}"))
        db = db_pointers(store).get("current")
        if r == 0 and db != "v2":
            obs.append(("lost-switch", f"activate v2 returned 0, store.db says {db}"))
        if r and db != "v1":
            obs.append(("half-switch", f"activate v2 failed ({errno.errorcode.get(r, r)}), "
                                       f"store.db says {db}"))
        cur, p = self.current(mnt)
        obs.append(p)
        if cur and cur != db:
            obs.append(("refresh", f"after activate ({errno.errorcode.get(r, r) if r else 'ok'})"
                                   f" current is {cur}, store.db says {db}"))
        if cur:
            obs.append(self.read_check(mnt, "feeds/db.json", cur))
        _, e = _errno_of(lambda: os.stat(mnt / "status"))
        if e == errno.ENOTCONN:
            obs.append(("dead", "the daemon died while serving"))
        return [o for o in obs if o]

    def check(self, slot, run: Run, obs, phase, problems: Problems):
        cp, rc = run.cp, run.cp.returncode
        (state, pids), obs = obs[0], obs[1:]
        mounted = state == "mounted"
        if rc < 0:
            hung = "still running after" in cp.stderr
            problems.add("hang" if hung else "crash", run, "stellafs hangs" if hung else
                         f"stellafs killed by signal {signal.Signals(-rc).name}")
            return
        logs = sanitizer_logs([r.pid for r in run.reports] + pids)
        if rc in (86, 87) or logs:
            problems.add("sanitizer", run, f"sanitizer report (exit {rc})\n{logs}")
            return
        for kind, text in obs:
            if kind == "hang":
                problems.add("hang", run, text)
        if rc != 0:
            try:
                kitlib.assert_fs_fail(cp, 1, fault_words(run.op) if run.op else ())
            except AssertionError as e:
                problems.add("bad-refusal", run, str(e).split("\n")[0])
            if mounted or pids:
                problems.add("partial-state", run, f"refused, yet mounted={mounted}, "
                                                   f"daemons {pids}")
        elif not mounted:
            problems.add("detach" if phase == "start-up" else "lost-mount", run,
                         "stellafs exited 0 but nothing is mounted")
        else:
            died = False
            for kind, text in obs:
                if kind == "hang":
                    continue
                if kind == "dead":
                    problems.add("detach" if phase == "start-up" else "crash", run, text)
                    died = True
                    break
                problems.add(kind, run, text)
            hung = any(k == "hang" for k, _ in obs)
            if not died and not hung and pids and \
                    not [r for r in run.reports if r.pid in pids and r.exited]:
                problems.add("crash", run, f"the daemon {pids} exited without its fault report "
                                           f"(killed by a signal?)")
        # the store: never a half switch, nothing else changed
        now = store_state(self.stores[slot])
        ptr = dict(now.pop("pointer"))
        want = dict(self.before)
        want_ptr = dict(want.pop("pointer"))
        if now != want:
            problems.add("partial-state", run, "the store changed:\n" +
                         storelib.diff_state(want, now))
        if ptr not in (want_ptr, {"current": "v2", "previous": "v1"}):
            problems.add("half-switch", run, f"store.db pointers {ptr}")


@pytest.fixture(scope="module")
def daemon_results(world, fuse_ok, mnt_base):  # noqa: F811
    sc = DaemonScenario(world, mnt_base)
    try:
        base, obs = sc.run(0, 0)
        base_problems = Problems()
        sc.check(0, base, obs, "serving", base_problems)
        assert not len(base_problems), "the unfaulted scenario fails:\n" + \
            "\n".join(t for _, t in base_problems.items)
        daemon = [r for r in base.reports if r.exited and r.fork]
        assert daemon, f"no report from a forked daemon: {base.reports}"
        d = daemon[0]
        assert 0 < d.fork < d.loop < d.end < d.calls, d

        def phase(n):
            return "foreground" if n <= d.fork else "start-up" if n <= d.loop else "serving"

        # every call before serving (the start-up strided in the ASan build), a stride
        # through the serving calls, and every call of the shutdown (after the unmount)
        ns = [n for n in range(1, d.fork + 1)]
        ns += [d.fork + k for k in strided(d.loop - d.fork, START_RUNS)]
        ns += [d.loop + k for k in strided(d.end - d.loop, SERVE_RUNS)]
        ns = [(n, False) for n in ns] + [(k, True) for k in range(1, d.calls - d.end + 1)]
        problems = Problems()
        t0 = time.monotonic()

        def one(slot, nk):
            n, shutdown = nk
            run, obs = sc.run(slot, n, shutdown)
            sc.check(slot, run, obs, "shutdown" if shutdown else phase(n), problems)

        parallel(ns, one)
        return problems, len(ns), d, time.monotonic() - t0
    finally:
        errs = sc.cleanup()
        assert not errs, errs


def test_daemon_faults(daemon_results):
    problems, runs, d, took = daemon_results
    print(f"daemon: {runs} runs over {d.calls} calls (detached after {d.fork}, serving "
          f"{d.loop}-{d.end}, then shutdown) in {took:.1f}s")
    assert_no_problems(problems, "stellafs mount + read + activate", runs)


# --------------------------------------------------------------------------- known bugs


# --------------------------------------------------------------------------- digests
#
# EVP_Digest (sha256_once in core/merkle.c) runs once per 4 KiB block hashed, so fault.c
# counts it only when asked (STELLA_FAULT_CLASSES=digest): in the loops above it would
# multiply their length by the size of the data.  These tests fail it at chosen points,
# the first calls, the middle and the last: a digest that could not be computed must end
# in a clear error (the tools) or one failed read (the daemon), never in a crash, a false
# "mismatch", or bytes served unchecked.

DIGEST_ENV = {"STELLA_FAULT_CLASSES": "digest"}


def _digest_points(count):
    return sorted({n for n in (1, 2, 3, count // 2, count - 1, count) if n >= 1})


@pytest.mark.parametrize("what", ["pack", "verify"])
def test_digest_faults_tools(world, tmp_path, what):
    def args(i):
        if what == "verify":
            return ("verify", "-t", world.key.pub, world.kits["v1"])
        out = tmp_path / f"run{i}"
        out.mkdir()
        return tuple(pack_args(world, "none", out / "kit.tar"))

    count = count_calls(run_tool(0, *args(0), env=DIGEST_ENV), f"{what} (digests)")
    for n in _digest_points(count):
        run = run_tool(n, *args(n), env=DIGEST_ENV)
        assert run.op == "EVP_Digest", describe(run.cp)
        kitlib.assert_fail(run.cp, 1, MEM_TEXT)
        assert "mismatch" not in run.cp.stderr, describe(run.cp)
        if what == "pack":
            assert not list((tmp_path / f"run{n}").iterdir()), "a failed pack left files"


def test_digest_fault_while_serving(world, tmp_path, fuse_ok, mnt_base):  # noqa: F811
    """A digest that fails while a file is read: that read fails or is retried by the
    kernel, the bytes are right, and nothing counts as an integrity failure."""
    kit = world.kits["v1"]
    rel = "feeds/check/f1"  # four blocks and a Merkle tree
    want = (world.trees["v1"] / rel).read_bytes()
    mnt = Path(tempfile.mkdtemp(dir=mnt_base))

    def mount_read(n):
        rp = _report_path()
        rp.unlink()
        env = dict(os.environ, STELLA_FAULT_N=str(n), STELLA_FAULT_REPORT=str(rp), **DIGEST_ENV)
        cache = tmp_path / f"cache{n}"
        cp = subprocess.run([str(FS_FAULT), "-o", f"trust={world.key.pub},cache={cache}", str(kit),
                             str(mnt)], capture_output=True, text=True, env=env, timeout=60)
        assert cp.returncode == 0, describe(cp)
        pids = fs_pids(mnt)
        try:
            first, e = _errno_of(lambda: (mnt / "current" / rel).read_bytes())
            assert e == 0 or e in SERVE_ERRNOS, f"read failed with {errno.errorcode.get(e, e)}"
            again = (mnt / "current" / rel).read_bytes()
            health = (mnt / "health").read_text()
            metrics = (mnt / "metrics").read_text()
        finally:
            problem = DaemonScenario.unmount_and_wait(mnt, pids)
        assert problem is None, problem
        reports = read_reports(rp)
        rp.unlink(missing_ok=True)
        return first, again, health, metrics, reports

    *_, reports = mount_read(0)
    d = next(r for r in reports if r.exited and r.loop)
    assert d.end > d.loop, f"the read hashed nothing while serving: {d}"
    for n in sorted({d.loop + 1, (d.loop + d.end) // 2, d.end}):
        first, again, health, metrics, reports = mount_read(n)
        assert any(r.op == "EVP_Digest" for r in reports), f"N={n}: the fault did not fire"
        assert first in (None, want), f"N={n}: wrong bytes served"
        assert again == want, f"N={n}: the re-read gave wrong bytes"
        assert health.splitlines()[0] == "HEALTHY", f"N={n}: health after a failed digest:\n{health}"
        assert "stellafs_integrity_failures_total 0" in metrics, f"N={n}: counted as an integrity failure"
