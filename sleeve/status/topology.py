"""The topology page's view of the status JSON: nodes, edges classified by path, rates.

Pure (no I/O; time comes in as ``now``), so the classification is tested without
a browser. What the local router knows, and so what an edge can say:

- its own links (status "connections"): the path (``sleeve`` = direct UDP,
  ``fastdp``, ``tcp``), the state and why, RTT, PMTU, counters;
- the routes ("routes"): a destination reached via another peer is *relayed*
  around whatever keeps the direct path closed (firewall, NAT, punching pending);
- every peer's gossiped record ("peers"): whom it is connected to and whether that
  connection is established. The path of a link between two other peers is known
  only to them, so such an edge is just ``mesh`` (established) or ``pending``.

Edge kinds, in the order a local link is checked::

    down     local link silent on UDP and TCP (state pending, "nothing from the peer")
    pending  local link not established yet (handshake done, UDP/PMTU not confirmed),
             or a gossiped connection one side does not call established
    relayed  the route to the peer goes via another peer (no usable direct link)
    tcp      local link carrying data over TCP (UDP does not get through)
    fastdp   local link on the kernel VXLAN datapath
    udp      local link on direct UDP (sleeve)
    mesh     an established link between two other peers

Throughput is computed from each local link's byte counters between two
``update`` calls (UDP and TCP bytes together); the first update has no rate.
The "ipam" and "dns" sections are optional (other parts add them); when present,
ranges and names are attached to the peer that owns them.
"""

from __future__ import annotations

from typing import Any

MAX_NAMES = 50  # per peer on the page; the status API has them all


def _key(peer: str) -> str:
    """Peer ids appear as "3a:9f:.." (status) and "3a9f.." (ipam, dns): compare bare hex."""
    return peer.replace(":", "").lower()


def _kind(conn: dict[str, Any]) -> str:
    if conn.get("state") != "established":
        return "down" if str(conn.get("reason", "")).startswith("nothing from the peer") \
            else "pending"
    return {"tcp": "tcp", "fastdp": "fastdp"}.get(str(conn.get("path")), "udp")


class TopologyView:
    """Turns successive status dicts into page updates; keeps the last counters for rates."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int, int]] = {}  # peer -> (t, tx bytes, rx bytes)

    def update(self, st: dict[str, Any], now: float) -> dict[str, Any]:
        me = str(st["name"])
        peers = {str(p["peer"]): p for p in st.get("peers", [])}
        peers.setdefault(me, {"peer": me, "nickname": st.get("nickname", ""), "self": True,
                              "reachable": True, "connections": []})
        routes = {str(r["destination"]): r for r in st.get("routes", [])}
        conns = {str(c["peer"]): c for c in st.get("connections", [])}
        for name, c in conns.items():  # a link whose record has not arrived yet
            peers.setdefault(name, {"peer": name, "nickname": c.get("nickname", ""),
                                    "reachable": True, "connections": []})
        ipam, dns = _ipam(st), _dns(st)
        edges = [self._local_edge(me, c, routes.get(name), peers, now)
                 for name, c in conns.items()]
        seen = {frozenset((me, name)) for name in conns}
        for dest, r in routes.items():
            via = str(r.get("via"))
            if dest == me or via == dest or frozenset((me, dest)) in seen:
                continue
            seen.add(frozenset((me, dest)))
            edges.append({"a": me, "b": dest, "kind": "relayed", "local": True,
                          "reason": f"no direct link: relayed via {_nick(peers, via)}"
                                    f" ({r.get('hops')} hops)", "via": via})
        for pair, established in _gossiped(peers).items():
            if pair in seen:
                continue
            a, b = sorted(pair)
            edges.append({"a": a, "b": b, "kind": "mesh" if established else "pending",
                          "local": False,
                          "reason": "established (its path is known to those two peers)"
                          if established else "not established on both sides"})
        live = set(conns)
        self._last = {k: v for k, v in self._last.items() if k in live}
        nodes = []
        for name in sorted(peers):
            p, r = peers[name], routes.get(name)
            nodes.append({
                "id": name, "nickname": p.get("nickname", ""), "self": name == me,
                "reachable": bool(p.get("reachable", name == me)) or name == me,
                "direct": name in conns, "uid": p.get("uid"), "version": p.get("version"),
                "via": None if r is None else r.get("via"),
                "hops": None if r is None else r.get("hops"),
                "connections": p.get("connections", []),
                "ranges": ipam.get(_key(name), []), "names": dns.get(_key(name), []),
            })
        local = {k: v for k, v in st.items() if k not in ("macs", "peers", "routes")}
        local["macs"] = len(st.get("macs", []))
        return {"t": round(now, 3), "self": me, "nodes": nodes, "edges": edges,
                "encryption": st.get("encryption", ""), "status": local,
                "ipam": "ipam" in st, "dns": "dns" in st}

    def _local_edge(self, me: str, c: dict[str, Any], route: dict[str, Any] | None,
                    peers: dict[str, dict[str, Any]], now: float) -> dict[str, Any]:
        peer = str(c["peer"])
        kind = _kind(c)
        reason = str(c.get("path_reason") or c.get("reason") or "")
        if kind in ("down", "pending"):
            reason = str(c.get("reason", ""))
            if route is not None and route.get("via") not in (None, peer):
                kind = "relayed"  # e.g. a punching attempt while the mesh relays the data
                reason = (f"relayed via {_nick(peers, str(route.get('via')))} while the "
                          f"direct link is {_kind(c)}: {c.get('reason', '')}")
        k = c.get("counters", {})
        tx = int(k.get("tx_bytes", 0)) + int(k.get("tx_tcp_bytes", 0))
        rx = int(k.get("rx_bytes", 0)) + int(k.get("rx_tcp_bytes", 0))
        tx_bps = rx_bps = None
        prev = self._last.get(peer)
        if prev is not None and now > prev[0]:
            dt = now - prev[0]
            tx_bps = max(0, tx - prev[1]) * 8 / dt
            rx_bps = max(0, rx - prev[2]) * 8 / dt
        self._last[peer] = (now, tx, rx)
        return {"a": me, "b": peer, "kind": kind, "local": True, "reason": reason,
                "state": c.get("state"), "state_reason": c.get("reason"), "path": c.get("path"),
                "udp": c.get("udp"), "direction": c.get("direction"),
                "encrypted": c.get("encrypted"), "rtt_ms": c.get("rtt_ms"),
                "pmtu": c.get("pmtu"), "tx_bps": tx_bps, "rx_bps": rx_bps,
                "tx_bytes": tx, "rx_bytes": rx}


def _nick(peers: dict[str, dict[str, Any]], peer: str) -> str:
    nick = peers.get(peer, {}).get("nickname")
    return f"{nick} ({peer})" if nick else peer


def _gossiped(peers: dict[str, dict[str, Any]]) -> dict[frozenset[str], bool]:
    """Each pair some record lists: established only if every record listing it says so."""
    out: dict[frozenset[str], bool] = {}
    for name, p in peers.items():
        for c in p.get("connections", []):
            other = str(c.get("peer"))
            if other == name:
                continue
            pair = frozenset((name, other))
            out[pair] = out.get(pair, True) and bool(c.get("established"))
    return out


def _ipam(st: dict[str, Any]) -> dict[str, list[str]]:
    """Ranges per owner from an "ipam" section shaped {"ring": [{"peer", "ranges": [..]}]}."""
    out: dict[str, list[str]] = {}
    sec = st.get("ipam")
    ring = sec.get("ring", []) if isinstance(sec, dict) else []
    for p in ring if isinstance(ring, list) else []:
        if not isinstance(p, dict):
            continue
        rs = []
        for r in p.get("ranges", []):
            if isinstance(r, dict):
                free = f" ({r['free']} free)" if "free" in r else ""
                rs.append(f"{r.get('start')}-{r.get('end')}{free}")
        out.setdefault(_key(str(p.get("peer", ""))), []).extend(rs)
    return out


def _dns(st: dict[str, Any]) -> dict[str, list[str]]:
    """Names per origin peer from a "dns" section shaped {"records": [{"name", "address",
    "origin"}]}; tombstones are left out."""
    out: dict[str, list[str]] = {}
    sec = st.get("dns")
    recs = sec.get("records", []) if isinstance(sec, dict) else []
    for r in recs if isinstance(recs, list) else []:
        if not isinstance(r, dict) or r.get("tombstone"):
            continue
        names = out.setdefault(_key(str(r.get("origin", ""))), [])
        if len(names) < MAX_NAMES:
            names.append(f"{r.get('name')} {r.get('address', '')}".strip())
    return out
