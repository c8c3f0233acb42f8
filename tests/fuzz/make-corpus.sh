#!/bin/sh
# Regenerate the fuzz seed corpora under tests/fuzz/corpus/<target>/:
# small valid kits packed with stellakit (none, gzip, zstd; one with a
# multi-block file so that merkle.bin is present) and a few hostile variants.
#
#   tests/fuzz/make-corpus.sh [STELLAKIT]     (default: build/tools/stellakit)
#
# Keys are generated afresh, so signatures differ from run to run; everything
# else is byte-stable (SOURCE_DATE_EPOCH).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
kit=${1:-$top/build/tools/stellakit}
[ -x "$kit" ] || { echo "make-corpus.sh: $kit not built (meson compile -C build)" >&2; exit 1; }
corpus=$here/corpus
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

export SOURCE_DATE_EPOCH=1736899200     # 2025-01-15T00:00:00Z

"$kit" keygen --type ecdsa-p256 "$tmp/ec" >/dev/null
"$kit" keygen --type ed25519 "$tmp/ed" >/dev/null

# Small tree: files, a directory, a symlink.
mkdir -p "$tmp/small/feeds/nvd" "$tmp/small/bin"
printf '{"cve":"CVE-2025-0001"}\n' > "$tmp/small/feeds/nvd/a.json"
printf 'hello\n' > "$tmp/small/README"
: > "$tmp/small/empty"
printf '#!/bin/sh\necho hi\n' > "$tmp/small/bin/run"; chmod 755 "$tmp/small/bin/run"
ln -s feeds/nvd/a.json "$tmp/small/latest"

# Same plus a file of three blocks (gets a tree in merkle.bin).
cp -a "$tmp/small" "$tmp/big"
awk 'BEGIN { for (i = 0; i < 12288 / 16; i++) printf "%015d\n", i }' > "$tmp/big/feeds/nvd/blocks.txt"

pack() {  # SRC OUT [extra args]
	src=$1 out=$2; shift 2
	"$kit" pack -k "$tmp/ec.key" --kit-id fuzz-kit --version 2025.01.15 --sequence 1 \
		--component nvd=feeds/nvd,warn=3,max=9,records=1 "$@" "$tmp/$src" "$tmp/$out" >/dev/null
}
pack small small.kit --compress none
pack small small2.kit --compress none -k "$tmp/ed.key" --channel beta
pack big big.kit.gz --compress gzip
pack big big.kit.zst --compress zstd
pack big big.kit --compress none

mkdir -p "$tmp/x" "$tmp/xbig"
tar -xf "$tmp/small.kit" -C "$tmp/x"
tar -xf "$tmp/big.kit" -C "$tmp/xbig"

rm -rf "$corpus"
mkdir -p "$corpus/fuzz_manifest" "$corpus/fuzz_sig" "$corpus/fuzz_kit" "$corpus/fuzz_merkle" \
	"$corpus/fuzz_source"

# --- fuzz_manifest
m=$tmp/x/manifest/offline-manifest.json
cp "$m" "$corpus/fuzz_manifest/small.json"
cp "$tmp/xbig/manifest/offline-manifest.json" "$corpus/fuzz_manifest/big.json"
tar -xOf "$tmp/small2.kit" manifest/offline-manifest.json > "$corpus/fuzz_manifest/beta.json"
sed 's/"schemaVersion": 1/"schemaVersion": 2/' "$m" > "$corpus/fuzz_manifest/bad-schema.json"
sed 's#"latest"#"../latest"#' "$m" > "$corpus/fuzz_manifest/dotdot-name.json"
sed 's#"feeds/nvd/a.json"#"/etc/passwd"#' "$m" > "$corpus/fuzz_manifest/abs-target.json"
head -c 200 "$m" > "$corpus/fuzz_manifest/truncated.json"
printf '{"schemaVersion":1,"kitId":"k","kitId":"k2"}' > "$corpus/fuzz_manifest/dup-key.json"
printf '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]' \
	> "$corpus/fuzz_manifest/deep.json"
printf '{"schemaVersion":1e400,"sequence":-9223372036854775809,"kitId":"\\u0000"}' \
	> "$corpus/fuzz_manifest/numbers.json"

# --- fuzz_sig (the harness's trust keys are made at run time: these are
# well-formed lines of other keys, plus noise)
s=$tmp/x/manifest/offline-manifest.json.sig
cp "$s" "$corpus/fuzz_sig/one-ecdsa.sig"
tar -xOf "$tmp/small2.kit" manifest/offline-manifest.json.sig > "$corpus/fuzz_sig/ecdsa-ed25519.sig"
{ cat "$s"; cat "$s"; printf '\n\n   \r\n'; } > "$corpus/fuzz_sig/dup-blank.sig"
printf 'not base64 at all!!\n====\nAAAA\n' > "$corpus/fuzz_sig/garbage.sig"
head -c 60 "$s" > "$corpus/fuzz_sig/cut.sig"
printf 'MEUCIQ' > "$corpus/fuzz_sig/short-der.sig"

# --- fuzz_merkle
mb=$tmp/xbig/manifest/merkle.bin
cp "$mb" "$corpus/fuzz_merkle/one-tree.bin"
head -c 88 "$mb" > "$corpus/fuzz_merkle/index-only.bin"
head -c 24 "$mb" > "$corpus/fuzz_merkle/header-only.bin"
printf 'STLMRKL1\001\000\000\000\014\000\000\000\000\000\000\000\000\000\000\000' \
	> "$corpus/fuzz_merkle/empty.bin"
printf 'STLMRKL1\001\000\000\000\014\000\000\000\377\377\377\377\377\377\377\377' \
	> "$corpus/fuzz_merkle/huge-n.bin"

# --- fuzz_kit and fuzz_source: the kits, then hostile variants
for k in small.kit small2.kit big.kit.gz big.kit.zst; do
	cp "$tmp/$k" "$corpus/fuzz_kit/$k"
	cp "$tmp/$k" "$corpus/fuzz_source/$k"
done
sz=$(wc -c < "$tmp/small.kit")
head -c $((sz - 1024)) "$tmp/small.kit" > "$corpus/fuzz_kit/truncated.kit"
{ cat "$tmp/small.kit"; printf 'TRAILING'; } > "$corpus/fuzz_kit/trailing.kit"
# One byte flipped in the first file member's data (content mismatch).
python3 - "$tmp/small.kit" "$corpus/fuzz_kit/flipped.kit" <<'PY'
import sys, tarfile
src, dst = sys.argv[1], sys.argv[2]
data = bytearray(open(src, 'rb').read())
with tarfile.open(src) as t:
    for m in t.getmembers():
        if m.isfile() and m.size and not m.name.startswith('manifest/'):
            data[m.offset_data] ^= 1
            break
open(dst, 'wb').write(data)
PY
gz=$(wc -c < "$tmp/big.kit.gz")
head -c $((gz / 2)) "$tmp/big.kit.gz" > "$corpus/fuzz_source/half.kit.gz"
{ cat "$tmp/big.kit.gz"; cat "$tmp/big.kit.gz"; } > "$corpus/fuzz_source/two-members.kit.gz"
{ cat "$tmp/big.kit.zst"; printf '\000\000\000\000'; } > "$corpus/fuzz_source/trailing.kit.zst"
printf 'hello, not compressed' > "$corpus/fuzz_source/raw.txt"
cp "$tmp/big.kit" "$corpus/fuzz_source/big.kit"

du -sh "$corpus"
