#!/usr/bin/env bash
# Installs the Debian packages kiln needs, only those that are missing.
set -euo pipefail
pkgs=(qemu-system-x86 busybox-static debootstrap e2fsprogs cpio dpkg xz-utils btrfs-progs xfsprogs iproute2 kmod ca-certificates)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "kiln needs these packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The kernel's `pull debian` and the tests' kernel fixture need fresh package lists.
if [ -z "$(find /var/lib/apt/lists -name '*_Packages' -mmin -1440 2>/dev/null | head -1)" ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
fi
