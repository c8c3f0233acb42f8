#!/usr/bin/env bash
# Build the sample kit source tree the README's demo packs: a small but
# realistic offline kit (a SQLite vulnerability database, OSV-style JSON
# advisories, a trust bundle, a rules folder).  Deterministic: the same
# bytes every run, so the demo kit's digests are reproducible.
#
#   examples/make-sample-src.sh OUT_DIR
set -euo pipefail
out=${1:?usage: make-sample-src.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$out"
mkdir -p "$out/feeds/vuln-db" "$out/feeds/advisories" "$out/trust" "$out/rules"

# Advisories and rules are shipped as files in examples/kit-src.
cp -R "$here/kit-src/." "$out/"

# The vulnerability database: generated rows, a real SQLite file.
sqlite3 "$out/feeds/vuln-db/vuln.db" <<'SQL'
PRAGMA page_size = 4096;
CREATE TABLE vulns (id TEXT PRIMARY KEY, package TEXT NOT NULL, ecosystem TEXT NOT NULL,
                    introduced TEXT, fixed TEXT, severity TEXT NOT NULL, summary TEXT);
CREATE INDEX vulns_package ON vulns(package);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
INSERT INTO vulns
SELECT printf('STELLA-2025-%05d', i),
       printf('pkg-%03d', i % 400),
       CASE i % 3 WHEN 0 THEN 'Debian' WHEN 1 THEN 'PyPI' ELSE 'npm' END,
       printf('%d.%d.0', i % 7, i % 5),
       printf('%d.%d.1', i % 7, i % 5 + 1),
       CASE i % 4 WHEN 0 THEN 'CRITICAL' WHEN 1 THEN 'HIGH' WHEN 2 THEN 'MEDIUM' ELSE 'LOW' END,
       printf('Sample advisory %d for package pkg-%03d', i, i % 400)
FROM n;
VACUUM;
SQL
ln -s vuln-db "$out/feeds/latest"
