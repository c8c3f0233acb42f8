#!/bin/sh
# Regenerate the fuzz seed corpora under tests/fuzz/corpus/<target>/:
# small valid kits packed with stellakit (none, gzip, zstd; one with a
# multi-block file so that merkle.bin is present) and a few hostile variants;
# trust stores, control-file texts and mount option lines; snapshot indexes.
#
#   tests/fuzz/make-corpus.sh [STELLAKIT [FUZZBUILD]]
#       (defaults: build/tools/stellakit, build-fuzz)
#   TARGETS="fuzz_trust fuzz_index" tests/fuzz/make-corpus.sh   (only those)
#
# Keys are generated afresh, so signatures differ from run to run; everything
# else is byte-stable (SOURCE_DATE_EPOCH).  fuzz_trust's and fuzz_index's
# valid seeds come from the targets themselves (STELLA_FUZZ_SEEDS=DIR: their
# fixed keys, and the indexes of the kits they pack at start-up), so those two
# need FUZZBUILD built.  Regression inputs (<target>-crash-*) are kept.
# fuzz_index variants that still crash go to tests/fuzz/pending/fuzz_index/
# (see make-index-corpus.py).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
kit=${1:-$top/build/tools/stellakit}
fuzzbuild=${2:-$top/build-fuzz}
[ -x "$kit" ] || { echo "make-corpus.sh: $kit not built (meson compile -C build)" >&2; exit 1; }
all="fuzz_manifest fuzz_sig fuzz_kit fuzz_merkle fuzz_source fuzz_trust fuzz_control fuzz_options fuzz_index fuzz_kitindex"
targets=${TARGETS:-$all}
want() { case " $targets " in *" $1 "*) return 0 ;; esac; return 1; }
for t in fuzz_trust fuzz_index fuzz_kitindex; do
	if want $t && [ ! -x "$fuzzbuild/tests/fuzz/$t" ]; then
		echo "make-corpus.sh: $fuzzbuild/tests/fuzz/$t not built (ninja -C build-fuzz)" >&2
		exit 1
	fi
done
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

# Each corpus regenerated is emptied first, but for its regression inputs.
for t in $targets; do
	mkdir -p "$corpus/$t"
	find "$corpus/$t" -maxdepth 1 -type f ! -name '*-crash-*' -delete
done

# --- fuzz_manifest
m=$tmp/x/manifest/offline-manifest.json
if want fuzz_manifest; then
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
fi

# --- fuzz_sig (the harness's trust keys are made at run time: these are
# well-formed lines of other keys, plus noise)
s=$tmp/x/manifest/offline-manifest.json.sig
if want fuzz_sig; then
cp "$s" "$corpus/fuzz_sig/one-ecdsa.sig"
tar -xOf "$tmp/small2.kit" manifest/offline-manifest.json.sig > "$corpus/fuzz_sig/ecdsa-ed25519.sig"
{ cat "$s"; cat "$s"; printf '\n\n   \r\n'; } > "$corpus/fuzz_sig/dup-blank.sig"
printf 'not base64 at all!!\n====\nAAAA\n' > "$corpus/fuzz_sig/garbage.sig"
head -c 60 "$s" > "$corpus/fuzz_sig/cut.sig"
printf 'MEUCIQ' > "$corpus/fuzz_sig/short-der.sig"
fi

# --- fuzz_merkle
mb=$tmp/xbig/manifest/merkle.bin
if want fuzz_merkle; then
cp "$mb" "$corpus/fuzz_merkle/one-tree.bin"
head -c 88 "$mb" > "$corpus/fuzz_merkle/index-only.bin"
head -c 24 "$mb" > "$corpus/fuzz_merkle/header-only.bin"
printf 'STLMRKL1\001\000\000\000\014\000\000\000\000\000\000\000\000\000\000\000' \
	> "$corpus/fuzz_merkle/empty.bin"
printf 'STLMRKL1\001\000\000\000\014\000\000\000\377\377\377\377\377\377\377\377' \
	> "$corpus/fuzz_merkle/huge-n.bin"
fi

# --- fuzz_kit and fuzz_source: the kits, then hostile variants
for k in small.kit small2.kit big.kit.gz big.kit.zst; do
	if want fuzz_kit; then cp "$tmp/$k" "$corpus/fuzz_kit/$k"; fi
	if want fuzz_source; then cp "$tmp/$k" "$corpus/fuzz_source/$k"; fi
done
if want fuzz_kit; then
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
fi
if want fuzz_source; then
gz=$(wc -c < "$tmp/big.kit.gz")
head -c $((gz / 2)) "$tmp/big.kit.gz" > "$corpus/fuzz_source/half.kit.gz"
{ cat "$tmp/big.kit.gz"; cat "$tmp/big.kit.gz"; } > "$corpus/fuzz_source/two-members.kit.gz"
{ cat "$tmp/big.kit.zst"; printf '\000\000\000\000'; } > "$corpus/fuzz_source/trailing.kit.zst"
printf 'hello, not compressed' > "$corpus/fuzz_source/raw.txt"
# nine gzip members of 1 MiB each: a seek point at a member boundary (4 MiB rule)
for i in 0 1 2 3 4 5 6 7 8; do head -c 1048576 /dev/zero | tr '\0' "\\$(printf '%03o' "$i")" | gzip -9n; done \
	> "$corpus/fuzz_source/members-1mib.kit.gz"
cp "$tmp/big.kit" "$corpus/fuzz_source/big.kit"
fi

# --- fuzz_trust: each input a trust directory, its files cut at "--8<--"
# lines.  The target's three fixed public keys (which sign its message),
# each alone and all together, then the same keys otherwise encoded, keys
# of kinds refused, and files that are not keys at all.
SEP='--8<--'
if want fuzz_trust; then
	c=$corpus/fuzz_trust
	mkdir -p "$tmp/trust"
	STELLA_FUZZ_SEEDS=$tmp/trust "$fuzzbuild/tests/fuzz/fuzz_trust" -runs=0 >/dev/null 2>&1
	cp "$tmp/trust/"* "$c/"
	ed=$tmp/trust/ed25519.pub
	{ cat "$ed"; echo "$SEP"; cat "$ed"; } > "$c/same-key-twice.txt"
	if command -v openssl >/dev/null; then
		# One EC key as three SubjectPublicKeyInfos (uncompressed, compressed,
		# explicit curve): one key, counted once (it counted three times).
		ec=$tmp/trust/ecdsa.pub
		{ cat "$ec"; echo "$SEP"
		  openssl ec -pubin -in "$ec" -conv_form compressed -pubout 2>/dev/null; echo "$SEP"
		  openssl ec -pubin -in "$ec" -param_enc explicit -pubout 2>/dev/null
		} > "$c/ecdsa-three-encodings.txt"
		openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 2>/dev/null |
			openssl pkey -pubout > "$c/rsa-1024.pub"
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 2>/dev/null |
			openssl pkey -pubout > "$c/p384.pub"
		openssl genpkey -algorithm ED448 2>/dev/null | openssl pkey -pubout > "$c/ed448.pub"
		openssl genpkey -algorithm X25519 2>/dev/null | openssl pkey -pubout > "$c/x25519.pub"
		openssl req -x509 -new -key "$tmp/ec.key" -subj /CN=fuzz -days 1 2>/dev/null > "$c/certificate.txt"
	else
		echo "make-corpus.sh: no openssl command: fuzz_trust gets no other encodings or kinds" >&2
	fi
	cp "$tmp/ec.key" "$c/private-key.txt"
	# A FIFO named like a key (trust_load waited on it forever), and the
	# other files that are not small regular ones.
	printf '@fifo\n' > "$c/fifo.txt"
	{ cat "$ed"; echo "$SEP"; echo '@fifo'; echo "$SEP"; echo '@dir'; echo "$SEP"; echo '@link'; echo "$SEP"
	  echo '@big'; } > "$c/key-and-special-files.txt"
	sed 's/$/\r/' "$ed" > "$c/crlf.txt"
	{ echo 'a comment first'; cat "$ed"; echo 'and after'; } > "$c/text-around.txt"
	sed '2s/^\(....\)./\1!/' "$ed" > "$c/bad-base64.txt"
	head -c 40 "$ed" > "$c/cut.txt"
	: > "$c/empty.txt"
	# more key files than a trust directory may hold
	awk -v sep="$SEP" 'BEGIN { for (i = 0; i < 390; i++) print "x\n" sep }' > "$c/too-many.txt"
fi

# --- fuzz_control: texts written to the control file
if want fuzz_control; then
	c=$corpus/fuzz_control
	printf 'verify\n' > "$c/verify.txt"
	printf 'verify all\nactivate 2025.01.15\nrollback\nrollback 2025.01.14\n' > "$c/switch.txt"
	printf 'import /srv/incoming/kit.tar.gz\n' > "$c/import.txt"
	printf 'remove 2025.01.01\ngc\ngc keep=3\nreload\n' > "$c/store.txt"
	printf '# a comment\r\n\r\n  \t verify all \t\r\n\n#activate x\nreload\r\n' > "$c/comments-crlf.txt"
	printf 'import kits/relative.kit\n' > "$c/import-relative.txt"
	printf 'verify\000all\n' > "$c/nul.txt"
	printf 'gc keep=0\n' > "$c/gc-keep-0.txt"
	printf 'gc keep=18446744073709551616\n' > "$c/gc-keep-overflow.txt"
	printf 'gc 3\n' > "$c/gc-no-keep.txt"
	printf 'activate\n' > "$c/activate-missing.txt"
	printf 'activate a b\n' > "$c/activate-extra.txt"
	printf 'reload now\n' > "$c/reload-extra.txt"
	printf 'bogus\nverify\n' > "$c/unknown-then-valid.txt"
	printf 'verify \033[31mred\033[0m\n' > "$c/escapes.txt"
	printf 'verify\tall\n\tremove\tv1\n' > "$c/tabs.txt"
	awk 'BEGIN { printf "activate "; for (i = 0; i < 4086; i++) printf "v"; printf "\n" }' > "$c/longest.txt"
	awk 'BEGIN { for (i = 0; i < 4097; i++) printf "v" }' > "$c/too-long.txt"
fi

# --- fuzz_options: argument vectors after "stellafs", one per line (an
# fstab entry becomes "-o OPTIONS SOURCE MOUNTPOINT")
if want fuzz_options; then
	c=$corpus/fuzz_options
	printf -- '-o\ntrust=/etc/stella/keys,threshold=2,now=2025-01-15T00:00:00Z\n/srv/kit.tar.gz\n/mnt/kit' \
		> "$c/direct.txt"
	printf -- '-o\nallow_other,default_permissions,trust=/etc/stella/keys,cache=/var/cache/stellafs,admin_gid=100,incoming=/srv/in,auto_activate\n/srv/store\n/stella' \
		> "$c/fstab-store.txt"
	printf -- '-f\n-oallow_expired,now=2025-01-15T12:34:56.789+02:00\n-o\nthreshold=256\nkit\nmnt' > "$c/foreground.txt"
	printf -- '-d\n-s\n-o\nclone_fd,max_idle_threads=5,max_threads=4,max_read=65536\nsrc\nmnt' > "$c/fuse-options.txt"
	printf -- '-o\nthreshold=0\nsrc\nmnt' > "$c/threshold-0.txt"
	printf -- '-o\nthreshold=257,admin_gid=2147483648\nsrc\nmnt' > "$c/out-of-range.txt"
	printf -- '-o\nthreshold=-1,now=2025-13-01T00:00:00Z\nsrc\nmnt' > "$c/malformed.txt"
	printf -- '-o\nnow=9999-12-31T23:59:59.999999999-23:59\nsrc\nmnt' > "$c/now-edge.txt"
	printf -- '-o\nincoming=/srv/in\nkit.tar.gz\nmnt' > "$c/incoming-for-kit.txt"
	printf -- '-o\ntrust=/a\\,b,cache=x\\\\y\nsrc\nmnt' > "$c/escaped-commas.txt"
	printf -- '-o\nno_such_option,ro\nsrc\nmnt' > "$c/unknown-option.txt"
	printf -- '-o' > "$c/o-without-value.txt"
	printf -- '--help' > "$c/help.txt"
	printf -- '-V\n--version' > "$c/version.txt"
	printf -- 'a\nb\nc\nd' > "$c/extra-arguments.txt"
fi

# --- fuzz_index: the indexes of the kits the target packs at start-up, as
# a mount's cache and a store keep them, and variants (make-index-corpus.py)
if want fuzz_index; then
	mkdir -p "$tmp/index" "$here/pending/fuzz_index"
	find "$here/pending/fuzz_index" -maxdepth 1 -type f -name '*.db' -delete
	STELLA_FUZZ_SEEDS=$tmp/index "$fuzzbuild/tests/fuzz/fuzz_index" -runs=0 >/dev/null 2>&1
	python3 "$here/make-index-corpus.py" "$tmp/index" "$corpus/fuzz_index" "$here/pending/fuzz_index"
fi

# --- fuzz_kitindex: the index member of the kit the target packs at
# start-up, and a few edits of it (each refused by the mount's checks)
if want fuzz_kitindex; then
	c=$corpus/fuzz_kitindex
	mkdir -p "$c" "$tmp/kitindex"
	STELLA_FUZZ_SEEDS=$tmp/kitindex "$fuzzbuild/tests/fuzz/fuzz_kitindex" -runs=0 >/dev/null 2>&1
	cp "$tmp/kitindex/index.db" "$c/index.db"
	i=0
	for sql in "UPDATE node SET sha256=zeroblob(32) WHERE type=0" \
		   "UPDATE node SET data_off=data_off-512 WHERE size>0" \
		   "UPDATE node SET parent=(SELECT max(ino) FROM node) WHERE ino=2" \
		   "DELETE FROM node WHERE ino=(SELECT max(ino) FROM node)" \
		   "UPDATE node SET tree_off=tree_off+4096 WHERE tree_off>=0"; do
		i=$((i + 1))
		cp "$c/index.db" "$c/edit-$i.db"
		python3 -c 'import sqlite3,sys; d=sqlite3.connect(sys.argv[1]); d.executescript(sys.argv[2]); d.commit()' \
			"$c/edit-$i.db" "$sql"
	done
fi

du -sh "$corpus"
