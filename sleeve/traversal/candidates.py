"""LAN candidates: the local UDP endpoint a peer behind NAT announces for punching.

Two peers behind the same NAT see each other only at the NAT's public address,
where a Linux NAT does not hairpin; they reach each other on their local addresses.
At the start of each punching attempt each side tells the other, over the relayed
control connection (end-to-end encrypted: the mediator cannot read or forge it), the
address it reaches its mediator from (the route's source address: behind NAT, the
LAN address) with its UDP port::

    {"t": "cand", "eps": [[host str, port int], ...],      at most MAX_CANDS entries
                  "mapped": [[host str, port int], ...]}    optional, as many
         host: an IPv4 or IPv6 address literal (not a name), unicast, not loopback,
               not unspecified; port 1..65535
         mapped: a public endpoint our gateway forwards to us (``traversal.portmap``)

The punch then also sends to these, with hop limit ``LAN_HOPS``: enough for a peer
on our segment or one router away behind the same NAT, never far on the internet;
to mapped endpoints with the full TTL (the gateway forwards them, nothing to spoil).
A malformed message is dropped and counted (``bad_cand``), never raised.
"""

from __future__ import annotations

import ipaddress
from typing import Any

MAX_CANDS = 4
LAN_HOPS = 2

Endpoint = tuple[str, int]


def encode(eps: list[Endpoint], mapped: list[Endpoint] | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"t": "cand", "eps": [[h, p] for h, p in eps[:MAX_CANDS]]}
    if mapped:
        m["mapped"] = [[h, p] for h, p in mapped[:MAX_CANDS]]
    return m


def decode_mapped(m: dict[str, Any]) -> list[Endpoint] | None:
    """The mapped endpoints of a ``cand`` message ([] when absent), None when malformed."""
    if "mapped" not in m:
        return []
    return decode({"eps": m["mapped"]})


def decode(m: dict[str, Any]) -> list[Endpoint] | None:
    """The endpoints of a ``cand`` message, or None when it is malformed."""
    eps = m.get("eps")
    if not isinstance(eps, list) or len(eps) > MAX_CANDS:
        return None
    out: list[Endpoint] = []
    for e in eps:
        if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
                and type(e[1]) is int and 0 < e[1] < 65536 and len(e[0]) <= 45):
            return None
        try:
            ip = ipaddress.ip_address(e[0])
        except ValueError:
            return None
        if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local:
            return None
        out.append((str(ip), e[1]))
    return out


def local_candidate(sockname: Any, udp_port: int) -> list[Endpoint]:
    """Our endpoint on the route to the mediator, from the control socket's name."""
    if not (isinstance(sockname, tuple) and len(sockname) >= 2 and isinstance(sockname[0], str)):
        return []  # a relayed mediator link has no socket of its own
    return decode({"eps": [[sockname[0], udp_port]]}) or []
