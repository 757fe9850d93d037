#!/bin/sh
# Install everything sleeve needs on a fresh Debian 12 / Ubuntu 22.04 or 24.04 machine (as root).
#   ./install.sh          router + demo
#   ./install.sh --test   also the test and lint tools
#   ./install.sh --bench  also the benchmark's reference tunnels and tools (bench/setup.sh)
#
# Debian packages come from apt, Python included. sleeve itself goes into a virtual environment
# of its own, /opt/sleeve/venv, created with the distribution's Python: the system Python is
# "externally managed" (PEP 668) and must not be written to, and a Python that happens to be
# first on PATH (pyenv, conda) is not what a fresh machine has. The install is editable, so the
# venv runs this checkout's code; /usr/local/bin/sleeve links to the venv's command.
#
# A second run changes nothing: apt runs only for missing packages, pip only when pyproject.toml,
# the extra, the checkout's path or the venv's Python differ from what the last install recorded.
set -eu
cd "$(dirname "$0")"
VENV=/opt/sleeve/venv
LINK=/usr/local/bin/sleeve
die() { echo "install.sh: $*" >&2; exit 1; }

case "${1:-}" in
    "") extra="" ;;
    --test) extra=test ;;
    --bench) extra=bench ;;
    *) die "unknown option '$1' (usage: ./install.sh [--test | --bench])" ;;
esac
[ "$#" -le 1 ] || die "one option at most (usage: ./install.sh [--test | --bench])"
[ "$(id -u)" -eq 0 ] || die "must run as root (it installs Debian packages and $VENV)"
command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1 ||
    die "needs apt-get and dpkg (Debian 12, Ubuntu 22.04 or 24.04)"

# Ubuntu 22.04's python3 is 3.10; sleeve needs >= 3.11, which 22.04 ships as python3.11 (universe).
# UBUNTU_CODENAME also covers 22.04's derivatives. Read in a subshell: os-release sets VERSION etc.
codename=""
[ -r /etc/os-release ] && codename=$(. /etc/os-release && echo "${UBUNTU_CODENAME:-}")
if [ "$codename" = jammy ]; then PY=python3.11; else PY=python3; fi
# ca-certificates: Debian's pip (the venv's) checks PyPI against the system's store when there is
# one, so a site's own CA (a TLS-inspecting proxy) works for pip as it does for apt and curl.
PKGS="$PY $PY-venv ca-certificates"
PKGS="$PKGS iproute2 nftables iptables iperf3 tcpdump ethtool conntrack iputils-ping procps"
# --no-install-recommends matters for the bench: wireguard-tools recommends a kernel image.
[ "$extra" = bench ] && PKGS="$PKGS wireguard-go wireguard-tools tinc fastd dnsperf dnsmasq-base"
# The DNS lab test asks with dig and uses dnsmasq (the binary, no service) as a stub upstream;
# the topology page is tested in Debian's headless Chromium (no browser download); the CNI
# plugins with podman (runc: crun fails on this kind of hybrid cgroup host), containers run
# from a busybox-static rootfs, the reference plugins (portmap, host-local) beside ours.
[ "$extra" = test ] && PKGS="$PKGS dnsutils dnsmasq-base chromium chromium-driver"
[ "$extra" = test ] && PKGS="$PKGS podman runc busybox-static containernetworking-plugins"
# The Docker plugin's lab test starts Debian's dockerd by hand (never the system service: see the
# policy-rc.d below) and asks the routers with curl. A machine that has a Docker already keeps it
# (docker-ce's containerd.io conflicts with docker.io: apt would remove it).
if [ "$extra" = test ]; then
    PKGS="$PKGS curl"
    command -v dockerd >/dev/null 2>&1 || PKGS="$PKGS docker.io"
fi
# The NAT traversal lab runs miniupnpd (PCP, NAT-PMP, UPnP IGD) by hand in a gateway namespace
# with a private config; Debian's package does not start its service unless debconf is told to
# (default no). stund (stun-server) lets that miniupnpd believe its lab address (198.18/15 is
# reserved, so it maps only when a STUN check finds it unrestricted); its service is not
# started either (the policy-rc.d below).
[ "$extra" = test ] && PKGS="$PKGS miniupnpd stun-server"

missing=""
for p in $PKGS; do
    # dpkg -s succeeds for removed-but-not-purged packages too; only "installed" counts
    [ "$(dpkg-query -W -f '${Status}' "$p" 2>/dev/null)" = "install ok installed" ] ||
        missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "install.sh: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    # Packages with a daemon (docker.io, containerd) start it from their maintainer scripts
    # (invoke-rc.d, deb-systemd-invoke): a policy-rc.d answering 101 denies every start for the
    # install, as Debian's own container images do. A policy the machine has is left alone.
    policy=/usr/sbin/policy-rc.d
    own_policy=""
    if [ ! -e "$policy" ]; then
        own_policy=1
        trap 'rm -f "$policy"' EXIT  # also when apt fails
        printf '#!/bin/sh\n# install.sh: no service starts while it installs packages\nexit 101\n' \
            > "$policy"
        chmod 755 "$policy"
    fi
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null || {
        # a stock Ubuntu server or cloud image has universe enabled; a minimal root may not
        [ -z "$codename" ] || echo "install.sh: $PY-venv is in Ubuntu's universe component" >&2
        die "apt-get install$missing failed"
    }
    if [ -n "$own_policy" ]; then
        rm -f "$policy"
        trap - EXIT
    fi
fi

# The distribution's interpreter by absolute path: never whatever python3 is first on PATH.
PYBIN=/usr/bin/$PY
"$PYBIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "sleeve needs Python >= 3.11; $PYBIN is $("$PYBIN" -V 2>&1)"
# A venv whose interpreter no longer runs (the distribution's Python was upgraded) is rebuilt.
if ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
    echo "install.sh: creating $VENV"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYBIN" -m venv "$VENV"
fi

# What the installed requirements depend on; equal keys mean pip would change nothing.
key=$( { pwd -P; "$VENV/bin/python" -VV; cat pyproject.toml; } | sha256sum | cut -d' ' -f1)
stamp="$VENV/.sleeve-install-${extra:-base}"
# Every extra includes the base requirements, so any current stamp satisfies a plain install.
if [ -z "$extra" ]; then stamps="$VENV"/.sleeve-install-*; else stamps=$stamp; fi
current=""
for s in $stamps; do
    [ -f "$s" ] && [ "$(cat "$s")" = "$key" ] && current=$s
done
if [ -n "$current" ]; then
    echo "install.sh: sleeve${extra:+[$extra]} already installed in $VENV"
else
    echo "install.sh: installing sleeve${extra:+[$extra]} into $VENV (pip)"
    "$VENV/bin/python" -m pip install -q -e ".${extra:+[$extra]}"
    echo "$key" > "$stamp"
fi
[ "$(readlink "$LINK" || true)" = "$VENV/bin/sleeve" ] || ln -sfn "$VENV/bin/sleeve" "$LINK"

# A `sleeve` earlier on PATH (e.g. a pyenv shim from an older install) would shadow the link.
found=$(command -v sleeve || true)
[ "$found" = "$LINK" ] || echo "install.sh: note: \`sleeve\` on your PATH is '$found', not $LINK" >&2
