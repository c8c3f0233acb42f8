"""Helpers for the black-box tests of `stellakit` (docs/kit-format.md, stellakit(1)).

Everything here is an independent oracle: kits are assembled with Python's tarfile,
keys are made and signatures computed with the openssl CLI, digests come from hashlib
and the `fsverity digest` command.  Nothing here uses stellakit itself except run().

Imported by conftest.py and by the test modules (`import kitlib`).
"""

from __future__ import annotations

import base64
import calendar
import dataclasses
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("STELLAKIT") or (REPO / "build" / "tools" / "stellakit"))

MANIFEST = "manifest/offline-manifest.json"
SIGNAME = "manifest/offline-manifest.json.sig"
MERKLE = "manifest/merkle.bin"
INDEX = "manifest/index"

CREATED_AT = "2025-01-15T00:00:00Z"
CREATED_EPOCH = 1736899200  # == CREATED_AT
EXPIRES_FAR = "2099-01-01T00:00:00Z"

MiB = 1024 * 1024
# size -> name in the sample source tree (make_source_tree)
SIZE_FILES = {
    0: "sizes/size-0",
    1: "sizes/size-1",
    4095: "sizes/size-4095",
    4096: "sizes/size-4096",
    4097: "sizes/size-4097",
    MiB + 1: "feeds/vuln-db/index.bin",
    3 * MiB + 5: "feeds/vuln-db/vuln.db",
}
LONG_COMPONENT = "L" * 251 + ".txt"  # 255 bytes
assert len(LONG_COMPONENT.encode()) == 255
UNICODE_NAME = "données/αβγ.json"

# Identity options passed to every pack in the tests (defaults are never relied upon).
IDENTITY = ["--kit-id", "test-kit", "--version", "2025.01.15", "--sequence", "20250115",
            "--channel", "stable", "--expires-at", EXPIRES_FAR]
COMPONENT_ARGS = [
    "--component", "vulnerability-database=feeds/vuln-db,warn=7,max=14,records=245000",
    "--component", "tools=tools,captured-at=2025-01-10T00:00:00Z",
]

COMPRESSIONS = ["none", "gzip", "zstd"]


# --------------------------------------------------------------------------- running

def _strs(args):
    return [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]


def run(*args, env=None, input=None, cwd=None, timeout=120, umask=None):
    """Run stellakit with ARGS; returns CompletedProcess with text stdout/stderr.

    env: dict of variables to set (value None removes it).  SOURCE_DATE_EPOCH is removed
    from the inherited environment unless given here.
    """
    e = dict(os.environ)
    e.pop("SOURCE_DATE_EPOCH", None)
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = str(v)
    pre = None
    if umask is not None:
        def pre():
            os.umask(umask)
    return subprocess.run([str(BIN)] + _strs(args), capture_output=True, text=True,
                          errors="replace", env=e, input=input, cwd=cwd, timeout=timeout,
                          preexec_fn=pre)


def sh(*cmd, check=True, input=None, cwd=None, env=None, text=True, timeout=120):
    """Run an oracle command (openssl, tar, sha256sum, fsverity, zstd...)."""
    e = None
    if env:
        e = dict(os.environ)
        e.update(env)
    cp = subprocess.run(_strs(cmd), capture_output=True, text=text, input=input, cwd=cwd,
                        env=e, timeout=timeout)
    if check and cp.returncode != 0:
        raise AssertionError(f"oracle command failed ({cp.returncode}): {_strs(cmd)}\n"
                             f"stdout: {cp.stdout!r}\nstderr: {cp.stderr!r}")
    return cp


def describe(cp):
    return (f"exit {cp.returncode}\nargs: {cp.args}\nstdout: {cp.stdout[-2000:]!r}\n"
            f"stderr: {cp.stderr[-2000:]!r}")


def assert_ok(cp):
    assert cp.returncode == 0, "expected success\n" + describe(cp)
    return cp


_ABS_PATH = re.compile(r"(?<![\w.])/[^\s:\"'()]+")


def _scrub_paths(line, args):
    for a in sorted((str(a) for a in args[1:]), key=len, reverse=True):
        if "/" in a and len(a) > 1:
            line = line.replace(a, "<ARG>")
    return _ABS_PATH.sub("<PATH>", line)


def _assert_refusal(cp, prog, code, keywords, names=()):
    """The failure contract shared by both programs: exit CODE (int or tuple of ints),
    exactly one line on stderr starting with "PROG: ", containing every keyword
    (case-insensitive; a tuple means any one of its alternatives) and every name in NAMES
    (exact)."""
    codes = code if isinstance(code, tuple) else (code,)
    assert cp.returncode in codes, f"expected exit {codes}\n" + describe(cp)
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1, "expected exactly one line on stderr\n" + describe(cp)
    line = lines[0]
    assert line.startswith(f"{prog}: "), f"stderr must start with '{prog}: '\n" + describe(cp)
    # Keywords must come from the message, not from a path we passed (pytest's tmp_path
    # holds the test's name, e.g. ".../test_truncated_inside0/kit").
    low = _scrub_paths(line, cp.args).lower()
    for kw in keywords:
        alts = kw if isinstance(kw, tuple) else (kw,)
        assert any(a.lower() in low for a in alts), \
            f"stderr should mention {' or '.join(map(repr, alts))}\n" + describe(cp)
    for n in names:
        assert n in line, f"stderr should name {n!r}\n" + describe(cp)
    return line


def assert_fail(cp, code, *keywords, names=()):
    """stellakit's failure contract (see _assert_refusal)."""
    return _assert_refusal(cp, "stellakit", code, keywords, names)


# --------------------------------------------------------------------------- time

def parse_time(s):
    return calendar.timegm(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ"))


def fmt_time(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


assert fmt_time(CREATED_EPOCH) == CREATED_AT


# --------------------------------------------------------------------------- keys

@dataclasses.dataclass(frozen=True)
class Key:
    kind: str   # "ecdsa-p256" | "ed25519" | "rsa-3072" | "rsa-1024"
    key: Path   # PKCS#8 PEM private key
    pub: Path   # SubjectPublicKeyInfo PEM


_GENPKEY = {
    "ecdsa-p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                   "-pkeyopt", "ec_param_enc:named_curve"],
    "ed25519": ["-algorithm", "ED25519"],
    "rsa-3072": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
    "rsa-2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    "rsa-1024": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
}


def gen_key(prefix, kind="ecdsa-p256") -> Key:
    """Make a key pair with `openssl genpkey` (PKCS#8 PEM) and `openssl pkey -pubout`."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    key = prefix.with_name(prefix.name + ".key")
    pub = prefix.with_name(prefix.name + ".pub")
    sh("openssl", "genpkey", *_GENPKEY[kind], "-out", key)
    sh("openssl", "pkey", "-in", key, "-pubout", "-out", pub)
    return Key(kind, key, pub)


def sign_file(path, key: Key) -> bytes:
    """Raw signature over the file's bytes with the openssl CLI."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "sig"
        if key.kind == "ed25519":
            sh("openssl", "pkeyutl", "-sign", "-rawin", "-inkey", key.key, "-in", path,
               "-out", out)
        else:  # ECDSA (DER) and RSA PKCS#1 v1.5, both with SHA-256
            sh("openssl", "dgst", "-sha256", "-sign", key.key, "-out", out, path)
        return out.read_bytes()


def sign_bytes(data: bytes, key: Key) -> str:
    """Signature over DATA, base64 on one line (the .sig line format)."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "msg"
        p.write_bytes(data)
        return base64.b64encode(sign_file(p, key)).decode()


def openssl_verify(path, sig: bytes, pub, kind) -> bool:
    """Check a raw signature over the file PATH with the openssl CLI."""
    with tempfile.TemporaryDirectory() as d:
        s = Path(d) / "sig"
        s.write_bytes(sig)
        if kind == "ed25519":
            cp = sh("openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin",
                    "-in", path, "-sigfile", s, check=False)
        else:
            cp = sh("openssl", "dgst", "-sha256", "-verify", pub, "-signature", s, path,
                    check=False)
        return cp.returncode == 0


def openssl_verify_bytes(data: bytes, sig: bytes, pub, kind) -> bool:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "msg"
        p.write_bytes(data)
        return openssl_verify(p, sig, pub, kind)


# --------------------------------------------------------------------------- digests

def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsverity_file(path) -> str:
    """`fsverity digest` of PATH (4096-byte blocks, no salt): "sha256:<hex>"."""
    out = sh("fsverity", "digest", "--hash-alg=sha256", "--block-size=4096", path).stdout
    tok = out.split()[0]
    assert tok.startswith("sha256:") and len(tok) == 7 + 64, out
    return tok


_FSV_CACHE: dict = {}


def fsverity_bytes(data: bytes) -> str:
    k = hashlib.sha256(data).digest()
    if k not in _FSV_CACHE:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "f"
            p.write_bytes(data)
            _FSV_CACHE[k] = fsverity_file(p)
    return _FSV_CACHE[k]


def artifact_entry(path, name=None, mode=None) -> dict:
    """The manifest entry of a regular file, computed with hashlib and `fsverity digest`."""
    st = os.lstat(path)
    return {"name": name if name is not None else os.path.basename(path),
            "size": st.st_size, "sha256": sha256_file(path), "fsverity": fsverity_file(path),
            "mode": mode if mode is not None else (st.st_mode & 0o7777)}


# --------------------------------------------------------------------------- tar members

@dataclasses.dataclass
class Member:
    """One tar member for assemble_kit().  type: file, dir, symlink, hardlink, chr, blk,
    fifo.  target: symlink/hardlink target.  pax: extra PAX header records."""
    name: str
    data: bytes = b""
    type: str = "file"
    mode: int | None = None
    target: str = ""
    uid: int = 0
    gid: int = 0
    mtime: int | None = None
    pax: dict | None = None


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}
_DEFAULT_MODE = {"file": 0o644, "dir": 0o755, "symlink": 0o777}


def _tarinfo(m: Member, mtime):
    ti = tarfile.TarInfo(m.name)
    ti.type = _TYPES[m.type]
    ti.mode = m.mode if m.mode is not None else _DEFAULT_MODE.get(m.type, 0o644)
    ti.uid, ti.gid = m.uid, m.gid
    ti.uname = ti.gname = "root" if (m.uid, m.gid) == (0, 0) else ""
    ti.mtime = m.mtime if m.mtime is not None else mtime
    ti.linkname = m.target
    ti.size = len(m.data) if m.type == "file" else 0
    if m.type in ("chr", "blk"):
        ti.devmajor, ti.devminor = 1, 3
    if m.pax:
        ti.pax_headers = dict(m.pax)
    return ti


def _as_member(x):
    if isinstance(x, Member):
        return x
    if isinstance(x, tuple):
        return Member(*x)
    raise TypeError(x)


def sig_text(sig_lines) -> bytes:
    if isinstance(sig_lines, bytes):
        return sig_lines
    if isinstance(sig_lines, str):
        return sig_lines.encode()
    return "".join(line + "\n" for line in sig_lines).encode()


def tar_bytes(members, format=tarfile.PAX_FORMAT, mtime=CREATED_EPOCH) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format, encoding="utf-8") as tf:
        for m in members:
            m = _as_member(m)
            ti = _tarinfo(m, mtime)
            tf.addfile(ti, io.BytesIO(m.data) if m.type == "file" else None)
    return buf.getvalue()


def compress_bytes(raw: bytes, compress) -> bytes:
    if compress in (None, "none"):
        return raw
    if compress == "gzip":
        return gzip.compress(raw, mtime=0)
    if compress == "zstd":
        return sh("zstd", "-q", "-c", "-3", input=raw, text=False).stdout
    raise ValueError(compress)


def assemble_kit(path, manifest_bytes, sig_lines, members, compress=None,
                 format=tarfile.PAX_FORMAT, mtime=CREATED_EPOCH, trailer=b""):
    """Build a kit at PATH from raw pieces with Python's tarfile (uid/gid 0).

    manifest_bytes: the first member's bytes (None: no manifest member is added).
    sig_lines: list of base64 lines, or raw bytes/str, for the second member (None: none).
    members: further members, in the given order: Member objects or (name, data) tuples.
    trailer: raw bytes appended after the (uncompressed) tar stream, before compression.
    """
    head = []
    if manifest_bytes is not None:
        head.append(Member(MANIFEST, manifest_bytes))
    if sig_lines is not None:
        head.append(Member(SIGNAME, sig_text(sig_lines)))
    raw = tar_bytes(head + [_as_member(m) for m in members], format=format, mtime=mtime)
    Path(path).write_bytes(compress_bytes(raw + trailer, compress))
    return Path(path)


# --------------------------------------------------------------------------- manifests

DELETE = object()


def make_manifest(artifacts, /, **fields) -> dict:
    m = {"schemaVersion": 1, "kitId": "test-kit", "version": "2025.01.15",
         "sequence": 20250115, "channel": "stable", "createdAt": CREATED_AT,
         "expiresAt": EXPIRES_FAR, "components": {}, "artifacts": artifacts}
    for k, v in fields.items():
        if v is DELETE:
            m.pop(k, None)
        else:
            m[k] = v
    return m


def dump_manifest(m) -> bytes:
    return json.dumps(m, indent=2, ensure_ascii=False).encode("utf-8")


def name_key(name: str) -> bytes:
    """Bytewise sort key of a kit name."""
    return name.encode("utf-8", "surrogateescape")


@dataclasses.dataclass
class Item:
    """One artifact: its manifest entry and its tar member (either may be edited)."""
    entry: dict
    member: Member | None

    @property
    def name(self):
        return self.entry["name"]


def file_item(name, data: bytes, mode=0o644) -> Item:
    e = {"name": name, "size": len(data), "sha256": sha256_hex(data),
         "fsverity": fsverity_bytes(data), "mode": mode}
    return Item(e, Member(name, data, "file", mode))


def link_item(name, target) -> Item:
    return Item({"name": name, "type": "symlink", "target": target},
                Member(name, type="symlink", target=target))


def dir_item(name, mode=0o755) -> Item:
    return Item({"name": name, "type": "directory", "mode": mode},
                Member(name, type="dir", mode=mode))


def sort_items(items):
    return sorted(items, key=lambda it: name_key(it.name))


def split_items(items):
    """(manifest artifacts, members) in the given order; items with member None have no
    member."""
    return [it.entry for it in items], [it.member for it in items if it.member is not None]


def basic_items(seed=7):
    """A small valid artifact set, sorted: a.txt, dir/b.bin (5000 random bytes), dir/c
    (empty), dir/link -> b.bin, emptydir/ (directory entry)."""
    rng = random.Random(seed)
    return sort_items([
        file_item("a.txt", b"hello, offline world\n"),
        file_item("dir/b.bin", rng.randbytes(5000)),
        file_item("dir/c", b"", 0o755),
        link_item("dir/link", "b.bin"),
        dir_item("emptydir"),
    ])


def signed_kit(path, manifest, members, keys, compress=None, extra_sig_lines=(), **kw):
    """Assemble a kit whose manifest (dict or raw bytes) is signed by every key in KEYS
    (openssl CLI), one line each."""
    mbytes = manifest if isinstance(manifest, bytes) else dump_manifest(manifest)
    lines = [sign_bytes(mbytes, k) for k in keys] + list(extra_sig_lines)
    return assemble_kit(path, mbytes, lines, members, compress=compress, **kw)


def kit_from_items(path, items, keys, compress=None, manifest_fields=None, **kw):
    arts, members = split_items(items)
    m = make_manifest(arts, **(manifest_fields or {}))
    return signed_kit(path, m, members, keys, compress=compress, **kw)


# --------------------------------------------------------------------------- reading kits

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def compression_of(path) -> str:
    head = Path(path).read_bytes()[:4]
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if head == ZSTD_MAGIC:
        return "zstd"
    return "none"


def kit_tar_bytes(path) -> bytes:
    data = Path(path).read_bytes()
    c = compression_of(path)
    if c == "gzip":
        return gzip.decompress(data)
    if c == "zstd":
        return sh("zstd", "-q", "-d", "-c", input=data, text=False).stdout
    return data


def kit_members(path):
    """[(TarInfo, bytes or None)] of a kit, in archive order (read with tarfile)."""
    out = []
    with tarfile.open(fileobj=io.BytesIO(kit_tar_bytes(path)), mode="r:") as tf:
        for ti in tf:
            data = tf.extractfile(ti).read() if ti.isreg() else None
            out.append((ti, data))
    return out


def kit_manifest(path):
    """(manifest bytes, parsed manifest) of a kit."""
    for ti, data in kit_members(path):
        if ti.name == MANIFEST:
            return data, json.loads(data)
    raise AssertionError(f"{path}: no {MANIFEST}")


def kit_sig_lines(path):
    for ti, data in kit_members(path):
        if ti.name == SIGNAME:
            return [ln for ln in data.decode().splitlines() if ln.strip()]
    raise AssertionError(f"{path}: no {SIGNAME}")


def artifact_type(entry) -> str:
    return entry.get("type", "file")


# --------------------------------------------------------------------------- source trees

def _write(path: Path, data: bytes, mode=0o644):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def make_source_tree(root, seed=20250115) -> Path:
    """The sample source tree: files of sizes 0, 1, 4095, 4096, 4097, 1 MiB+1, 3 MiB+5
    (random content from a seeded random.Random), nested dirs, symlinks inside the tree,
    an empty directory, modes 0644/0755/0600, a 0700 directory, a 255-byte name component,
    a unicode name, and names whose bytewise order differs from other orders."""
    root = Path(root)
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    for size, name in sorted(SIZE_FILES.items()):
        _write(root / name, rng.randbytes(size))
    os.symlink("vuln-db", root / "feeds/latest")
    os.symlink("vuln.db", root / "feeds/vuln-db/current.db")
    _write(root / "tools/run.sh", b"#!/bin/sh\necho scanning\n", 0o755)
    _write(root / "tools/README", b"tools for the scanner\n", 0o644)
    os.symlink("../feeds/vuln-db/vuln.db", root / "tools/db")
    _write(root / "secrets/token", rng.randbytes(64), 0o600)
    os.chmod(root / "secrets", 0o700)
    (root / "empty").mkdir()
    _write(root / "a/b/c/d/deep.txt", b"deep\n" * 100)
    _write(root / "a-b.txt", b"dash sorts before slash\n")
    _write(root / "B.txt", b"uppercase sorts first\n")
    _write(root / "long" / LONG_COMPONENT, b"long name\n")
    _write(root / UNICODE_NAME, json.dumps({"greek": "αβγ"}, ensure_ascii=False).encode())
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            p = Path(dirpath) / d
            if p.is_symlink():
                continue
            os.chmod(p, 0o700 if p == root / "secrets" else 0o755)
    return root


def make_small_tree(root, seed=1, extra=None) -> Path:
    """A tiny source tree (fast to pack): two files and a symlink; EXTRA maps name ->
    bytes to add or replace (None removes)."""
    root = Path(root)
    rng = random.Random(seed)
    files = {"feeds/db.json": b'{"records": 3}\n', "tools/tool.bin": rng.randbytes(6000),
             "notes.txt": b"notes\n"}
    for k, v in (extra or {}).items():
        if v is None:
            files.pop(k, None)
        else:
            files[k] = v
    for name, data in files.items():
        _write(root / name, data)
    os.symlink("db.json", root / "feeds/current")
    return root


def snapshot_tree(root, exclude=()):
    """{relpath: description} of a directory tree, for comparing source and extraction.
    Files: ("file", sha256, mode); symlinks: ("symlink", target); directories:
    ("dir", mode) when the directory is empty or not 0755 (it is a kit member), else
    ("dir", None)."""
    root = Path(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            if rel.split("/")[0] in exclude:
                continue
            st = os.lstat(p)
            if os.path.islink(p):
                out[rel] = ("symlink", os.readlink(p))
            elif p.is_dir():
                mode = st.st_mode & 0o7777
                explicit = mode != 0o755 or not any(os.scandir(p))
                out[rel] = ("dir", mode if explicit else None)
            else:
                out[rel] = ("file", sha256_file(p), st.st_mode & 0o7777)
    return out


def expected_artifacts(root):
    """The manifest artifacts a source tree must produce, computed independently:
    {name: entry}; regular files via artifact_entry(), symlinks, and directory entries
    for empty or non-0755 directories."""
    root = Path(root)
    out = {}
    for rel, desc in snapshot_tree(root).items():
        if desc[0] == "file":
            out[rel] = artifact_entry(root / rel, rel)
        elif desc[0] == "symlink":
            out[rel] = {"name": rel, "type": "symlink", "target": desc[1]}
        elif desc[1] is not None:
            out[rel] = {"name": rel, "type": "directory", "mode": desc[1]}
    return out


# --------------------------------------------------------------------------- packing

def pack(src, out, keys, *extra, compress="none", sde=CREATED_EPOCH, identity=True,
         components=False):
    """Run `stellakit pack` with -k for each key (Key or path), the test identity options
    (IDENTITY) and SOURCE_DATE_EPOCH=sde; returns the CompletedProcess."""
    args = ["pack"]
    for k in keys:
        args += ["-k", k.key if isinstance(k, Key) else k]
    if identity:
        args += IDENTITY
    if components:
        args += COMPONENT_ARGS
    if compress is not None:
        args += ["--compress", compress]
    args += list(extra) + [src, out]
    env = {"SOURCE_DATE_EPOCH": sde} if sde is not None else None
    return run(*args, env=env)


def gnu_tar_extract(kit, dest, compress=None):
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    flag = {"gzip": ["-z"], "zstd": ["--zstd"]}.get(compress or compression_of(kit), [])
    sh("tar", *flag, "-xf", kit, "-C", dest, env={"LC_ALL": "C.UTF-8"})
    return dest


def copy_tree(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    # copytree copies directory modes after the contents; re-apply to be sure
    for dirpath, dirnames, _ in os.walk(src):
        for d in dirnames:
            p = Path(dirpath) / d
            if not p.is_symlink():
                os.chmod(Path(dst) / p.relative_to(src), os.lstat(p).st_mode & 0o7777)
    return Path(dst)


# --------------------------------------------------------------------------- mounting (stellafs)

FS_BIN = Path(os.environ.get("STELLAFS") or (REPO / "build" / "fs" / "stellafs"))
BLOCK = 4096


def run_fs(*args, timeout=60, preexec_fn=None):
    """Run stellafs with ARGS (no -f: it returns once mounted, or refuses).  stdout and
    stderr go to temporary files, not pipes, so that a daemon which kept them open
    cannot hang the test; returns a CompletedProcess with text stdout/stderr."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.run([str(FS_BIN)] + _strs(args), stdout=out, stderr=err,
                           stdin=subprocess.DEVNULL, timeout=timeout, preexec_fn=preexec_fn)
        out.seek(0)
        err.seek(0)
        p.stdout = out.read().decode("utf-8", "replace")
        p.stderr = err.read().decode("utf-8", "replace")
    return p


def _unescape_mountinfo(s):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mount_entry(path):
    """The /proc/self/mountinfo line (split) whose mount point is PATH, or None."""
    want = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape_mountinfo(fields[4]) == want:
                return fields
    return None


def is_mounted(path):
    return mount_entry(path) is not None or os.path.ismount(path)


def unmount(path, tries=20):
    """Unmount PATH: umount, retried while busy; at last a lazy unmount.  Returns True
    when PATH is no longer a mount point."""
    for _ in range(tries):
        if not is_mounted(path):
            return True
        subprocess.run(["umount", str(path)], capture_output=True, timeout=30)
        if not is_mounted(path):
            return True
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)
    return not is_mounted(path)


def assert_fs_fail(cp, code, *keywords):
    """The refusal contract of stellafs (see _assert_refusal)."""
    return _assert_refusal(cp, "stellafs", code, keywords)


@dataclasses.dataclass
class Mount:
    path: Path          # the mount point
    kit: Path
    cache: Path
    cp: subprocess.CompletedProcess

    def snap(self, version):
        return self.path / "snapshots" / version

    def text(self, name):
        return (self.path / name).read_text()

    def status(self):
        return json.loads((self.path / "status.json").read_text())

    def metrics(self):
        return parse_metrics((self.path / "metrics").read_text())

    def control(self, cmd):
        return control_write(self.path / "control", cmd)


class Mounter:
    """Mounts kits under BASE and unmounts every one of them in close() (call it from a
    fixture's teardown, so that a failing test never leaves a mount behind)."""

    def __init__(self, base):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        # Mount points live in a world-traversable directory of their own (pytest's
        # tmp_path is under a 0700 directory), so that other users can reach the mounts.
        self.mntbase = Path(tempfile.mkdtemp(prefix="stellafs-test-", dir="/tmp"))
        os.chmod(self.mntbase, 0o755)
        self.points = []
        self.n = 0

    def _fresh(self, stem):
        self.n += 1
        p = (self.mntbase if stem == "mnt" else self.base) / f"{stem}{self.n}"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def try_mount(self, kit, trust=None, *opts, cache=None, mnt=None, args=None):
        """Run stellafs on KIT; returns (CompletedProcess, mount point).  Whatever got
        mounted is unmounted in close()."""
        mnt = Path(mnt) if mnt is not None else self._fresh("mnt")
        if cache is None:
            cache = self._fresh("cache")
        if args is None:
            o = []
            if trust is not None:
                o.append(f"trust={trust}")
            o.append(f"cache={cache}")
            o += list(opts)
            args = ["-o", ",".join(_strs(o)), kit, mnt]
        self.points.append(mnt)
        cp = run_fs(*args)
        return cp, mnt

    def mount(self, kit, trust, *opts, cache=None, mnt=None) -> Mount:
        """Mount KIT; any failure to mount is an AssertionError (a test failure)."""
        if cache is None:
            cache = self._fresh("cache")
        cp, mnt = self.try_mount(kit, trust, *opts, cache=cache, mnt=mnt)
        assert cp.returncode == 0, f"stellafs failed to mount {kit}\n" + describe(cp)
        assert is_mounted(mnt), f"stellafs exited 0 but {mnt} is not mounted\n" + describe(cp)
        return Mount(Path(mnt), Path(kit), Path(cache), cp)

    def umount(self, mnt):
        assert unmount(mnt), f"could not unmount {mnt}"

    def close(self):
        bad = [p for p in self.points if not unmount(p)]
        self.points = []
        if not bad:  # only empty, unmounted directories are removed
            for p in sorted(self.mntbase.iterdir(), reverse=True):
                try:
                    os.rmdir(p)
                except OSError:
                    pass
            try:
                os.rmdir(self.mntbase)
            except OSError:
                pass
        return bad


def control_write(path, cmd):
    """Write one command to a control file with a single write(2); returns 0 or the errno
    of open/write/close."""
    data = cmd if isinstance(cmd, bytes) else cmd.encode()
    if not data.endswith(b"\n"):
        data += b"\n"
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        return e.errno
    err = 0
    try:
        n = os.write(fd, data)
        assert n == len(data), f"short write to control: {n} of {len(data)}"
    except OSError as e:
        err = e.errno
    finally:
        try:
            os.close(fd)
        except OSError as e:
            err = err or e.errno
    return err


_METRIC_LINE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_metrics(text):
    """Parse Prometheus text format 0.0.4 strictly: {(name, ((label, value), ...)): float}.
    Every sample line must parse, and its metric family must have a # TYPE line before
    it."""
    out = {}
    types = {}
    for ln in text.splitlines():
        if not ln.strip():
            continue
        if ln.startswith("#"):
            parts = ln.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), ln
                types[parts[2]] = parts[3]
            continue
        m = _METRIC_LINE.match(ln)
        assert m, f"metrics: unparsable line {ln!r}"
        name, labels_s, value = m.group(1), m.group(3), m.group(4)
        labels = []
        if labels_s:
            pos = 0
            while pos < len(labels_s):
                lm = _LABEL.match(labels_s, pos)
                assert lm, f"metrics: bad labels in {ln!r}"
                labels.append((lm.group(1), lm.group(2)))
                pos = lm.end()
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or family in types, f"metrics: no # TYPE before {ln!r}"
        key = (name, tuple(labels))
        assert key not in out, f"metrics: duplicate sample {ln!r}"
        out[key] = float(value)
    return out


def metric(metrics, name, **labels):
    key = (name, tuple(labels.items()))
    assert key in metrics, f"metric {name}{labels or ''} missing; have {sorted(metrics)}"
    return metrics[key]


DT = {0: "unknown", 1: "fifo", 2: "chr", 4: "dir", 6: "blk", 8: "file", 10: "symlink",
      12: "socket"}


def readdir_types(path):
    """{name: d_type name} of a directory, from readdir(3) via ctypes (glibc, 64-bit
    struct dirent), '.' and '..' included."""
    import ctypes

    class Dirent(ctypes.Structure):
        _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                    ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                    ("d_name", ctypes.c_char * 256)]

    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.opendir.argtypes = [ctypes.c_char_p]
    libc.readdir.restype = ctypes.POINTER(Dirent)
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.closedir.argtypes = [ctypes.c_void_p]
    d = libc.opendir(os.fsencode(path))
    if not d:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
    out = {}
    try:
        while True:
            ctypes.set_errno(0)
            ent = libc.readdir(d)
            if not ent:
                e = ctypes.get_errno()
                if e:
                    raise OSError(e, os.strerror(e), str(path))
                break
            out[os.fsdecode(ent.contents.d_name)] = DT.get(ent.contents.d_type, "?")
    finally:
        libc.closedir(d)
    return out


def tree_listing(root, exclude=()):
    """{relpath: description} of a tree for comparing a mount with an extraction:
    files ("file", size, sha256, mode), symlinks ("symlink", target), directories
    ("dir", mode).  Never follows symlinks."""
    root = Path(root)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            if rel.split("/")[0] in exclude:
                continue
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode & 0o7777)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", st.st_size, sha256_file(p), st.st_mode & 0o7777)
            else:
                out[rel] = ("other", st.st_mode)
    return out


def gnu_tar_extract_022(kit, dest):
    """gnu_tar_extract with umask 022, so that directories implied by names (no member)
    come out 0755 as the mount shows them."""
    old = os.umask(0o022)
    try:
        return gnu_tar_extract(kit, dest)
    finally:
        os.umask(old)


def flip_byte(path, offset):
    """XOR one byte of the file PATH at OFFSET with 0x01, keeping its mtime; returns the
    original byte."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        assert len(b) == 1, f"{path}: no byte at {offset}"
        f.seek(offset)
        f.write(bytes([b[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return b


def member_data_offset(kit, name):
    """Offset of member NAME's data inside an uncompressed tar kit (tarfile's
    TarInfo.offset_data)."""
    with tarfile.open(kit, "r:") as tf:
        for ti in tf:
            if ti.name == name:
                return ti.offset_data
    raise AssertionError(f"{kit}: no member {name}")


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def as_nobody(code, uid=65534, gid=65534, groups=(), timeout=60):
    """Run python CODE in a child with uid/gid 65534 (and supplementary GROUPS);
    returns the CompletedProcess (text)."""
    import sys

    def pre():
        os.setgroups(list(groups))
        os.setgid(gid)
        os.setuid(uid)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=pre, cwd="/")
