"""The drop-in that lets stellafs@.service reach a site mirror (systemd/stellafs-mirror.conf,
docs/mirrors.md "systemd"): it opens exactly IP to the listed addresses and nothing more,
and systemd itself (systemd-analyze verify, on the configured unit with the drop-in in
its .d directory) finds nothing wrong in it.  The nspawn stage (tests/systemd/) boots the
unit without it; this is the cheap lint of the drop-in."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DROPIN = REPO / "systemd" / "stellafs-mirror.conf"


def assignments(path: Path) -> list:
    """(section, key, value) in file order, as systemd reads them (comments skipped)."""
    out, section = [], None
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("["):
            section = s.strip("[]")
            continue
        k, _, v = s.partition("=")
        out.append((section, k.strip(), v.strip()))
    return out


def test_dropin_allows_exactly_ip_to_listed_addresses():
    a = assignments(DROPIN)
    assert {s for s, _, _ in a} == {"Service"}
    keys = {k for _, k, _ in a}
    # nothing but the address families and the allowed addresses
    assert keys == {"RestrictAddressFamilies", "IPAddressAllow"}, keys
    fam = [v for _, k, v in a if k == "RestrictAddressFamilies"]
    # reset first, then exactly UNIX + IPv4 + IPv6
    assert fam[0] == "" and len(fam) == 2
    assert set(fam[1].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    allow = [v for _, k, v in a if k == "IPAddressAllow"]
    assert allow and "any" not in allow and "" not in allow, allow
    # IPAddressDeny=any of the unit is kept (not reset here)
    unit = (REPO / "systemd" / "stellafs@.service.in").read_text()
    assert "\nIPAddressDeny=any\n" in unit and "\nRestrictAddressFamilies=AF_UNIX\n" in unit


def test_systemd_accepts_the_dropin(tmp_path):
    sa = shutil.which("systemd-analyze")
    if not sa:
        pytest.fail("systemd-analyze is needed to lint the drop-in", pytrace=False)
    build = Path(os.environ.get("STELLA_BUILD") or REPO / "build")
    unit = build / "systemd" / "stellafs@.service"
    assert unit.is_file(), f"{unit}: build the tree first (meson compile)"
    d = tmp_path / "units"
    (d / "stellafs@lint.service.d").mkdir(parents=True)
    shutil.copy(unit, d / "stellafs@.service")
    shutil.copy(DROPIN, d / "stellafs@lint.service.d" / "mirror.conf")
    cp = subprocess.run([sa, "verify", "--man=no", str(d / "stellafs@lint.service")], capture_output=True,
                        text=True, timeout=60, env=dict(os.environ, SYSTEMD_UNIT_PATH=f"{d}:"))
    out = cp.stdout + cp.stderr
    # the daemon is not installed here (that complaint is the environment's); any
    # complaint about the drop-in is a failure
    about_dropin = [l for l in out.splitlines() if "mirror.conf" in l]
    assert not about_dropin, out
    # and a broken drop-in would be reported (the check can fail)
    bad = d / "stellafs@lint.service.d" / "mirror.conf"
    bad.write_text(DROPIN.read_text() + "IPAddressAllow=not-an-address\n")
    cp = subprocess.run([sa, "verify", "--man=no", str(d / "stellafs@lint.service")], capture_output=True,
                        text=True, timeout=60, env=dict(os.environ, SYSTEMD_UNIT_PATH=f"{d}:"))
    assert "mirror.conf" in cp.stdout + cp.stderr
