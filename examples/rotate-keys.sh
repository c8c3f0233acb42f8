#!/bin/bash
# rotate-keys.sh: add or retire a signing key in a stellafs trust store, safely.
#
#   rotate-keys.sh [-m MOUNTPOINT] [--threshold N] [--check KIT]... TRUSTDIR add NEW.pub
#   rotate-keys.sh [-m MOUNTPOINT] [--threshold N] [--check KIT]... TRUSTDIR retire NAME.pub
#
# A rotation, with threshold N:
#   1. the signers start signing every kit with both keys (stellakit pack -k old.key -k new.key);
#   2. `rotate-keys.sh /etc/stella/keys add new.pub` on every site;
#   3. once every kit a site may need is signed by the new key,
#      `rotate-keys.sh /etc/stella/keys retire old.pub`.
# With threshold=2 (two of the trusted keys must sign), keep three keys during the
# change, or the kits signed by the old pair stop passing when one is retired.
#
# Each step (1) checks every --check KIT with `stellakit verify` against the new key
# set first, (2) changes TRUSTDIR, (3) runs `echo reload > MOUNTPOINT/control` when
# MOUNTPOINT (default /stella) is mounted.  When a check or the reload fails (a
# direct-mode mount re-checks its kit's signatures: EKEYREJECTED), the change is
# undone, reloaded again, and the script exits 1 saying why.  Exit 0: done.
set -u
mnt=/stella
threshold=1
checks=()
STELLAKIT=${STELLAKIT:-stellakit}
die() { echo "rotate-keys: $*" >&2; exit 1; }
usage() { echo "usage: rotate-keys.sh [-m MOUNTPOINT] [--threshold N] [--check KIT]... TRUSTDIR add|retire KEY" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case $1 in
        -m) [ $# -ge 2 ] || usage; mnt=$2; shift 2 ;;
        --threshold) [ $# -ge 2 ] || usage; threshold=$2; shift 2 ;;
        --check) [ $# -ge 2 ] || usage; checks+=("$2"); shift 2 ;;
        -*) usage ;;
        *) break ;;
    esac
done
[ $# -eq 3 ] || usage
trust=$1 action=$2 key=$3
[ -d "$trust" ] || die "$trust: not a directory"

new=$(mktemp -d) || exit 1
trap 'rm -rf "$new"' EXIT
cp -p "$trust"/* "$new"/ 2>/dev/null
case $action in
    add)
        [ -f "$key" ] || die "$key: no such key file"
        openssl pkey -pubin -in "$key" -noout 2>/dev/null || die "$key: not a PEM public key"
        name=$(basename "$key")
        case $name in *.pub|*.pem) ;; *) name=$name.pub ;; esac
        [ -e "$trust/$name" ] && die "$trust/$name already exists"
        cp "$key" "$new/$name" ;;
    retire)
        name=$(basename "$key")
        [ -f "$trust/$name" ] || die "$trust/$name: no such key in the trust store"
        rm -f "$new/$name" ;;
    *) usage ;;
esac
have=
for f in "$new"/*.pub "$new"/*.pem; do [ -f "$f" ] && have=1; done
[ -n "$have" ] || die "refusing to leave $trust without keys"

for kit in "${checks[@]}"; do
    out=$("$STELLAKIT" verify -t "$new" --threshold "$threshold" "$kit" 2>&1) ||
        die "not changed: $kit would not verify with the new key set: $(printf '%s' "$out" | tail -n 1)"
done

reload() { # -> 0, or 1 with $why set
    mountpoint -q "$mnt" 2>/dev/null || return 0
    if ! printf 'reload\n' >"$mnt/control" 2>/dev/null; then
        why=$(grep ' reload -> ' "$mnt/control" | tail -n 1)
        why=${why#* -> }
        return 1
    fi
    return 0
}

backup=$(mktemp -d) || exit 1
trap 'rm -rf "$new" "$backup"' EXIT
cp -p "$trust"/* "$backup"/ 2>/dev/null
case $action in
    add) install -m 0644 "$new/$name" "$trust/$name" ;;
    retire) rm -f "$trust/$name" ;;
esac
if ! reload; then
    # undo: put the old key set back and reload it
    case $action in
        add) rm -f "$trust/$name" ;;
        retire) cp -p "$backup/$name" "$trust/$name" ;;
    esac
    reload || echo "rotate-keys: reload of the restored key set failed too: $why" >&2
    die "undone: reload of $mnt refused the new key set: $why"
fi
echo "rotate-keys: $action $name: done ($(ls "$trust" | tr '\n' ' '))"
