"""The topology as a gossip channel: who is in the mesh and who is linked to whom.

``Mesh`` (sleeve.mesh) holds the signed peer records and the routes; this channel
plugs it into the gossip router. Its gossip data is a *set of peers* whose records are
encoded when the message is actually sent (weaveworks/mesh's habit): merging two is a
set union, and a link that was backed up gets the newest record of each peer once.

- our own record changed (a link came, went or changed state): the record, to every
  link (only the owner pushes records);
- a neighbour's message improved our view: digest entries of the improved peers to
  every other link, which pulls the records it lacks (32 bytes an entry instead of the
  record: a peer that hears of a change from k neighbours at once decoded k copies of
  an O(links) record, the largest share of a converging router's CPU at 50 routers;
  now it fetches one, ``WANT_TIMEOUT``). A neighbour does not get the entry of a
  record whose owner lists it as a link (``RelayedTopology.for_neighbour``): the owner
  sends each new version of its record to all its links itself. In a full mesh of N
  that turns each record change from about N^2 messages into N (without it 50 routers
  had no full routes after 120 s: bench/results/scale/). A neighbour that lost the
  owner's message lost its link with it and gets a digest on the next link (and at
  anti-entropy);
- a new link and anti-entropy: a digest of every record we hold (32 bytes each, not the
  records: ``proto.topodigest``); the other side asks (want) for the records whose entry
  beats its own and gets just those (an answer). A want is not repeated to another
  neighbour that claims the identical entry while one is in flight (``gossip.wants``:
  claims are not trusted; the other claimants are asked next, at once, if it fails), so
  a router that restarts into a mesh of N fetches the N records once, not once per
  link. A repeated want or ANSWER digest within ``WANT_TIMEOUT`` is answered once.
  What an answer teaches us goes on as a digest of those peers (the neighbours pull
  what they lack); a periodic digest asks for one in return (ANSWER), so both sides
  repair.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from sleeve.gossip.wants import WANT_TIMEOUT, AnswerMemo, Asks, Claim, WantTable
from sleeve.mesh import LinkInfo, Mesh, encode_chunked
from sleeve.proto.gossip import Gossip, GossipData, GossipRefused
from sleeve.proto.topodigest import (
    ANSWER_RECORDS,
    DIGEST,
    WANT,
    decode_digest,
    decode_want,
    encode_digest,
    encode_want,
    holds_newer,
    kind_of,
    lacking,
    newer_than,
)
from sleeve.proto.topology import FORMAT, PeerRecord, TopologyDecodeError

OWN_RECORD_INTERVAL = 1.0  # s between publications of our record for gained links...
GAIN_FANOUT = 16  # ...up to this many links; beyond, the interval grows with them
LOSS_HOLD = 0.5  # s a loss waits after a publication, to go out with the losses after it
__all__ = ["GAIN_FANOUT", "LOSS_HOLD", "OWN_RECORD_INTERVAL", "WANT_TIMEOUT",
           "TopologyChannel", "TopologyData", "gain_interval"]

# A neighbour's (uid, Ed25519 key) as its handshake proved them; None: no such link.
Neighbour = Callable[[bytes], tuple[int, bytes] | None]


def gain_interval(links: int) -> float:
    """Seconds between publications of our record for gained links: ``OWN_RECORD_INTERVAL``
    up to ``GAIN_FANOUT`` links, then in proportion to them (3 s at 49). A publication
    costs every one of the N peers a verify and a merge of O(links), so with the interval
    growing with the links a full mesh forming (or re-forming after restarts) gossips
    O(N) records per second in all instead of O(N^2) (issue 23: 50 routers on 2 cores
    spent 108 CPU-s on 10 restarts, most of it in topology gossip). A gained link only
    adds a route; losses, which break routes, are published at once."""
    return OWN_RECORD_INTERVAL * max(1.0, links / GAIN_FANOUT)


class TopologyData:
    """What waits to be sent on one link, as sets of peers; records and digest entries
    are read from the topology when the message is sent (so a backed-up link gets the
    newest of each once). ``peers``: records pushed (news); ``answers``: records asked
    for; ``digest``: digest entries of these peers (``full``: of every peer, with
    ANSWER when ``ask``); ``wants``: records we ask for."""

    __slots__ = ("_mesh", "answers", "ask", "digest", "full", "peers", "wants")

    def __init__(self, mesh: Mesh, peers: set[bytes] | None = None, *,
                 answers: set[bytes] | None = None, digest: set[bytes] | None = None,
                 full: bool = False, ask: bool = False,
                 wants: set[bytes] | None = None) -> None:
        self._mesh = mesh
        self.peers = peers or set()
        self.answers = answers or set()
        self.digest = digest or set()
        self.full = full
        self.ask = ask
        self.wants = wants or set()

    def __bool__(self) -> bool:
        return bool(self.peers or self.answers or self.digest or self.full or self.wants)

    def encode(self) -> list[bytes]:
        topo = self._mesh.topology

        def recs(ps: set[bytes]) -> list[PeerRecord]:
            return [r for r in (topo.get(p) for p in sorted(ps)) if r is not None]

        out = encode_chunked(recs(self.peers)) if self.peers else []
        if self.answers:
            out += encode_chunked(recs(self.answers), ANSWER_RECORDS)
        if self.full:
            out += encode_digest(topo.records(), self.ask)
        elif self.digest:
            out += encode_digest(recs(self.digest), False)
        if self.wants:
            out += encode_want(self.wants)
        return out

    def merge(self, other: GossipData) -> GossipData:
        if isinstance(other, TopologyData):
            self.peers |= other.peers
            self.answers |= other.answers
            self.digest |= other.digest
            self.full |= other.full
            self.ask |= other.ask
            self.wants |= other.wants
            return self
        raise TypeError("topology gossip merges only with topology gossip")


class RelayedTopology(TopologyData):
    """A delta to pass on, as digest entries (the neighbours pull what they lack): each
    neighbour gets the entries of the peers whose records do not list it, and that its
    own record does not list as an established link either -- unless the record is the
    first of a restarted owner's new incarnation (``renewed``).

    The second condition: a record's owner sends each change of it to all its links,
    and a new link starts with a full exchange, so a neighbour that says it is linked
    to the owner has it or is about to. Not so for the first record of a restarted
    owner: the neighbour's listed link may be to the earlier incarnation, dead and not
    yet noticed, and nothing else would bring it the new one before anti-entropy. (A
    peer new to us is taken as new to the mesh: the link its neighbour lists is to it.)
    While a mesh forms or re-forms, the records of the routers that just started list
    few of their links (gains are published at most every ``gain_interval``); without
    the condition each of their publications was relayed by every router to nearly
    every link: ~N^2 digest messages for a record the N had from its owner already
    (issue 23: in a py-spy of a router while 10 of 50 restarted, relaying was a quarter
    of its event loop's time, receiving those relays a tenth more)."""

    __slots__ = ("_listed", "_renewed")

    def __init__(self, mesh: Mesh, peers: set[bytes],
                 renewed: set[bytes] | None = None) -> None:
        super().__init__(mesh, digest=peers)
        # who each record lists, once (for_neighbour runs for every link)
        self._listed = {p: {c.peer for c in r.conns}
                        for p in peers if (r := mesh.topology.get(p)) is not None}
        self._renewed = renewed or set()

    def for_neighbour(self, peer: bytes) -> GossipData | None:
        rec = self._mesh.topology.get(peer)
        linked = {c.peer for c in rec.conns if c.established} if rec is not None else ()
        need = {p for p, listed in self._listed.items() if p != peer and peer not in listed
                and (p not in linked or p in self._renewed)}
        # a plain TopologyData: merged with what waits for the link, sent as it is
        return TopologyData(self._mesh, digest=need) if need else None


class TopologyChannel:
    def __init__(self, mesh: Mesh, neighbour: Neighbour) -> None:
        self.mesh = mesh
        self._neighbour = neighbour
        self.gossip_handle: Gossip | None = None  # set once registered
        self._published: dict[bytes, bool] = {}  # peer -> established, as last published
        self._next_gain = 0.0
        self._published_at = -LOSS_HOLD  # when our record last changed here
        self._links: set[bytes] = set()  # neighbours as of the last sync_links
        self.wants = WantTable(self._lacks)
        self._memo = AnswerMemo()

    def status(self) -> dict[str, Any]:
        """Records asked for and not yet come, and claims not asked by reason (a neighbour
        over its quota, the table full): shown in ``status`` and as a metric."""
        return {"wants_pending": len(self.wants),
                "wants_skipped": dict(self.wants.skipped)}

    def _lacks(self, peer: bytes, claim: Claim) -> bool:
        return newer_than(claim, self.mesh.topology.get(peer))

    def sync_links(self, links: Iterable[LinkInfo], now: float) -> None:
        """Publish our links in our record; gossip it if it changed.

        A lost link (gone, or no longer established) is published at once (the mesh
        must route around it), or, within ``LOSS_HOLD`` of our last publication, at
        the first call past it: routers that stop together (a host's restart, a rack's
        power) are lost by each neighbour one after the other, within a fraction of a
        second, and each loss a record to every link (10 of 50 routers restarted: 10
        publications by each of the 40 others). The topology just changed, so the node
        ticks at 4 Hz meanwhile (``pacing``). Gains (a new or newly established link)
        are published at most once per ``gain_interval``: each publication is a record
        of O(links) bytes to every link, verified and merged by every peer, and a router
        joining a mesh of N gains 2N link states within seconds. The node calls this
        every tick, so a held-back gain goes out within the interval.
        """
        links = list(links)
        cur = {li.peer: li.established for li in links}
        gone = self._links - cur.keys()
        self._links = set(cur)
        if gone:  # their wants will not be answered: ask the next claimants at once
            self._memo.forget(gone)
            self._ask(self.wants.links_gone(gone, now))
        self._ask(self.wants.expire(now))
        lost = any(est and not cur.get(p, False) for p, est in self._published.items())
        if now < (self._published_at + LOSS_HOLD if lost else self._next_gain):
            return
        if self.mesh.set_links(links) is not None:
            self._next_gain = now + gain_interval(len(links))
            self._published_at = now
            if self.gossip_handle is not None:
                self.gossip_handle.neighbours(TopologyData(self.mesh, {self.mesh.me}))
        self._published = cur

    # -- Gossiper -------------------------------------------------------------------------
    def gossip(self) -> GossipData | None:
        """A new link or anti-entropy: our digest, asking for the other side's in return."""
        return TopologyData(self.mesh, full=True, ask=True)

    def on_gossip(self, src: bytes, msg: bytes, now: float) -> GossipData | None:
        who = self._neighbour(src)
        if who is None:
            # a connection that lost a duplicate race (or just closed) can still deliver a
            # message: benign while a mesh forms, and not a decoding failure
            raise GossipRefused("gossip_no_link", "gossip from a peer with no link")
        kind = kind_of(msg)
        if kind == DIGEST:
            self._on_digest(src, who[0], msg, now)
            return None
        if kind == WANT:
            try:
                ids = decode_want(msg)
            except TopologyDecodeError:
                raise GossipRefused("gossip_bad_want") from None
            topo = self.mesh.topology
            have = self._memo.fresh(src, who[0], ((p, r.version, r.uid) for p in ids
                                          if (r := topo.get(p)) is not None), now)
            if have:
                self._reply(src, TopologyData(self.mesh, answers=have))
            return None
        fmt = ANSWER_RECORDS if kind == ANSWER_RECORDS else FORMAT
        heard: set[bytes] = set()
        renewed: set[bytes] = set()
        delta, outcome = self.mesh.merge(src, who[0], who[1], msg, fmt, heard, renewed)
        if outcome != "ok":
            raise GossipRefused(outcome)
        if len(self.wants):
            self._ask(self.wants.heard(src, heard, now))
        if not delta:
            return None
        peers = {r.peer for r in delta}
        me = self.mesh.me
        if me in peers:
            # our record, bumped past an earlier incarnation of ours: news for every
            # neighbour, the sender included (it holds the record we just outbid)
            peers.discard(me)
            if self.gossip_handle is not None:
                self.gossip_handle.neighbours(TopologyData(self.mesh, {me}))
            if not peers:
                return None
        if fmt == FORMAT:
            return RelayedTopology(self.mesh, peers, renewed)
        # Catch-up the sender already had: the others likely hold it too, so they get
        # digest entries and pull what they lack.
        return TopologyData(self.mesh, digest=peers)

    def _on_digest(self, src: bytes, src_uid: int, msg: bytes, now: float) -> None:
        try:
            entries, answer = decode_digest(msg)
        except TopologyDecodeError:
            raise GossipRefused("gossip_bad_digest") from None
        self._ask(self.wants.expire(now))
        on_claim = self.wants.on_claim
        wants = {peer for peer, version, uid, tag in lacking(self.mesh.topology, entries)
                 if on_claim(src, peer, (version, uid, tag), now)}
        reply = TopologyData(self.mesh, wants=wants)
        if answer and self._memo.digest_due(src, src_uid, now) \
                and holds_newer(self.mesh.topology, entries):
            reply.full = True  # at most one per link per WANT_TIMEOUT
            self._memo.digest_sent(src, src_uid, now)
        if reply:
            self._reply(src, reply)

    def _ask(self, asks: Asks) -> None:
        """Send wants the want table decided on, one message per neighbour."""
        if not asks:
            return
        by: defaultdict[bytes, set[bytes]] = defaultdict(set)
        for nb, peer in asks:
            by[nb].add(peer)
        for nb, peers in by.items():
            self._reply(nb, TopologyData(self.mesh, wants=peers))

    def _reply(self, dst: bytes, data: TopologyData) -> None:
        if self.gossip_handle is not None:
            self.gossip_handle.reply(dst, data)

    def on_broadcast(self, origin: bytes, msg: bytes, now: float) -> bool:
        raise GossipRefused("not_broadcast", "the topology travels by gossip only")

    def on_unicast(self, src: bytes, msg: bytes, now: float) -> None:
        raise GossipRefused("not_unicast", "the topology travels by gossip only")

    def peer_gone(self, peer: bytes) -> None:
        pass  # the topology is where "gone" is decided (Mesh.gc)
