#!/bin/sh
# Install everything sleeve needs on a fresh Debian/Ubuntu machine (run as root).
#   ./install.sh          router + demo
#   ./install.sh --test   also the test and lint tools
#   ./install.sh --bench  also the benchmark's reference tunnels and tools (bench/setup.sh)
set -eu
cd "$(dirname "$0")"
PKGS="iproute2 nftables iptables iperf3 tcpdump ethtool conntrack iputils-ping procps"
# --no-install-recommends matters for the bench: wireguard-tools recommends a kernel image.
[ "${1:-}" = "--bench" ] && PKGS="$PKGS wireguard-go wireguard-tools tinc fastd"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi
if [ "${1:-}" = "--test" ]; then
    python3 -m pip install -q -e ".[test]"
elif [ "${1:-}" = "--bench" ]; then
    python3 -m pip install -q -e ".[bench]"
else
    python3 -m pip install -q -e .
fi
# pyenv installs console scripts behind shims that exist only after a rehash
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
