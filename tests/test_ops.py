"""Operations (issue #6): installation and mount(8)/fstab, systemd units, the USB import
helper on a real vfat image, the examples/ scripts against a freshly packed demo kit,
man pages and --help.  Real mounts, stdlib only; everything mounted is unmounted in
teardown."""

import json
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

import kitlib
from kitlib import REPO, describe

BUILD = Path(os.environ.get("STELLA_BUILD") or (REPO / "build"))
EXAMPLES = REPO / "examples"
SYSTEMD = REPO / "systemd"
HELPER = SYSTEMD / "stella-usb-import"
KITID = "stella-ops-offline-kit"  # examples/kit.json


def sh(*cmd, env=None, timeout=60, input=None, cwd=None):
    e = dict(os.environ)
    e.pop("SOURCE_DATE_EPOCH", None)
    e.update(env or {})
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=e,
                          timeout=timeout, input=input, cwd=cwd, errors="replace")


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def prefix(tmp_path_factory, stellakit_bin, stellafs_bin):
    """`meson install --destdir` into a temporary directory: the installed tree's
    sbin, bin and man pages."""
    dest = tmp_path_factory.mktemp("destdir")
    cp = sh("meson", "install", "-C", BUILD, "--destdir", dest, "--no-rebuild", "--quiet",
            timeout=120)
    assert cp.returncode == 0, "meson install failed\n" + describe(cp)
    found = {p.name: p for p in dest.rglob("*") if p.is_file()}
    for name in ("stellafs", "stellakit", "stellafs.8", "stellakit.1"):
        assert name in found, f"meson install did not install {name}: {sorted(found)}"
    sbin, bin_ = found["stellafs"].parent, found["stellakit"].parent
    assert sbin.name == "sbin" and bin_.name == "bin", (sbin, bin_)
    assert found["stellafs.8"].parent.name == "man8"
    assert found["stellakit.1"].parent.name == "man1"
    env = {"PATH": f"{sbin}:{bin_}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "STELLAKIT": str(bin_ / "stellakit")}
    return {"dest": dest, "sbin": sbin, "bin": bin_, "env": env,
            "stellakit": bin_ / "stellakit", "stellafs": sbin / "stellafs",
            "man": [found["stellafs.8"], found["stellakit.1"]]}


@pytest.fixture(scope="module")
def demo_src(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "src"
    cp = sh(EXAMPLES / "make-sample-src.sh", out)
    assert cp.returncode == 0, describe(cp)
    assert (out / "feeds/vuln-db/vuln.db").is_file()
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_src, keys):
    """demo(version, sequence, keynames=("ecdsa",), *extra) -> path of a freshly packed
    demo kit (examples/kit.json as the template, created now)."""
    d = tmp_path_factory.mktemp("demokits")

    def make(version="2025.01.15", sequence=20250115, keynames=("ecdsa",), *extra,
             compress="zstd", name=None):
        out = d / (name or f"kit-{version}-{'-'.join(keynames)}.tar"
                   + {"none": "", "gzip": ".gz", "zstd": ".zst"}[compress])
        args = ["pack"]
        for k in keynames:
            args += ["-k", keys[k].key]
        args += ["--template", EXAMPLES / "kit.json", "--version", version,
                 "--sequence", sequence, "--compress", compress, *extra, demo_src, out]
        cp = kitlib.run(*args)
        assert cp.returncode == 0, describe(cp)
        return out

    return make


def trust_dir(base, keys, *names):
    d = Path(tempfile.mkdtemp(prefix="trust-", dir=base))
    for n in names:
        shutil.copy(keys[n].pub, d / f"{n}.pub")
    return d


def store_state(store):
    """What a refused import must not change: every file under STORE (but the SQLite
    WAL/SHM side files, and quarantine/ where refused kits go) with its size and
    content digest, and the store.db tables."""
    files = {}
    for p in sorted(Path(store).rglob("*")):
        if p.is_file() and not re.search(r"store\.db(-wal|-shm)?$", p.name) and \
                p.relative_to(store).parts[0] != "quarantine":
            files[str(p.relative_to(store))] = (p.stat().st_size, kitlib.sha256_file(p))
    con = sqlite3.connect(f"file:{store}/store.db?mode=ro", uri=True)
    try:
        rows = {t: sorted(con.execute(f"select * from {t}").fetchall())
                for t in ("snapshot", "pointer", "ratchet")}
    finally:
        con.close()
    return files, rows


# --------------------------------------------------------------------------- install + mount(8)

def test_installed_mount_helper_runs_stellafs(prefix, demo, keys, tmp_path):
    """mount.fuse3 -- the helper mount(8) runs for fuse.stellafs -- finds the installed
    stellafs on PATH and mounts the kit; the installed stellakit reads its status."""
    kit = demo()
    mnt = Path(tempfile.mkdtemp(prefix="stella-ops-", dir="/tmp"))
    try:
        cp = sh("mount.fuse3", kit, mnt, "-t", "stellafs", "-o",
                f"trust={keys['ecdsa'].pub},cache={tmp_path / 'cache'}", env=prefix["env"])
        assert cp.returncode == 0, describe(cp)
        assert kitlib.is_mounted(mnt)
        assert kitlib.mount_entry(mnt)[-3] == "fuse.stellafs"
        assert (mnt / "health").read_text().splitlines()[0] == "HEALTHY"
        st = sh(prefix["stellakit"], "status", mnt, "--json")
        assert st.returncode == 0, describe(st)
        assert json.loads(st.stdout)["kit"]["kitId"] == KITID
    finally:
        assert kitlib.unmount(mnt)
        os.rmdir(mnt)


def test_mount_t_fuse_stellafs_and_fstab(prefix, demo, keys, tmp_path):
    """`mount -t fuse.stellafs` and an fstab line, for real.  mount(8) runs its helper
    with no PATH, so /bin/sh's default PATH (/usr/local/sbin:...) is what finds
    stellafs: in a private mount namespace the installed sbin/bin are bound over
    /usr/local/sbin and /usr/local/bin, as `meson install` with the default prefix
    would place them."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is missing: cannot isolate /usr/local for mount(8)")
    kit = demo()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{kit} {mnt} fuse.stellafs "
                     f"trust={keys['ecdsa'].pub},cache={tmp_path / 'cache2'},nofail 0 0\n")
    script = f"""
set -e
mount --bind {prefix['sbin']} /usr/local/sbin
mount --bind {prefix['bin']} /usr/local/bin
trap 'umount {mnt} 2>/dev/null || true' EXIT
env -u PATH PATH=/usr/bin:/bin mount -t fuse.stellafs \
    -o trust={keys['ecdsa'].pub},cache={tmp_path / 'cache1'} {kit} {mnt}
echo "type=$(findmnt -n -o FSTYPE {mnt})"
echo "health=$(head -n 1 {mnt}/health)"
stellakit status {mnt} >/dev/null; echo "status=$?"
umount {mnt}
mount -T {fstab} {mnt}
echo "fstab=$(head -n 1 {mnt}/health)"
umount {mnt}
"""
    cp = sh("unshare", "-m", "--propagation", "private", "/bin/bash", "-c", script,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"})
    if cp.returncode != 0 and "unshare failed" in cp.stderr:
        pytest.skip(f"no mount namespaces here: {cp.stderr.strip()}")
    assert cp.returncode == 0, describe(cp)
    assert "type=fuse.stellafs" in cp.stdout, describe(cp)
    assert "health=HEALTHY" in cp.stdout and "status=0" in cp.stdout, describe(cp)
    assert "fstab=HEALTHY" in cp.stdout, describe(cp)
    assert not kitlib.is_mounted(mnt)


def test_man_pages_render_without_warnings(prefix):
    for page in prefix["man"]:
        cp = sh("man", "--warnings", "-l", page, env={"MANWIDTH": "80", "LC_ALL": "C.UTF-8"})
        assert cp.returncode == 0, describe(cp)
        assert cp.stderr == "", f"{page.name}: warnings\n{cp.stderr}"
        assert "EXIT STATUS" in cp.stdout and len(cp.stdout.splitlines()) > 100


# stellakit(1), stellafs(8): the programs' command lines
STELLAFS_HELP = ["-f", "-o", "trust=", "threshold=", "now=", "allow_expired", "incoming=",
                 "auto_activate", "admin_gid=", "allow_other", "SOURCE", "MOUNTPOINT"]
STELLAKIT_CMDS = {
    "keygen": ["--type", "ecdsa-p256", "ed25519", "rsa-3072", "PREFIX"],
    "pack": ["-k", "--template", "--kit-id", "--version", "--sequence", "--channel",
             "--created-at", "--expires-at", "--expires-in", "--component", "warn=", "max=",
             "captured-at=", "records=", "--compress", "none", "gzip", "zstd", "--base",
             "SRC_DIR", "OUT_KIT"],
    "verify": ["-t", "--threshold", "--now", "--allow-expired", "--cacert", "--mirror", "--timeout", "URL"],
    "inspect": ["--json"],
    "diff": ["OLD_KIT", "NEW_KIT"],
    "import": ["-s", "-t", "--threshold", "--now", "--activate", "--cacert", "--mirror", "--timeout", "URL"],
    "status": ["MOUNTPOINT", "-s", "--json"],
}


def test_help_names_every_spec_option(prefix):
    cp = sh(prefix["stellafs"], "--help")
    assert cp.returncode == 0, describe(cp)
    for opt in STELLAFS_HELP:
        assert opt in cp.stdout, f"stellafs --help does not name {opt}"
    top = sh(prefix["stellakit"], "--help")
    assert top.returncode == 0, describe(top)
    for cmd, opts in STELLAKIT_CMDS.items():
        assert re.search(rf"^\s+{cmd}\b", top.stdout, re.M), f"stellakit --help lacks {cmd}"
        for opt in opts:
            assert opt in top.stdout, f"stellakit --help does not name {cmd} {opt}"
        sub = sh(prefix["stellakit"], cmd, "--help")
        assert sub.returncode == 0, describe(sub)
        for opt in opts:
            assert opt in sub.stdout, f"stellakit {cmd} --help does not name {opt}"


# --------------------------------------------------------------------------- systemd

def rendered_units(prefix, out):
    """The unit templates with meson's substitutions (systemd/meson.build), pointing
    at the installed tree."""
    subst = {"@SBINDIR@": str(prefix["sbin"]), "@BINDIR@": str(prefix["bin"]),
             "@LIBEXECDIR@": str(SYSTEMD), "@UMOUNT@": "/bin/umount", "@MKDIR@": "/bin/mkdir"}
    units = {}
    for t in sorted(SYSTEMD.glob("*.service.in")):
        text = t.read_text()
        for k, v in subst.items():
            text = text.replace(k, v)
        assert not re.search(r"@[A-Z]+@", text), f"{t.name}: unsubstituted @VAR@"
        p = out / t.name[:-3]
        p.write_text(text)
        units[p.name] = p
    return units


def test_units_are_sound(prefix, tmp_path):
    units = rendered_units(prefix, tmp_path)
    assert set(units) == {"stellafs@.service", "stella-usb-import@.service"}
    fs = units["stellafs@.service"].read_text()
    for line in ("Type=forking", "Restart=on-failure", "DeviceAllow=/dev/fuse rw",
                 "DevicePolicy=closed", "NoNewPrivileges=yes"):
        assert re.search(rf"^{re.escape(line)}$", fs, re.M), f"stellafs@.service: no {line}"
    assert not re.search(r"^(ProtectSystem|PrivateTmp|PrivateMounts|ProtectHome)=", fs, re.M), \
        "a private mount namespace would hide the FUSE mount from the host"
    usb = units["stella-usb-import@.service"].read_text()
    for line in ("Type=oneshot", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 f"ExecStart={HELPER} /dev/%I"):
        assert re.search(rf"^{re.escape(line)}$", usb, re.M), f"usb unit: no {line}"
    rule = (SYSTEMD / "61-stella-usb.rules").read_text()
    assert 'ENV{SYSTEMD_WANTS}+="stella-usb-import@%k.service"' in rule
    assert 'ENV{ID_BUS}=="usb"' in rule and 'ACTION=="add"' in rule
    assert os.access(HELPER, os.X_OK)
    mb = (SYSTEMD / "meson.build").read_text()
    for name in ("stellafs@.service", "stella-usb-import@.service", "stella-usb-import",
                 "61-stella-usb.rules"):
        assert name in mb, f"systemd/meson.build does not install {name}"

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: units checked statically only")
    inst = {"stellafs@.service": "stellafs@store.service",
            "stella-usb-import@.service": "stella-usb-import@sdb1.service"}
    for tmpl, name in inst.items():
        cp = sh("systemd-analyze", "verify", "--man=no", f"./{name}", cwd=tmp_path)
        assert cp.returncode == 0 and cp.stderr.strip() == "" and cp.stdout.strip() == "", \
            f"systemd-analyze verify {tmpl}\n" + describe(cp)
    # and it does catch a broken unit (so the check above means something)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "stellafs@.service").write_text(
        units["stellafs@.service"].read_text().replace(str(prefix["sbin"]), "/nonexistent"))
    cp = sh("systemd-analyze", "verify", "--man=no", "./stellafs@store.service", cwd=bad)
    assert cp.returncode != 0 and "nonexistent" in cp.stderr


# --------------------------------------------------------------------------- USB import

@pytest.fixture
def usb_stick(tmp_path):
    """make(files) -> a real FAT file system image holding FILES, mounted read-only:
    with the kernel's vfat through a loop device, or, where the kernel has no vfat
    (containers), with fusefat.  Unmounted in teardown."""
    mounted = []

    def make(files):
        img = tmp_path / f"usb{len(mounted)}.img"
        with open(img, "wb") as f:
            f.truncate(32 * 1024 * 1024)
        cp = sh("mkfs.vfat", "-n", "STELLAKITS", img)
        assert cp.returncode == 0, "mkfs.vfat (dosfstools) is needed\n" + describe(cp)
        cp = sh("mcopy", "-i", img, *files, "::")
        assert cp.returncode == 0, "mcopy (mtools) is needed\n" + describe(cp)
        mnt = tmp_path / f"usbmnt{len(mounted)}"
        mnt.mkdir()
        mounted.append(mnt)
        cp = sh("mount", "-t", "vfat", "-o", "loop,ro,nosuid,nodev,noexec", img, mnt)
        if cp.returncode != 0:
            if "vfat" not in open("/proc/filesystems").read() and shutil.which("fusefat"):
                cp = sh("fusefat", "-o", "ro", img, mnt)
            assert cp.returncode == 0, "cannot mount the vfat image (loop or fusefat)\n" \
                + describe(cp)
        assert kitlib.is_mounted(mnt)
        return mnt

    yield make
    for m in mounted:
        assert kitlib.unmount(m), f"could not unmount {m}"


def run_helper(prefix, *args):
    return sh(HELPER, *args, env=prefix["env"], timeout=60)


def test_usb_import_through_control(prefix, demo, keys, mounter, usb_stick, tmp_path):
    """Store mounted: the newest kit on the stick is tampered and is refused with its
    reason, changing nothing; the newest valid one is imported through the control
    file (so the control journal shows it), not activated."""
    store = tmp_path / "store"
    v1 = demo("2025.01.15", 20250115)
    cp = kitlib.run("import", "-s", store, "-t", keys["ecdsa"].pub, v1)
    assert cp.returncode == 0, describe(cp)
    good = demo("2025.01.16", 20250116, compress="none")
    bad = demo("2025.01.17", 20250117, compress="none", name="tampered.tar")
    data = bytearray(bad.read_bytes())
    # vuln.db's own bytes (the kit's index, manifest/index, is an SQLite file too)
    i = kitlib.member_data_offset(bad, "feeds/vuln-db/vuln.db")
    assert data[i:i + 15] == b"SQLite format 3"
    data[i + 40000] ^= 0x01
    bad.write_bytes(data)
    stick = usb_stick([good, f"{good}.sha256", f"{good}.sig", bad])

    m = mounter.mount(store, keys["ecdsa"].pub)
    stage = tmp_path / "stage"
    cp = run_helper(prefix, "-s", store, "-t", keys["ecdsa"].pub, "-m", m.path,
                    "--stage", stage, stick)
    assert cp.returncode == 0, describe(cp)
    err = cp.stderr.lower()
    assert re.search(r"<3>.*refused .*tampered\.tar.*2025\.01\.17.*exit 4.*ebadmsg.*vuln\.db"
                     r".*mismatch", err), describe(cp)
    assert re.search(r"<5>.*imported .*2025\.01\.16", err), describe(cp)
    assert "control" in err
    journal = m.text("control")
    assert re.search(r"uid=0 import \S*tampered\.tar -> EBADMSG: .*mismatch", journal, re.I)
    assert re.search(r"uid=0 import \S+ -> ok: .*2025\.01\.16", journal)
    assert sorted(os.listdir(m.path / "snapshots")) == ["2025.01.15", "2025.01.16"]
    assert m.status()["current"] == "2025.01.15"          # imported, not activated
    assert list(stage.iterdir()) == []                     # staged copies removed
    # the refused kit is kept on the host with its reason; the imported one is not
    # (FAT may give the short name, TAMPERED.TAR)
    q = store / "quarantine"
    quarantined = sorted(os.listdir(q))
    assert [n.lower() for n in quarantined] == ["tampered.tar", "tampered.tar.reason"]
    assert (q / quarantined[0]).read_bytes() == bad.read_bytes()
    assert re.search(r"EBADMSG: .*mismatch", (q / quarantined[1]).read_text(), re.I)
    # The valid kit, checked the way the runbook says, from the stick itself
    assert sh("sha256sum", "-c", f"{good.name}.sha256", cwd=stick).returncode == 0

    # Again: nothing newer is left, and the bad kit still changes nothing
    before = store_state(store)
    cp = run_helper(prefix, "-s", store, "-t", keys["ecdsa"].pub, "-m", m.path, stick)
    assert cp.returncode == 4, describe(cp)                # the newest refusal's code
    assert re.search(r"refused .*2025\.01\.16.*exit 7.*estale", cp.stderr.lower()), describe(cp)
    assert store_state(store) == before
    # a stale kit (exit 7) is the normal second plug of a stick: not quarantined
    assert sorted(os.listdir(store / "quarantine")) == quarantined


def test_usb_import_offline_store(prefix, demo, keys, usb_stick, tmp_path):
    """Store not mounted: stellakit import; a stick with only a badly signed kit is
    refused with exit 5 and changes nothing."""
    store = tmp_path / "store"
    cp = kitlib.run("import", "-s", store, "-t", keys["ecdsa"].pub,
                    demo("2025.01.15", 20250115))
    assert cp.returncode == 0, describe(cp)
    before = store_state(store)
    untrusted = demo("2025.02.01", 20250201, ("untrusted",), name="untrusted.tar.zst")
    stick = usb_stick([untrusted])
    nomnt = tmp_path / "not-mounted"
    nomnt.mkdir()
    cp = run_helper(prefix, "-s", store, "-t", keys["ecdsa"].pub, "-m", nomnt, stick)
    assert cp.returncode == 5, describe(cp)
    assert re.search(r"refused .*untrusted\.tar\.zst.*exit 5: stellakit: .*(signature|trust)",
                     cp.stderr.lower()), describe(cp)
    q = store / "quarantine"
    quarantined = sorted(os.listdir(q))
    assert [n.lower() for n in quarantined] == ["untrusted.tar.zst", "untrusted.tar.zst.reason"]
    assert re.search(r"signature|trust", (q / quarantined[1]).read_text(), re.I)
    assert store_state(store) == before

    newer = demo("2025.02.02", 20250202)
    older = demo("2025.01.20", 20250120)
    stick2 = usb_stick([older, newer])
    cp = run_helper(prefix, "-s", store, "-t", keys["ecdsa"].pub, "-m", nomnt, stick2)
    assert cp.returncode == 0, describe(cp)
    assert "stellakit import" in cp.stderr
    st = json.loads(kitlib.run("status", "-s", store, "--json").stdout)
    assert sorted(st["snapshots"]) == ["2025.01.15", "2025.02.02"], st["snapshots"]

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("no kits here\n")
    cp = run_helper(prefix, "-s", store, "-t", keys["ecdsa"].pub, "-m", nomnt, empty)
    assert cp.returncode == 0 and "no kit" in cp.stderr, describe(cp)
    cp = run_helper(prefix, "--bogus", empty)
    assert cp.returncode == 2, describe(cp)


# --------------------------------------------------------------------------- examples

def test_scanner_example(prefix, demo, demo_src, keys, mounter, tmp_path):
    m = mounter.mount(demo(), keys["ecdsa"].pub)
    before = m.status()["integrity"]["verifiedBytes"]
    # The oracle: the source database, queried directly
    con = sqlite3.connect(demo_src / "feeds/vuln-db/vuln.db")
    rows = con.execute("select id, ecosystem, package, introduced, fixed from vulns "
                       "where package in ('pkg-001','pkg-002')").fetchall()
    con.close()
    assert rows
    vid, eco, pkg, intro, fixed = rows[0]
    inv = tmp_path / "inventory"
    inv.write_text(f"# test inventory\n{eco} {pkg} {intro}\n{eco} {pkg} {fixed}\n"
                   f"{eco} no-such-package 1.0.0\n")
    cp = sh(EXAMPLES / "scan-vulns.py", "--mount", m.path, inv)
    assert cp.returncode == 1, describe(cp)
    expect = [r for r in rows if r[1] == eco and r[2] == pkg
              and r[3] <= intro and (intro < r[4])]
    assert vid in cp.stdout
    assert len(cp.stdout.splitlines()) == len(expect), describe(cp)
    assert f"{vid} " in cp.stdout and f"fixed in {fixed}" in cp.stdout
    assert "2025.01.15" in cp.stderr
    assert m.status()["integrity"]["verifiedBytes"] > before   # read through stellafs

    clean = sh(EXAMPLES / "scan-vulns.py", "--mount", m.path,
               input=f"{eco} {pkg} 999.0.0\n")
    assert clean.returncode == 0 and clean.stdout == "", describe(clean)
    assert sorted(os.listdir(m.path / "feeds/vuln-db")) == ["vuln.db"]   # nothing written
    gone = sh(EXAMPLES / "scan-vulns.py", "--mount", tmp_path / "nowhere", input="")
    assert gone.returncode == 2 and "not found" in gone.stderr


def test_monitoring_examples(prefix, demo, keys, mounter, tmp_path):
    env = prefix["env"]
    ok = mounter.mount(demo(), keys["ecdsa"].pub)
    cp = sh(EXAMPLES / "check_stellafs", ok.path, env=env)
    assert cp.returncode == 0, describe(cp)
    assert re.match(rf"STELLAFS OK - {KITID} 2025\.01\.15 .*\| expiry_days=", cp.stdout)

    warn = mounter.mount(demo("2025.01.20", 20250120, ("ecdsa",), "--expires-in", "3"),
                         keys["ecdsa"].pub)
    cp = sh(EXAMPLES / "check_stellafs", warn.path, env=env)
    assert cp.returncode == 1 and cp.stdout.startswith("STELLAFS WARNING"), describe(cp)
    assert "kit-expiry" in cp.stdout

    crit = mounter.mount(demo("2020.01.01", 20200101, ("ecdsa",), "--created-at",
                              "2020-01-01T00:00:00Z", "--expires-at", "2020-02-01T00:00:00Z"),
                         keys["ecdsa"].pub, "allow_expired")
    cp = sh(EXAMPLES / "check_stellafs", crit.path, env=env)
    assert cp.returncode == 2 and cp.stdout.startswith("STELLAFS CRITICAL"), describe(cp)

    cp = sh(EXAMPLES / "check_stellafs", tmp_path, env=env)
    assert cp.returncode == 3 and cp.stdout.startswith("STELLAFS UNKNOWN"), describe(cp)

    tdir = tmp_path / "textfile"
    tdir.mkdir()
    cp = sh(EXAMPLES / "stellafs-textfile", ok.path, tdir)
    assert cp.returncode == 0, describe(cp)
    prom = tdir / "stellafs.prom"
    metrics = kitlib.parse_metrics(prom.read_text())
    assert kitlib.metric(metrics, "stellafs_health_status") == 0
    assert kitlib.metric(metrics, "stellafs_up") == 1
    assert oct(prom.stat().st_mode & 0o777) == "0o644"
    ino = prom.stat().st_ino
    cp = sh(EXAMPLES / "stellafs-textfile", crit.path, tdir)
    assert cp.returncode == 0, describe(cp)
    assert prom.stat().st_ino != ino                 # replaced by rename, not rewritten
    assert kitlib.metric(kitlib.parse_metrics(prom.read_text()), "stellafs_health_status") == 2
    cp = sh(EXAMPLES / "stellafs-textfile", tmp_path / "nowhere", tdir)
    assert cp.returncode == 1, describe(cp)
    metrics = kitlib.parse_metrics(prom.read_text())
    assert kitlib.metric(metrics, "stellafs_up") == 0
    assert [p.name for p in tdir.iterdir()] == ["stellafs.prom"]   # no temporary left


def test_key_rotation_example(prefix, demo, keys, mounter, tmp_path):
    env = prefix["env"]
    rot = EXAMPLES / "rotate-keys.sh"
    both = demo("2025.01.15", 20250115, ("ecdsa", "ecdsa2"))
    # 1. trust the old key; add the new one, then retire the old one
    t = trust_dir(tmp_path, keys, "ecdsa")
    m = mounter.mount(both, t)
    cp = sh(rot, "-m", m.path, "--check", both, t, "add", keys["ecdsa2"].pub, env=env)
    assert cp.returncode == 0, describe(cp)
    assert sorted(os.listdir(t)) == ["ecdsa.pub", "ecdsa2.pub"]
    cp = sh(rot, "-m", m.path, t, "retire", "ecdsa.pub", env=env)
    assert cp.returncode == 0, describe(cp)
    assert sorted(os.listdir(t)) == ["ecdsa2.pub"]
    assert len(re.findall(r" reload -> ok", m.text("control"))) == 2
    assert m.text("health").startswith("HEALTHY")

    # 2. threshold=2: retiring one of two keys would leave one signature: refused, undone
    t2 = trust_dir(tmp_path, keys, "ecdsa", "ecdsa2")
    m2 = mounter.mount(both, t2, "threshold=2")
    cp = sh(rot, "-m", m2.path, t2, "retire", "ecdsa.pub", env=env)
    assert cp.returncode == 1, describe(cp)
    assert "undone" in cp.stderr and "EKEYREJECTED" in cp.stderr, describe(cp)
    assert sorted(os.listdir(t2)) == ["ecdsa.pub", "ecdsa2.pub"]
    assert re.search(r"reload -> EKEYREJECTED.*\n.*reload -> ok", m2.text("control"))
    assert m2.text("health").startswith("HEALTHY")

    # 3. --check: a kit the new key set would not accept stops the change up front
    only_old = demo("2025.01.16", 20250116, ("ecdsa",))
    t3 = trust_dir(tmp_path, keys, "ecdsa", "ecdsa2")
    cp = sh(rot, "-m", tmp_path / "nomount", "--check", only_old, t3, "retire", "ecdsa.pub",
            env=env)
    assert cp.returncode == 1 and "would not verify" in cp.stderr, describe(cp)
    assert sorted(os.listdir(t3)) == ["ecdsa.pub", "ecdsa2.pub"]


# --------------------------------------------------------------------------- runbook

def test_runbook_covers_codes_and_errnos():
    text = (REPO / "docs" / "runbook.md").read_text()
    for code in range(8):
        assert re.search(rf"^\|\s*{code}\s*\|", text, re.M), f"runbook: exit code {code}"
    for e in ("EINVAL", "ENOENT", "EACCES", "EKEYREJECTED", "ESTALE", "EBUSY", "EBADMSG",
              "EEXIST", "EOPNOTSUPP", "EIO"):
        assert re.search(rf"^\|\s*`?{e}`?\s*\|", text, re.M), f"runbook: errno {e}"
    for what in ("sha256sum -c", "openssl dgst", "stellakit verify", "rollback", "reload",
                 "stellafs@", "stella-usb-import", "check_stellafs", "stellafs-textfile",
                 "scan-vulns.py", "rotate-keys.sh"):
        assert what in text, f"runbook does not mention {what}"
