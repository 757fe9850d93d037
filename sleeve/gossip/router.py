"""The gossip router: named channels over the control connections.

Each channel (``sleeve.proto.gossip.Gossiper``) is registered once, before the node
starts, and gets a ``Gossip`` handle. The router moves three kinds of message:

- gossip ``g``: a channel's data from one neighbour to the next. What a channel returns
  from ``on_gossip`` (the delta) goes on to every other neighbour; a new link gets
  every channel's ``gossip()`` (its complete state; the topology's digest); every
  ``ANTI_ENTROPY`` seconds (jittered per link, stretched on routers with more than
  ``ANTI_ENTROPY_FANOUT`` links: see ``anti_entropy_period``) each link gets it again,
  which repairs whatever a lost or refused message left;
- broadcast ``b``: a message signed by its origin, passed on verbatim down the origin's
  broadcast tree (``routes``), delivered once at every reachable peer;
- unicast ``u``: a message signed by its origin for one peer, forwarded hop by hop
  towards it with a hop limit.

Wire (control messages; the topology channel keeps its own pre-channel form)::

    topology:  {"t": "topo", "r": <records>}
    others:    {"t": "g", "c": channel, "k": "g", "r": payload}
               {"t": "g", "c": channel, "k": "b" | "u", "r": payload,
                "o": origin (8 bytes), "u": origin's uid, "n": seq, "d": dst (u only),
                "h": hops left (u only), "s": Ed25519 signature}

    s signs msgpack([b"sleeve-gossip-v1", c, k, o, u, n, d or b"", r]) with the
    origin's signing key, the one its topology record carries. A receiver accepts a
    broadcast or unicast only when that signature checks, when ``u`` is the origin's
    current incarnation (its record's uid) and when ``n`` is fresh in a per-origin
    replay window: neither a relay nor a replay can speak for another peer.

Trust: gossip ``g`` comes from a neighbour whose identity the handshake proved; the
channel decides what it accepts of it (e.g. records signed by their owners).

Bounds: every channel has a message size bound (counted drops both ways); a link whose
control connection is backed up keeps one merged ``GossipData`` per channel instead
of a queue (``GossipData.merge``). Unknown channels: gossip is dropped and counted;
broadcasts and unicasts are still relayed (their origin signature is the router's, so
a peer without a channel does not split that channel's mesh).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from sleeve.crypto.keys import Signer, verify
from sleeve.links.link import Link
from sleeve.links.table import LinkTable
from sleeve.mesh import ANTI_ENTROPY, jitter
from sleeve.proto.gossip import GossipData, Gossiper, GossipRefused, PerNeighbour
from sleeve.proto.replay import ReplayWindow
from sleeve.proto.stats import Counters
from sleeve.proto.topology import Topology

log = logging.getLogger("sleeve")

ANTI_ENTROPY_FANOUT = 8  # full states per ANTI_ENTROPY a router sends, at most about

TOPOLOGY = "topology"  # the channel that travels as the pre-channel {"t": "topo"} message
DEFAULT_MAX_MSG = 64 * 1024
BACKLOG_MAX = 256 * 1024  # a control connection this backed up gets merged gossip later
MAX_HOPS = 16
_LABEL = b"sleeve-gossip-v1"
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")

Tree = Callable[[bytes, bytes | None], list[Link]]  # (origin, came_from) -> links down
Towards = Callable[[bytes], Link | None]  # next hop to a peer


@dataclass
class _Channel:
    name: str
    gossiper: Gossiper
    max_msg: int
    counters: Counters = field(default_factory=Counters)
    drops: Counters = field(default_factory=Counters)


class ChannelGossip:
    """The ``Gossip`` handle of one channel."""

    def __init__(self, router: GossipRouter, ch: _Channel) -> None:
        self._r = router
        self._ch = ch

    def unicast(self, dst: bytes, msg: bytes) -> bool:
        return self._r.send_unicast(self._ch, dst, msg)

    def broadcast(self, msg: bytes) -> None:
        self._r.send_broadcast(self._ch, msg)

    def neighbours(self, data: GossipData) -> None:
        self._r.to_links(self._ch, data, exclude=None)

    def reply(self, peer: bytes, data: GossipData) -> None:
        self._r.to_link(self._ch, peer, data)


class GossipRouter:
    def __init__(self, me: bytes, uid: int, signer: Signer, links: LinkTable,
                 topology: Topology, tree: Tree, towards: Towards, drops: Counters,
                 stats: Counters) -> None:
        self.me = me
        self.uid = uid
        self.signer = signer
        self.links = links
        self.topology = topology
        self.tree = tree
        self.towards = towards
        self.drops = drops
        self.stats = stats
        self.channels: dict[str, _Channel] = {}
        self._seq = 0
        self._windows: dict[bytes, tuple[int, ReplayWindow]] = {}  # origin -> (uid, window)

    def register(self, name: str, gossiper: Gossiper,
                 max_msg: int = DEFAULT_MAX_MSG) -> ChannelGossip:
        """Add a channel (before the node starts); its name is unique and short."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"bad gossip channel name {name!r}")
        if name in self.channels:
            raise ValueError(f"gossip channel {name!r} is already registered")
        ch = _Channel(name, gossiper, max_msg)
        self.channels[name] = ch
        return ChannelGossip(self, ch)

    # ------------------------------------------------------------------ links
    def link_up(self, link: Link) -> None:
        """A new link: it may have been partitioned away, so tell it everything."""
        for ch in self.channels.values():
            data = ch.gossiper.gossip()
            if data is not None:
                self._queue(link, ch, data)
        link.next_gossip = time.monotonic() + jitter(self.anti_entropy_period())

    def anti_entropy_period(self) -> float:
        """Per link: ``ANTI_ENTROPY``, stretched so that a router sends about
        ``ANTI_ENTROPY_FANOUT`` full states per ``ANTI_ENTROPY`` however many links it has.
        A full state is O(peers) bytes (the topology's digest: 32 bytes a peer; it was
        O(peers x links) before the digest); sent to every
        link each period, a full mesh of 50 spent most of its idle time on it. Each router
        still receives ~FANOUT full states per period from its neighbours as a whole, so
        repair stays about as fast (weaveworks/mesh gossips to log2(n) neighbours)."""
        return ANTI_ENTROPY * max(1.0, len(self.links) / ANTI_ENTROPY_FANOUT)

    def tick(self, now: float) -> None:
        period = None
        for link in self.links:
            if now >= link.next_gossip:
                period = period or self.anti_entropy_period()
                link.next_gossip = now + jitter(period)
                for ch in self.channels.values():
                    data = ch.gossiper.gossip()
                    if data is not None:
                        self._queue(link, ch, data)
            elif link.gossip_pending:
                self._flush(link)

    def peer_gone(self, peer: bytes) -> None:
        self._windows.pop(peer, None)
        for ch in self.channels.values():
            ch.gossiper.peer_gone(peer)

    # ------------------------------------------------------------------ sending
    def to_links(self, ch: _Channel, data: GossipData, exclude: bytes | None) -> None:
        per = data if isinstance(data, PerNeighbour) else None
        for link in self.links:
            if link.peer != exclude:
                d = data if per is None else per.for_neighbour(link.peer)
                if d is not None:
                    self._queue(link, ch, d)

    def to_link(self, ch: _Channel, peer: bytes, data: GossipData) -> None:
        link = self.links.get(peer)
        if link is not None:
            self._queue(link, ch, data)

    def _queue(self, link: Link, ch: _Channel, data: GossipData) -> None:
        waiting = link.gossip_pending.get(ch.name)
        link.gossip_pending[ch.name] = data if waiting is None else waiting.merge(data)
        if link.write_backlog() < BACKLOG_MAX:
            self._flush(link)

    def _flush(self, link: Link) -> None:
        pending, link.gossip_pending = link.gossip_pending, {}
        for name, data in pending.items():
            ch = self.channels[name]
            for msg in data.encode():
                if len(msg) > ch.max_msg:
                    self._drop(ch, "tx_too_large")  # our bug: never send what peers refuse
                    log.error("not sending %d bytes of %s gossip (bound %d)", len(msg),
                              name, ch.max_msg)
                    continue
                if name == TOPOLOGY:
                    self._send(link, ch, {"t": "topo", "r": msg}, len(msg))
                else:
                    self._send(link, ch, {"t": "g", "c": name, "k": "g", "r": msg}, len(msg))

    def _send(self, link: Link, ch: _Channel, m: dict[str, Any], n: int) -> None:
        link.send_control(m)
        ch.counters.inc("tx_msgs")
        ch.counters.inc("tx_bytes", n)
        self.stats.inc("gossip_tx_msgs")
        self.stats.inc("gossip_tx_bytes", n)

    def _signed(self, ch: _Channel, kind: str, dst: bytes, msg: bytes) -> dict[str, Any] | None:
        if len(msg) > ch.max_msg:
            self._drop(ch, "tx_too_large")
            return None
        self._seq += 1
        m: dict[str, Any] = {"t": "g", "c": ch.name, "k": kind, "r": msg, "o": self.me,
                             "u": self.uid, "n": self._seq}
        if kind == "u":
            m["d"] = dst
            m["h"] = MAX_HOPS
        m["s"] = self.signer.sign(_signed_bytes(m))
        return m

    def send_broadcast(self, ch: _Channel, msg: bytes) -> None:
        m = self._signed(ch, "b", b"", msg)
        if m is not None:
            for link in self.tree(self.me, None):
                self._send(link, ch, m, len(msg))

    def send_unicast(self, ch: _Channel, dst: bytes, msg: bytes) -> bool:
        via = self.towards(dst)
        if via is None:
            return False
        m = self._signed(ch, "u", dst, msg)
        if m is None:
            return False
        self._send(via, ch, m, len(msg))
        return True

    # ------------------------------------------------------------------ receiving
    def on_topo(self, link: Link, m: dict[str, Any]) -> None:
        """The topology channel's message (pre-channel wire form)."""
        ch = self.channels.get(TOPOLOGY)
        data = m.get("r")
        if ch is None or not isinstance(data, bytes):
            self.drops.inc("gossip_undecodable")
            return
        self._on_gossip(link, ch, data)

    def on_message(self, link: Link, m: dict[str, Any]) -> None:
        """A ``{"t": "g"}`` control message from ``link``'s peer (untrusted content)."""
        name, kind, data = m.get("c"), m.get("k"), m.get("r")
        if not (isinstance(name, str) and kind in ("g", "b", "u") and isinstance(data, bytes)):
            self.drops.inc("gossip_bad_envelope")
            return
        ch = self.channels.get(name)
        if ch is not None and len(data) > ch.max_msg:
            self._drop(ch, "too_large")
            return
        if kind == "g":
            if ch is None or name == TOPOLOGY:
                self.drops.inc("gossip_unknown_channel")
                return
            self._on_gossip(link, ch, data)
            return
        origin = m.get("o")
        if not (isinstance(origin, bytes) and len(origin) == 8):
            self.drops.inc("gossip_bad_envelope")
            return
        if kind == "u":
            self._on_unicast(link, ch, m, origin, data)
        else:
            self._on_broadcast(link, ch, m, origin, data)

    def _on_gossip(self, link: Link, ch: _Channel, data: bytes) -> None:
        ch.counters.inc("rx_msgs")
        ch.counters.inc("rx_bytes", len(data))
        self.stats.inc("gossip_rx_msgs")
        self.stats.inc("gossip_rx_bytes", len(data))
        try:
            delta = ch.gossiper.on_gossip(link.peer, data, time.monotonic())
        except GossipRefused as e:
            self._drop(ch, e.reason)
            # counted either way; a forming mesh's duplicate connections gave hundreds of
            # warnings for the benign no-link case
            (log.debug if e.reason == "gossip_no_link" else log.warning)(
                "%s gossip from %s refused: %s", ch.name, link.name, e.reason)
            return
        if delta is not None:
            ch.counters.inc("updates")
            self.stats.inc("gossip_updates")
            self.to_links(ch, delta, exclude=link.peer)

    def _on_broadcast(self, link: Link, ch: _Channel | None, m: dict[str, Any],
                      origin: bytes, data: bytes) -> None:
        if origin == self.me:
            self.drops.inc("gossip_loop")
            return
        if not self._authentic(m, origin):
            return
        for child in self.tree(origin, link.peer):
            child.send_control(m)  # verbatim: the origin's signature stays valid
        if ch is None:
            self.stats.inc("gossip_relayed_unknown")
            return
        ch.counters.inc("rx_msgs")
        ch.counters.inc("rx_bytes", len(data))
        try:
            if ch.gossiper.on_broadcast(origin, data, time.monotonic()):
                ch.counters.inc("updates")
        except GossipRefused as e:
            self._drop(ch, e.reason)

    def _on_unicast(self, link: Link, ch: _Channel | None, m: dict[str, Any], origin: bytes,
                    data: bytes) -> None:
        dst, hops = m.get("d"), m.get("h")
        if not (isinstance(dst, bytes) and len(dst) == 8 and type(hops) is int):
            self.drops.inc("gossip_bad_envelope")
            return
        if dst != self.me:
            if hops <= 0:
                self.drops.inc("gossip_hop_limit")
                return
            via = self.towards(dst)
            if via is None or via is link:
                self.drops.inc("gossip_no_route")
                return
            via.send_control({**m, "h": hops - 1})  # h is outside the signature
            self.stats.inc("gossip_relayed_unicasts")
            return
        if ch is None:
            self.drops.inc("gossip_unknown_channel")
            return
        if not self._authentic(m, origin):
            return
        ch.counters.inc("rx_msgs")
        ch.counters.inc("rx_bytes", len(data))
        try:
            ch.gossiper.on_unicast(origin, data, time.monotonic())
        except GossipRefused as e:
            self._drop(ch, e.reason)

    def _authentic(self, m: dict[str, Any], origin: bytes) -> bool:
        """Signed by the origin's current incarnation, and not seen before."""
        rec = self.topology.get(origin)
        uid, seq, sig = m.get("u"), m.get("n"), m.get("s")
        if rec is None or not rec.key:
            self.drops.inc("gossip_unknown_origin")
            return False
        if not (type(uid) is int and type(seq) is int and isinstance(sig, bytes)
                and 0 < seq < 1 << 64):
            self.drops.inc("gossip_bad_envelope")
            return False
        if uid != rec.uid:
            self.drops.inc("gossip_stale_incarnation")
            return False
        if not verify(rec.key, _signed_bytes(m), sig):
            self.drops.inc("gossip_bad_signature")
            return False
        held = self._windows.get(origin)
        if held is None or held[0] != uid:
            held = self._windows[origin] = (uid, ReplayWindow())
        reason = held[1].accept(seq)
        if reason is not None:
            self.drops.inc("gossip_replayed")
            return False
        return True

    def _drop(self, ch: _Channel, reason: str) -> None:
        ch.drops.inc(reason)
        self.drops.inc(reason if reason.startswith("gossip_") else f"gossip_{ch.name}_{reason}")

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        """Per channel: its counters, drops and size bound, and what the channel itself
        reports (a gossiper with a ``status()`` method, e.g. topology's wanted records)."""
        out: dict[str, Any] = {}
        for name, ch in self.channels.items():
            own = getattr(ch.gossiper, "status", None)
            out[name] = {**ch.counters.snapshot(), "drops": ch.drops.snapshot(),
                         "max_msg": ch.max_msg, **(own() if callable(own) else {})}
        return out


def _signed_bytes(m: dict[str, Any]) -> bytes:
    fields = [_LABEL, m["c"], m["k"], m["o"], m["u"], m["n"], m.get("d", b""), m["r"]]
    return msgpack.packb(fields, use_bin_type=True)  # type: ignore[no-any-return]

