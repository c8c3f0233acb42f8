#!/usr/bin/env bash
# Install what stellafs needs to build and test, from Debian's archive, only
# when something is missing (so a second run costs nothing and needs no
# network).  Usage: scripts/deps.sh [--bench]   (--bench adds the reference
# filesystems the benchmarks compare against).
set -euo pipefail

pkgs=(gcc pkg-config meson ninja-build
      libfuse3-dev fuse3 libarchive-dev libssl-dev libsqlite3-dev libyajl-dev
      zlib1g-dev libzstd-dev libcurl4-openssl-dev
      nginx-light squid docker-registry skopeo curl   # site-mirror and registry tests: real servers on 127.0.0.1
      python3 python3-pytest fsverity tar openssl sqlite3 zstd gzip coreutils
      dosfstools mtools fusefat util-linux
      clang libclang-rt-dev   # test.sh's TSan and fuzz stages (compiler-rt: TSan, libFuzzer)
      debootstrap systemd-container e2fsprogs)  # its systemd stage: a Debian 12 tree, nspawn, the USB image
[ "${1:-}" = "--bench" ] && pkgs+=(squashfuse squashfs-tools bindfs archivemount)

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
