#!/bin/sh
# Set-up step of the end-to-end benchmark (bench/e2e.py), separate from install.sh:
# the reference tunnels it compares sleeve with, from Debian packages, plus the Python
# `bench` extra (matplotlib for the chart, py-spy for the router profile).
#   bench/setup.sh        (as root; `python3 -m bench.e2e --setup` runs it too)
# --no-install-recommends matters: wireguard-tools recommends a kernel image.
set -eu
cd "$(dirname "$0")/.."
PKGS="wireguard-go wireguard-tools tinc fastd iperf3 iproute2 iputils-ping procps nftables tcpdump"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi
python3 -m pip install -q -e ".[bench]"
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
# The Debian packages ship systemd units/init scripts; the bench runs its own daemons in lab
# namespaces and never uses the services.
for tool in wireguard-go wg tincd fastd iperf3 py-spy; do
    command -v "$tool" >/dev/null 2>&1 || { echo "bench/setup.sh: $tool missing" >&2; exit 1; }
done
echo "bench set-up done"
