"""The mesh adapter: gossip over control connections, discovery candidates, route status.

Sans-IO glue between the router and the pure ``proto.topology``/``proto.routes``: it is
told about our links and the gossip we receive, and gives back the records to send.
``gossip.topology.TopologyChannel`` plugs it into the gossip router as the "topology"
channel. No sockets, no clock of its own (``now`` is passed in), so the whole
mesh can be simulated in one process (bench/test_mesh_scale.py, tests/test_mesh.py).

Gossip is a control message ``{"t": "topo", "r": <topology message>}`` (see
``proto.topology`` for the encoding). What is sent when:

- a new link: our digest, to that link only; it fetches the records it lacks
  (``gossip.topology``, ``proto.topodigest``);
- our own record changed (a link came, went or changed state): our record, to all links;
- received records that improved our view: exactly those (the delta), to every link but
  the one they came from. Records that taught us nothing stop here, so a change
  crosses each link at most about once and gossip per change is O(links), not O(N^2);
- anti-entropy: our digest to every link every ``ANTI_ENTROPY`` seconds (jittered per
  link), which repairs anything a lost or refused message left behind.

``full_state`` (tests, bench) and answers to wants are split into messages of at most
``CHUNK_BYTES`` so a large mesh never hits the control channel's 1 MiB frame bound.

Records are signed by their owners (see ``proto.topology``); our own with the node's
``Signer``. A received message is refused whole, with a drop reason, when it does not
decode (``gossip_undecodable``), when it carries a record about the sending neighbour
that is not the one it authenticated as (other incarnation id or other signing key than
in its handshake: ``gossip_bad_origin``), or when a record that would change our view is
not validly signed by the peer it names (``gossip_bad_signature``).
"""

from __future__ import annotations

import random
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any

from sleeve.config import Target, parse_target
from sleeve.crypto.keys import Signer, format_peer_id
from sleeve.proto.routes import Routes
from sleeve.proto.topology import (
    FORMAT,
    ConnRecord,
    PeerRecord,
    Topology,
    TopologyAuthError,
    TopologyDecodeError,
    decode_records,
    encode_records,
)

ANTI_ENTROPY = 60.0
CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What the node tells the mesh about one of its links."""

    peer: bytes
    addr: str  # outbound: the address we dialled; inbound: remote IP + announced port
    outbound: bool
    established: bool


class Mesh:
    def __init__(self, signer: Signer, nickname: str, uid: int, *,
                 gc_delay: float = 1.0) -> None:
        self.me = signer.peer_id
        self.topology = Topology(signer, nickname, uid, gc_delay=gc_delay)
        self.routes = Routes(self.topology)
        # discovery asks every MESH_PERIOD; O(peers x links) to build (3 ms at 50 routers)
        self._candidates: tuple[int, int, dict[bytes, set[Target]]] | None = None
        self._uids: dict[bytes, int] = {}  # peer -> incarnation last seen (restarts)
        self._uids_gen = -1

    # -- our own record ---------------------------------------------------------------------
    def set_links(self, links: Iterable[LinkInfo]) -> bytes | None:
        """Our current links; returns the gossip message for all links if our record changed."""
        rec = self.topology.set_local_connections(
            ConnRecord(li.peer, li.addr[:262], li.outbound, li.established) for li in links)
        return None if rec is None else encode_records([rec])

    # -- gossip -----------------------------------------------------------------------------
    def full_state(self) -> list[bytes]:
        """Our whole view as one or more messages (a new neighbour, anti-entropy)."""
        return encode_chunked(self.topology.records())

    def receive(self, sender: bytes, sender_uid: int, sender_key: bytes,
                data: bytes) -> tuple[bytes | None, str]:
        """Merge a gossip message from a direct neighbour (see ``merge``).

        Returns (message to forward to every other link, or None; outcome).
        """
        delta, outcome = self.merge(sender, sender_uid, sender_key, data)
        return (encode_records(delta) if delta else None), outcome

    def merge(self, sender: bytes, sender_uid: int, sender_key: bytes,
              data: bytes, fmt: int = FORMAT, heard: set[bytes] | None = None,
              renewed: set[bytes] | None = None) -> tuple[list[PeerRecord], str]:
        """Merge a gossip message from a direct neighbour; returns (delta, outcome).

        ``sender``, ``sender_uid`` and ``sender_key`` are what the neighbour's handshake
        established: its peer id, incarnation id (Hello) and Ed25519 key (certified in
        its Hello). The delta is the records that improved our view; ``heard`` gets the
        peer ids of every record the message carried (the want table checks an answer
        brought what was claimed); ``renewed`` the peer ids of the delta's records that
        begin another incarnation of a peer we knew (it restarted). The outcome is
        "ok" or a drop reason, and nothing was merged unless it is "ok". A neighbour is
        the only source of its own record we accept directly: one about it with another
        incarnation id or key is a lie or a mix-up.
        """
        try:
            recs = decode_records(data, fmt)
        except TopologyDecodeError:
            return [], "gossip_undecodable"
        if heard is not None:
            heard.update(r.peer for r in recs)
        for r in recs:
            if r.peer == sender and (r.uid != sender_uid or r.key != sender_key):
                return [], "gossip_bad_origin"
        uids = {r.peer: old.uid for r in recs
                if (old := self.topology.get(r.peer)) is not None} if renewed is not None else {}
        try:
            delta = self.topology.merge(recs)
        except TopologyAuthError:
            return [], "gossip_bad_signature"
        if renewed is not None:
            renewed.update(r.peer for r in delta if uids.get(r.peer, r.uid) != r.uid)
        return delta, "ok"

    def gc(self, now: float) -> list[bytes]:
        """Forget peers that have been unreachable for a while; returns their ids."""
        return self.topology.gc(now)

    # -- discovery --------------------------------------------------------------------------
    def candidates(self, default_port: int) -> dict[bytes, set[Target]]:
        """Addresses to dial for every peer we know of.

        An outbound connection lists the address its owner dialled: the listening
        address of the remote peer. An inbound one lists where the dialler came from
        with the port it announced, which works unless the dialler sits behind NAT
        (then the dial fails and backs off; relay and hole punching cover that case).
        Cached until the topology changes (its ``generation``): the caller must not
        modify what it gets.
        """
        gen = self.topology.generation
        cached = self._candidates
        if cached is not None and cached[0] == gen and cached[1] == default_port:
            return cached[2]
        out: dict[bytes, set[Target]] = {}
        for rec in self.topology.records():
            for c in rec.conns:
                if c.peer == self.me:
                    continue
                try:
                    t = parse_target(c.addr, default_port)
                except ValueError:
                    continue  # a malformed address from gossip is ignored, not fatal
                out.setdefault(c.peer, set()).add(t)
        self._candidates = (gen, default_port, out)
        return out

    # -- views for status -------------------------------------------------------------------
    def restarted_peers(self) -> set[bytes]:
        """Peers whose record carries another incarnation (uid) than when last asked: they
        restarted. O(peers), only when the topology changed; a new peer is no restart."""
        topo = self.topology
        if topo.generation == self._uids_gen:
            return set()
        self._uids_gen = topo.generation
        uids = {r.peer: r.uid for r in topo.records()}
        renewed = {p for p, u in uids.items() if self._uids.get(p, u) != u}
        self._uids = uids
        return renewed

    def hop_counts(self) -> dict[bytes, int]:
        """Hops to every peer over symmetric established links (BFS; status only)."""
        links = self.routes.links
        dist = {self.me: 0}
        level = [self.me]
        while level:
            nxt = []
            for p in level:
                for q in links.get(p, ()):
                    if q not in dist:
                        dist[q] = dist[p] + 1
                        nxt.append(q)
            level = nxt
        del dist[self.me]
        return dist

    # ------------------------------------------------------------------ status views
    def peers_status(self, me: bytes, linked: Container[bytes]) -> list[dict[str, Any]]:
        """Every peer record as ``GET /status`` shows it (``linked``: our direct peers)."""
        reach = self.topology.reachable()
        return [{"peer": format_peer_id(r.peer), "nickname": r.nickname, "uid": r.uid,
                 "version": r.version, "self": r.peer == me,
                 "reachable": r.peer in reach, "direct": r.peer in linked,
                 "connections": [{"peer": format_peer_id(c.peer), "addr": c.addr,
                                  "outbound": c.outbound, "established": c.established}
                                 for c in r.conns]}
                for r in self.topology.records()]

    def routes_status(self, linked: Container[bytes]) -> list[dict[str, Any]]:
        """Our unicast routes: destination, next hop, hops, and whether the hop is linked."""
        hops = self.hop_counts()
        return [{"destination": format_peer_id(d), "via": format_peer_id(v),
                 "hops": hops.get(d), "usable": v in linked}
                for d, v in sorted(self.routes.unicast().items())]



def encode_chunked(records: Iterable[PeerRecord], fmt: int = FORMAT) -> list[bytes]:
    """Records as messages of at most about ``CHUNK_BYTES`` each (of kind ``fmt``)."""
    out: list[bytes] = []
    chunk: list[PeerRecord] = []
    size = 0
    for r in records:
        n = len(r.canonical())
        if chunk and size + n > CHUNK_BYTES:
            out.append(encode_records(chunk, fmt))
            chunk, size = [], 0
        chunk.append(r)
        size += n
    if chunk:
        out.append(encode_records(chunk, fmt))
    return out


def jitter(period: float) -> float:
    """A period spread over [0.75, 1.25] so links do not gossip in lockstep."""
    return period * random.uniform(0.75, 1.25)
