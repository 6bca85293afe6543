#!/bin/sh
# Install the Debian 12 packages sinkd needs to build and test, if missing.
# Usage: scripts/deps.sh [extra-package ...]. Needs root (or sudo) only when
# something is actually missing.
set -eu
pkgs="build-essential cmake pkg-config libuv1-dev libmsgpack-dev \
libcriterion-dev libinih-dev $*"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "sinkd: installing$missing" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
