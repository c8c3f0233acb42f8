#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install what is missing,
# build, generate the sample kit source, make a signing key, pack and sign
# the example kit, verify it as an operator would, mount it with stellafs
# and show its status.  Everything it makes goes to ./demo (or $1); the kit
# stays mounted at ./demo/mnt for you to explore (umount demo/mnt when done).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
out=${1:-$top/demo}

scripts/deps.sh
[ -f build/build.ninja ] || meson setup build >/dev/null
meson compile -C build >/dev/null
sk=build/tools/stellakit

mkdir -p "$out"
examples/make-sample-src.sh "$out/src"
[ -f "$out/signer.key" ] || "$sk" keygen --type ecdsa-p256 "$out/signer"
version=$(date -u +%Y.%m.%d)
sequence=$(date -u +%Y%m%d%H%M)

echo "== pack"
"$sk" pack -k "$out/signer.key" --template examples/kit.json \
	--version "$version" --sequence "$sequence" --compress gzip "$out/src" "$out/kit.tar.gz"
echo "== transfer checks (sha256sum, openssl)"
(cd "$out" && sha256sum -c kit.tar.gz.sha256)
base64 -d "$out/kit.tar.gz.sig" >"$out/kit.tar.gz.sig.der"
openssl dgst -sha256 -verify "$out/signer.pub" -signature "$out/kit.tar.gz.sig.der" "$out/kit.tar.gz"
echo "== verify"
"$sk" verify -t "$out/signer.pub" "$out/kit.tar.gz"
echo "== inspect"
"$sk" inspect "$out/kit.tar.gz" | head -n 20
echo "== mount (stellafs, direct mode)"
mnt="$out/mnt"
mkdir -p "$mnt"
mountpoint -q "$mnt" && umount "$mnt"
build/fs/stellafs -o "trust=$out/signer.pub,cache=$out/cache" "$out/kit.tar.gz" "$mnt"
ls -l "$mnt" "$mnt/feeds/"
echo "== a scanner reads the feed in place"
sqlite3 -readonly "$mnt/feeds/vuln-db/vuln.db" \
	"SELECT severity, count(*) FROM vulns GROUP BY severity ORDER BY count(*) DESC;"
echo "== cat $mnt/status"
cat "$mnt/status"
echo "== stellakit status (exit 0 HEALTHY, 1 WARNING, 2 CRITICAL)"
"$sk" status "$mnt" >/dev/null && echo "health: $(head -n1 "$mnt/health")"
echo
echo "The kit is mounted at $mnt; 'umount $mnt' when done."
