#!/bin/sh
# Set-up step of the end-to-end benchmark (bench/e2e.py), separate from install.sh:
# the reference tunnels it compares sleeve with, from Debian packages, plus the Python
# `bench` extra (matplotlib for the chart, py-spy for the router profile).
#   bench/setup.sh        (as root; `python3 -m bench.e2e --setup` runs it too)
# The Python tools land in sleeve's venv (/opt/sleeve/venv, made by install.sh), not on PATH.
set -eu
cd "$(dirname "$0")/.."
./install.sh --bench  # Debian packages (plus the peers) and the venv, in one place
# The Debian packages ship systemd units/init scripts; the bench runs its own daemons in lab
# namespaces and never uses the services.
for tool in wireguard-go wg tincd fastd iperf3 /opt/sleeve/venv/bin/py-spy; do
    command -v "$tool" >/dev/null 2>&1 || { echo "bench/setup.sh: $tool missing" >&2; exit 1; }
done
echo "bench set-up done"
