#!/usr/bin/env bash
# Print the path of a minimal Debian 12 tree to boot with systemd-nspawn -b
# (the systemd stage of scripts/test.sh, tests/systemd/), making it first when
# it is missing: debootstrap --variant=minbase with systemd, dbus, udev, fuse3,
# man-db and the libraries stellafs and stellakit link to, from the Debian
# mirror apt is configured with.  The tree is kept in
#   ${STELLA_TREE_CACHE:-/var/cache/stellafs-test}/debian12-KEY
# where KEY hashes the package list and the suite: a changed list makes a new
# tree (older ones are removed).  Only this script writes there; tests boot an
# overlay on top of it and never change it.
set -euo pipefail

suite=bookworm
# python3: the USB import helper reads `stellakit inspect --json` with it;
# man-db: systemd-analyze verify checks the units' Documentation= pages.
pkgs=systemd,systemd-sysv,dbus,udev,fuse3,libfuse3-3,libarchive13,libssl3,libsqlite3-0,libyajl2,zlib1g,libzstd1,libcurl4,python3,util-linux,mount,man-db
cache=${STELLA_TREE_CACHE:-/var/cache/stellafs-test}
key=$(printf '%s %s v1' "$suite" "$pkgs" | sha256sum | cut -c1-12)
tree=$cache/debian12-$key

mkdir -p "$cache"
# one maker at a time: a second run waits, then finds the tree made
exec 9>"$cache/.lock"
flock 9
if [ -x "$tree/usr/lib/systemd/systemd" ] && [ -f "$tree/.stella-complete" ]; then
	echo "$tree"
	exit 0
fi

# The mirror apt uses (deb822 sources or the one-line format), else Debian's.
mirror=$(sed -n 's/^URIs: *\([^ ]*\/debian\/\{0,1\}\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
[ -n "$mirror" ] || mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) bookworm .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n 1)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian

work=$(mktemp -d "$cache/.debian12-$key.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "systemd-tree: debootstrap $suite from $mirror into $tree (once; a few minutes)" >&2
if ! debootstrap --variant=minbase --include="$pkgs" "$suite" "$work/tree" "$mirror" >"$work/log" 2>&1; then
	tail -n 30 "$work/log" >&2
	echo "systemd-tree: debootstrap failed" >&2
	exit 1
fi
# no apt timers or getty noise in a test machine; its own hostname
rm -f "$work/tree/etc/machine-id" && : >"$work/tree/etc/machine-id"
echo stella-test >"$work/tree/etc/hostname"
touch "$work/tree/.stella-complete"
# trees of other package lists go: one per machine is enough (disk)
for old in "$cache"/debian12-*; do
	[ -d "$old" ] && [ "$old" != "$tree" ] && rm -rf "$old"
done
rm -rf "$tree"
mv "$work/tree" "$tree"
echo "$tree"
