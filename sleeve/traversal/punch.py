"""Hole punching: control connections relayed through a neighbour, then UDP both ways.

Two peers that the mesh knows but that cannot dial each other (both behind NAT) run
the ordinary control handshake over a common neighbour's control connections (``via``
messages, see ``traversal.relay``); the mediator relays opaque bytes and adds the UDP
endpoint it observes for each. Then both punch: heartbeats to the observed and the
announced endpoints. The first datagrams use a low TTL so that they open our own
NAT's mapping without reaching the peer's NAT before the peer's own mapping exists (a
Linux NAT that saw an unsolicited datagram keeps that conntrack entry and moves the
peer's mapping to a random port). ``PUNCH_TIME`` without success: the attempt is
closed and retried later with backoff; the mesh relays meanwhile.

Relayed connections run through the node's ``spawn`` (``control.dialler.task_spawner``),
which counts and logs a task's unexpected exception and keeps the router running; the
attempt is retried after its backoff like one that failed.

Roles: the peer with the smaller id starts; a mediator relays at most ``4 x
MAX_VIRTUAL`` streams and tells the other end ``fin`` when either end leaves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from sleeve.forward.underlay import Underlay
from sleeve.links.link import Link
from sleeve.links.table import LinkTable
from sleeve.proto.stats import Counters
from sleeve.proto.topology import Topology
from sleeve.traversal.relay import RelayWriter

log = logging.getLogger("sleeve")

PUNCH_GRACE = 2.0  # a newly seen peer gets this long to be dialled directly first
PUNCH_BACKOFF_MAX = 60.0
MAX_VIRTUAL = 64  # relayed control connections in progress or up
PUNCH_TTL = 2
PUNCH_PHASE = 1.0
PUNCH_TIME = 20.0  # punch datagrams this long, then give up (the mesh relays)

# Runs a control connection over a relayed stream: Connections.run(reader, writer, outbound, ts)
RunConnection = Callable[[asyncio.StreamReader, RelayWriter, bool, None],
                         Coroutine[Any, Any, str]]
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Traversal:
    def __init__(self, me: bytes, links: LinkTable, topology: Topology, underlay: Underlay,
                 drops: Counters, stats: Counters, *, enabled: bool,
                 run_connection: RunConnection) -> None:
        self.me = me
        self.links = links
        self.topology = topology
        self.underlay = underlay
        self.drops = drops
        self.stats = stats
        self.enabled = enabled  # --no-discovery turns punching off too
        self._run_connection = run_connection
        self.spawn: Spawn | None = None  # the node's task group, while running
        # relayed control connections: peer -> (reader, writer, mediator peer)
        self.virtual: dict[bytes, tuple[asyncio.StreamReader, RelayWriter, bytes]] = {}
        self._next: dict[bytes, float] = {}
        self._attempts: dict[bytes, int] = {}
        # streams we relay as mediator, (from, to): told "fin" when either end leaves
        self._via_pairs: dict[tuple[bytes, bytes], None] = {}

    # ------------------------------------------------------------------ starting attempts
    def tick(self, now: float) -> None:
        """Punch datagrams on every link still punching (every tick)."""
        for link in self.links:
            if link.virtual and not link.endpoint_learnt:
                self._punch_send(link, now)

    def start_attempts(self, now: float) -> None:
        """Start relayed connections to peers no one can dial (the smaller id starts)."""
        if not self.enabled:
            return
        peers = self.topology.peers()
        for peer in peers:
            if peer == self.me or peer in self.links or peer in self.virtual:
                continue
            first = self._next.setdefault(peer, now + PUNCH_GRACE)
            if peer < self.me or now < first or len(self.virtual) >= MAX_VIRTUAL:
                continue
            med = self._mediator_for(peer)
            if med is None or self.spawn is None:
                continue
            n = self._attempts[peer] = self._attempts.get(peer, 0) + 1
            self._next[peer] = now + min(PUNCH_BACKOFF_MAX, 5.0 * 1.5 ** (n - 1))
            self.stats.inc("punch_attempts")
            self._start_virtual(peer, med, None, True)
        for peer in list(self._next):
            if peer not in peers:
                self._next.pop(peer, None)
                self._attempts.pop(peer, None)

    def _punch_send(self, link: Link, now: float) -> None:
        """A heartbeat to every endpoint the peer may have (low TTL at first)."""
        age = now - link.established_at
        if age > PUNCH_TIME:
            # Give up on this attempt; start_attempts tries again later with backoff,
            # and the mesh relays meanwhile.
            log.info("hole punching to %s failed after %.0fs", link.name, age)
            self.stats.inc("punch_failed")
            link.writer.close()
            return
        ttl = PUNCH_TTL if age < PUNCH_PHASE else None
        host, port = link.endpoint
        for ep in {(host, port), (host, link.hello_port)}:
            self.underlay.send_ttl(link, ep, link.session.seal(link.heartbeat_record(now)), ttl)

    def _mediator_for(self, peer: bytes) -> Link | None:
        for p in sorted(self.links.links):
            rec = self.topology.get(p)
            link = self.links.links[p]
            if rec is not None and link.usable and any(
                    c.peer == peer and c.established for c in rec.conns):
                return link
        return None

    def _start_virtual(self, peer: bytes, med: Link, observed: tuple[str, int] | None,
                       outbound: bool) -> None:
        mid = med.peer
        links = self.links

        def send(msg: dict[str, Any]) -> bool:
            link = links.get(mid)
            if link is None or link.writer.is_closing():
                return False
            link.send_control(msg)
            return True

        def buffered() -> int:
            link = links.get(mid)
            return 0 if link is None else link.write_backlog()

        reader = asyncio.StreamReader()
        writer = RelayWriter(peer, send, buffered, observed, mid)
        self.virtual[peer] = (reader, writer, mid)

        async def run() -> None:
            try:
                await self._run_connection(reader, writer, outbound, None)
            finally:
                if self.virtual.get(peer, (None, None, None))[1] is writer:
                    del self.virtual[peer]

        assert self.spawn is not None
        self.spawn(run())

    # ------------------------------------------------------------------ via messages
    def on_via(self, link: Link, m: dict[str, Any]) -> None:
        to = m.get("to")
        if isinstance(to, bytes) and len(to) == 8:  # we are the mediator: pass it on
            self._mediate(link, to, m)
            return
        frm, data = m.get("from"), m.get("d")
        if not (isinstance(frm, bytes) and len(frm) == 8):
            self.drops.inc("bad_via")
            return
        entry = self.virtual.get(frm)
        if m.get("fin") is True:
            if entry is not None and entry[2] == link.peer:
                entry[0].feed_eof()
            return
        if not isinstance(data, bytes):
            self.drops.inc("bad_via")
            return
        ep = m.get("ep")
        observed = None
        if (isinstance(ep, list) and len(ep) == 2 and isinstance(ep[0], str)
                and type(ep[1]) is int and 0 < ep[1] < 65536):
            observed = (ep[0], ep[1])
        if entry is None:
            # Only the smaller id starts, only peers we know, only while unconnected.
            if (frm >= self.me or frm in self.links or len(self.virtual) >= MAX_VIRTUAL
                    or frm not in self.topology.peers() or self.spawn is None):
                self.drops.inc("via_refused")
                return
            self._start_virtual(frm, link, observed, False)
            entry = self.virtual[frm]
        reader, writer, mid = entry
        if mid != link.peer:
            self.drops.inc("via_wrong_mediator")
            return
        if writer.observed is None and observed is not None:
            writer.observed = observed
        reader.feed_data(data)

    def _mediate(self, link: Link, to: bytes, m: dict[str, Any]) -> None:
        target = self.links.get(to)
        if target is None:
            self.drops.inc("via_no_route")
            return
        fwd: dict[str, Any] = {"t": "via", "from": link.peer}
        data = m.get("d")
        if m.get("fin") is True:
            fwd["fin"] = True
        elif isinstance(data, bytes):
            fwd["d"] = data
        else:
            self.drops.inc("bad_via")
            return
        if link.endpoint_learnt:
            fwd["ep"] = [link.endpoint[0], link.endpoint[1]]
        target.send_control(fwd)
        self.stats.inc("via_relayed")
        pair = (link.peer, to)
        if "fin" in fwd:
            self._via_pairs.pop(pair, None)
        elif pair not in self._via_pairs:
            if len(self._via_pairs) >= 4 * MAX_VIRTUAL:
                self._via_pairs.pop(next(iter(self._via_pairs)))
            self._via_pairs[pair] = None

    def link_down(self, link: Link) -> None:
        """A link left: relayed streams through it end, and their other ends are told."""
        peer = link.peer
        for a, b in list(self._via_pairs):
            if peer in (a, b) and peer not in self.links:
                del self._via_pairs[(a, b)]
                other = self.links.get(b if a == peer else a)
                if other is not None:  # the relayed stream's other end learns it is over
                    other.send_control({"t": "via", "from": peer, "fin": True})
        for reader, w, med in list(self.virtual.values()):
            if med == peer and not w.is_closing():  # relayed streams die with their relay
                w.abort()
                reader.feed_eof()
