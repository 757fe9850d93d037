"""Replies from the address the peer sent to, on a multi-homed host (issue 22).

Host a has two addresses of one family on its underlay interface; its route to b
picks one as the source. b dials the other and sits behind a stateful
firewall that drops UDP to its port unless it answers what b sent (conntrack: the
reply must come from the address b sent to, as behind a NAT). Without IP_PKTINFO a's
datagrams leave from the first address and are dropped, so b never hears a over UDP;
with it the link carries heartbeats and data over UDP both ways.

Needs root and network namespaces; fails (never skips) without them.
"""

from __future__ import annotations

import os
import re

import pytest

from sleeve.lab import Lab
from sleeve.lab.routers import Router, workdir
from sleeve.lab.traffic import expected_digest, tcp_transfer

pytestmark = pytest.mark.lab

ADDRS = {  # (a's two addresses, b, prefix length)
    "v4": ("198.18.61.1", "198.18.61.11", "198.18.61.2", 24),
    "v6": ("2001:2:0:1861::1", "2001:2:0:1861::11", "2001:2:0:1861::2", 64),
}
A_OV, B_OV = "198.19.61.1", "198.19.61.2"

# b's firewall: UDP to the router's port only as a reply to what b sent (conntrack).
_STATEFUL = """
table inet slv_mh {
  chain in {
    type filter hook input priority 0; policy accept;
    ct state established,related accept
    udp dport 6783 counter drop
  }
}
"""


def _udp_both_ways(st: dict[str, object]) -> bool:
    conns = st["connections"]
    assert isinstance(conns, list)
    return any(c["state"] == "established" and c["reason"] == "UDP heartbeats both ways"
               for c in conns)


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_replies_leave_from_the_address_the_peer_dialled(family: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    x, y, b_ip, plen = ADDRS[family]
    with Lab() as lab:
        sw = lab.switch()
        a, b = lab.host("a"), lab.host("b")
        if_a, if_b = lab.connect(a, sw, None), lab.connect(b, sw, None)
        a.addr(if_a, f"{x}/{plen}")
        a.addr(if_a, f"{y}/{plen}")
        b.addr(if_b, f"{b_ip}/{plen}")
        # b dials the address a's route to b does not pick as its source (IPv4 picks
        # the primary address, IPv6 here the newest)
        route = a.run("ip", "route", "get", b_ip).stdout
        m = re.search(r"\bsrc (\S+)", route)
        assert m and m.group(1) in (x, y), route
        second = y if m.group(1) == x else x
        b.nft(_STATEFUL)
        wd = workdir()
        ra = Router(a, ["--ip", f"{A_OV}/24"], wd, "mh pw")
        target = f"[{second}]:6783" if family == "v6" else second
        rb = Router(b, ["--ip", f"{B_OV}/24", target], wd, "mh pw")
        sta = ra.wait(_udp_both_ways, 20, "UDP both ways on a")
        stb = rb.wait(_udp_both_ways, 20, "UDP both ways on b")
        (ca,), (cb,) = sta["connections"], stb["connections"]
        shown = f"[{second}]:6783" if family == "v6" else f"{second}:6783"
        assert ca["udp_local"] == second, ca  # a answers from where b reaches it
        assert cb["udp"] == shown and cb["counters"].get("endpoint_changes", 0) == 0, cb
        assert cb["counters"]["rx_packets"] > 0, cb  # b hears a's datagrams
        n = 10_000_000
        for src, dst, dst_ov in ((a, b, B_OV), (b, a, A_OV)):
            got, digest, _ = tcp_transfer(src, dst, dst_ov, n)
            assert (got, digest) == (n, expected_digest(n, "sleeve"))
        st = ra.status()["connections"][0]
        assert st["reason"] == "UDP heartbeats both ways" and st["udp_local"] == second, st
        # and what the firewall dropped is only a's datagrams from before it heard b
        drops = b.run("nft", "list", "chain", "inet", "slv_mh", "in").stdout
        dropped = int(re.search(r"counter packets (\d+)", drops).group(1))  # type: ignore[union-attr]
        print(f"\n{family}: a answers from {st['udp_local']}; b's firewall dropped {dropped} "
              f"early datagrams; 2 x 10 MB intact over UDP")
        assert dropped < 20, drops
