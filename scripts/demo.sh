#!/usr/bin/env bash
# The quick start: a kernel, the default image, and one VM that prints the
# guest's uname -a. Safe to run again: existing kernel and image are reused.
set -euo pipefail
cd "$(dirname "$0")/.."
kiln=bin/kiln
if [ "$(id -u)" != 0 ]; then
  echo "make demo runs as root: the kiln daemon manages disks and VMM processes" >&2
  exit 1
fi
$kiln doctor || true
echo
$kiln kernel show debian >/dev/null 2>&1 || $kiln kernel pull debian
$kiln image show debian >/dev/null 2>&1 || $kiln image build debian --debootstrap bookworm --kernel debian
echo
guest=$($kiln vm run --rm -- uname -a)
echo
echo "host:  $(uname -a)"
echo "guest: $guest"
