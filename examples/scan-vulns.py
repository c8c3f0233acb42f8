#!/usr/bin/env python3
"""scan-vulns.py: match a package inventory against the vulnerability database of a
mounted offline kit, read-only and in place (nothing is copied off /stella).

    scan-vulns.py [--mount /stella] [--min-severity LOW|MEDIUM|HIGH|CRITICAL] [INVENTORY]

INVENTORY (default: standard input) has one package per line, "ECOSYSTEM PACKAGE
VERSION", e.g. "PyPI pkg-001 1.2.0"; blank lines and "#" comments are skipped.
A package is affected when introduced <= VERSION < fixed (dotted numeric versions).

Output: one line per finding, "ID SEVERITY ECOSYSTEM PACKAGE VERSION fixed in FIXED";
then a summary naming the kit version the answers came from.
Exit status: 0 no findings, 1 findings, 2 usage or database error.

The database is opened with SQLite's URI "mode=ro&immutable=1": no journal, no
locks, no writes, which is right for a read-only file system whose every byte is
verified by stellafs (a block that fails verification makes the query fail with
an I/O error rather than return wrong data).  The database path goes through
/stella/feeds, so each run reads the current snapshot; an `activate` during a run
does not change the file the run has open.
"""
import argparse
import json
import os
import sqlite3
import sys
import urllib.parse

SEVERITIES = ["LOW", "MEDIUM", "HIGH", "CRITICAL"]


def vkey(v):
    out = []
    for part in (v or "").split("."):
        num = "".join(ch for ch in part if ch.isdigit())
        out.append(int(num) if num else 0)
    return tuple(out)


def main():
    ap = argparse.ArgumentParser(description="Match an inventory against /stella's vuln.db")
    ap.add_argument("--mount", default="/stella")
    ap.add_argument("--min-severity", default="LOW", choices=SEVERITIES)
    ap.add_argument("inventory", nargs="?")
    a = ap.parse_args()

    db = os.path.join(a.mount, "feeds", "vuln-db", "vuln.db")
    if not os.path.isfile(db):
        print(f"scan-vulns: {db}: not found (is a kit mounted at {a.mount}?)", file=sys.stderr)
        return 2
    try:
        with open(os.path.join(a.mount, "status.json")) as f:
            kit = json.load(f).get("kit", {})
    except (OSError, ValueError):
        kit = {}
    uri = "file:" + urllib.parse.quote(db) + "?mode=ro&immutable=1"
    try:
        con = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        print(f"scan-vulns: {db}: {e}", file=sys.stderr)
        return 2

    src = open(a.inventory) if a.inventory else sys.stdin
    minsev = SEVERITIES.index(a.min_severity)
    findings = checked = 0
    try:
        for lineno, line in enumerate(src, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 3:
                print(f"scan-vulns: {a.inventory or '-'}:{lineno}: expected "
                      f"'ECOSYSTEM PACKAGE VERSION'", file=sys.stderr)
                return 2
            eco, pkg, ver = parts
            checked += 1
            rows = con.execute(
                "SELECT id, severity, introduced, fixed FROM vulns "
                "WHERE package = ? AND ecosystem = ? ORDER BY id", (pkg, eco)).fetchall()
            for vid, sev, intro, fixed in rows:
                if sev in SEVERITIES and SEVERITIES.index(sev) < minsev:
                    continue
                if vkey(intro) <= vkey(ver) and (not fixed or vkey(ver) < vkey(fixed)):
                    findings += 1
                    print(f"{vid} {sev} {eco} {pkg} {ver} fixed in {fixed or 'none'}")
    except sqlite3.Error as e:
        print(f"scan-vulns: {db}: {e}", file=sys.stderr)
        return 2
    finally:
        con.close()
    print(f"# {checked} package(s) checked, {findings} finding(s); database from kit "
          f"{kit.get('kitId', '?')} {kit.get('version', '?')}", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
