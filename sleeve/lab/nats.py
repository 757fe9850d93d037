"""NAT gateways that change ports, for the traversal labs (issue 24).

``Lab.nat`` makes Linux's ``masquerade`` (keeps the inside port unless the tuple
clashes) or ``masquerade fully-random`` (a random port per new flow). Many consumer
NATs do neither: they hand out ports from a counter, one per new mapping, whatever
the inside port was. ``sequential_nat`` builds that from real nftables::

    snat ip to PUBLIC : numgen inc mod COUNT map { 0 : START, 1 : START+1, ... }

NAT rules run once per new conntrack entry, so ``numgen inc`` steps once per new flow
(both protocols: the counter is the rule's), giving START, START+1, ... and wrapping
after COUNT. The map is needed: ``numgen inc mod COUNT offset START`` loads, but its
value is in host byte order where the port is taken in network order (nft 1.0.6,
Linux 6.18: 40000, 40001, ... became 16540, 16796, ..., steps of 256). What the
kernel really does is measured by
``tests/test_lab_predict.py::test_port_changing_nats_premise`` (``docs/nat-behaviour.md``).

Test tooling only (shells out to ``nft``); the router never imports it.
"""

from __future__ import annotations

import re

from sleeve.lab.guard import UNDERLAY, check_ifname, check_ip
from sleeve.lab.netns import Host, Lab, Switch


def sequential_nat(gw: Host, inside_if: str, outside_if: str, public_ip: str,
                   start: int, count: int) -> None:
    """Make ``gw`` a NAT allocating ports start, start+1, ... one per new flow.

    Like ``Lab.nat``, only established/related traffic is forwarded from outside to
    inside (table ``ip slv_nat``).
    """
    check_ifname(inside_if)
    check_ifname(outside_if)
    check_ip(public_ip, (UNDERLAY,))
    if not (start >= 1024 and count >= 1 and start + count <= 65536):
        raise ValueError(f"port range {start}+{count} outside 1024..65535")
    gw.sysctl("net.ipv4.ip_forward", 1)
    ports = ", ".join(f"{i} : {start + i}" for i in range(count))
    gw.nft(
        "add table ip slv_nat\n"
        "add chain ip slv_nat nat_post { type nat hook postrouting priority srcnat; }\n"
        "add chain ip slv_nat nat_forward { type filter hook forward priority 0; }\n"
        f'add rule ip slv_nat nat_post oifname "{outside_if}" meta l4proto {{ tcp, udp }} '
        f"snat ip to {public_ip} : numgen inc mod {count} map {{ {ports} }}\n"
        f'add rule ip slv_nat nat_post oifname "{outside_if}" masquerade\n'
        f'add rule ip slv_nat nat_forward iifname "{outside_if}" oifname "{inside_if}" '
        "ct state established,related accept\n"
        f'add rule ip slv_nat nat_forward iifname "{outside_if}" oifname "{inside_if}" drop\n'
    )


def udp_mappings(gw: Host, inside_ip: str, sport: int) -> dict[int, int]:
    """gw's conntrack for UDP from inside_ip:sport: {destination port: public port}."""
    check_ip(inside_ip, (UNDERLAY,))
    out = gw.run("conntrack", "-L", "-p", "udp", "--orig-src", inside_ip,
                 "--sport", str(sport), check=False).stdout
    got = {}
    for m in re.finditer(r"src=\S+ dst=\S+ sport=\d+ dport=(\d+).*?src=\S+ dst=\S+ "
                         r"sport=\d+ dport=(\d+)", out):
        got[int(m.group(1))] = int(m.group(2))
    return got


def drop_unsolicited(gw: Host, outside_if: str) -> None:
    """Drop what arrives for ``gw`` itself from outside and belongs to no flow (as home
    routers do). Dropped in the input hook, such a datagram's conntrack entry is never
    confirmed, so it cannot clash with a mapping made later: without this, a public
    peer's first heartbeat, reaching the NAT before the inside host's own datagram,
    moves that host's mapping to a random port (what ``Lab.nat`` alone shows)."""
    check_ifname(outside_if)
    gw.nft(
        "add table ip slv_nat_in\n"
        "add chain ip slv_nat_in input { type filter hook input priority 0; }\n"
        f'add rule ip slv_nat_in input iifname "{outside_if}" ct state new drop\n'
    )


def two_segments(lab: Lab, net1: str, net2: str) -> tuple[Switch, Switch]:
    """Two public /24 segments (``net1``, ``net2``: "198.18.N") joined by an ISP router
    at .254 on each, as on the internet: a router between NATs on different segments
    (where a low-TTL punch datagram can die)."""
    isp = lab.router("isp")
    pub1, pub2 = lab.switch("pub1"), lab.switch("pub2")
    lab.connect(isp, pub1, f"{net1}.254/24")
    lab.connect(isp, pub2, f"{net2}.254/24")
    return pub1, pub2
