"""The IPAM channel ("ipam") and the allocation API: one sans-IO object per router.

Runs on the event loop like an actor: every method is called one at a time, ``now``
comes in, messages go out through the ``Gossip`` handle, nothing blocks. An
``allocate`` that cannot finish at once returns a pending ``Allocation``; pending
operations are retried after every ring change and on ``tick(now)``, and complete by
calling their done-callbacks (the asyncio adapter resolves a future there).

Asking for space (one request in flight per allocator)::

    IDLE --need space--> ASKING(donor) --GRANT--> IDLE (retry pending ops)
                           |  DENIED / no reply in REQ_TIMEOUT: next donor
                           |  (at most MAX_ASKS sends per round, then fail)
                           +--no route to any donor--> WAITING --tick--> ASKING
                                   WAITING longer than UNREACHABLE_WAIT: fail clearly

The donor is chosen at random, weighted by the free space the ring says each peer
owns inside the wanted subnet. It hands over a whole free entry, or the upper half of
its largest free run (one new token: a split; two: a carve), broadcasts the changed
entries and unicasts its full ring in the GRANT (so the receiver knows every token
inside the space it now owns), or it sends DENIED.

Deviation from docs/architecture.md: ``on_gossip`` merges and returns None instead of
the delta, so the gossip router relays nothing onwards (as Weave's IPAM). Every change
travels once, by its owner's broadcast; gossip is the repair path (new links,
anti-entropy, healed partitions), and a change a broadcast missed still spreads one
hop per anti-entropy round. Relaying deltas would cost O(peers^2) messages per change
in a full mesh. The requester and donor halves of space moving live in space.py.

Trust (what a merge believes): broadcasts and unicasts come with an origin the router
authenticated; gossip comes from an authenticated neighbour but carries other peers'
entries, which are not signed. We believe any well-formed entry that wins the ring's
tie rule, except that nothing may take away space where we hold allocations (the
merge is refused and recorded as a conflict), our own entries are re-imposed when an
old copy comes back, and a ring seeded differently is refused. A GRANT is only acted
on as a reply when it comes from the donor we asked. Signed entries are not done.
"""

from __future__ import annotations

import bisect
import collections
import ipaddress
import random
from collections.abc import Sequence
from typing import Any

from sleeve.ipam import space, state, wire
from sleeve.ipam.consensus import Consensus, ConsensusConflict, Init
from sleeve.ipam.ring import Entry, Ring, RingConflict, join
from sleeve.ipam.validate import (
    Allocation,
    IpamError,
    IPv4Net,
    bounds,
    check_id,
    parse_range,
    parse_subnet,
)
from sleeve.proto.gossip import Gossip, GossipData, GossipRefused

DEFAULT_RANGE = "10.32.0.0/12"  # as Weave
TICK = space.TICK
UNREACHABLE_WAIT = space.UNREACHABLE_WAIT  # (tests read it here)
MAX_CONFLICTS = 64

class IpamData:
    """GossipData for the ring: ``entries`` (a delta) or the full ring, plus paxos rows.

    Encoded lazily from the allocator's current state; merge is the ring's join.
    """

    def __init__(self, a: Allocator, entries: dict[int, Entry] | None, paxos: bool) -> None:
        self.a = a
        self.entries = entries  # None: the full ring
        self.paxos = paxos

    def encode(self) -> list[bytes]:
        a = self.a
        out = []
        if a.ring.seeded:
            if self.entries is None:
                out += a.full_ring()
            else:
                r = a.ring
                out += wire.encode_ring(r.start, r.end, r.seeds, list(self.entries.values()),
                                        full=False)
        if self.paxos and a.consensus.participant:
            out.append(wire.encode_paxos(a.consensus.init.n, a.consensus.claims))
        return out

    def merge(self, other: GossipData) -> GossipData:
        if isinstance(other, IpamData):
            if self.entries is not None:
                self.entries = (None if other.entries is None
                                else join(self.entries, other.entries.values()))
            self.paxos = self.paxos or other.paxos
            return self
        return other


class Allocator:
    """The ``Gossiper`` for channel "ipam" and the allocation API of one router."""

    def __init__(
        self,
        me: bytes,
        init: Init,
        *,
        alloc_range: str = DEFAULT_RANGE,
        default_subnet: str | None = None,
        underlay: Sequence[IPv4Net] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.me = me
        self.range = parse_range(alloc_range, underlay)
        self.default_subnet = (parse_subnet(default_subnet, self.range)
                               if default_subnet else self.range)
        self.rng = rng or random.Random()
        self.ring = Ring(int(self.range.network_address), int(self.range.broadcast_address) + 1, me)
        self.consensus = Consensus(me, init, self.rng)
        self.gossip_handle: Gossip | None = None
        # our allocations: (id, subnet) -> address, and the reverse
        self.allocs: dict[tuple[str, IPv4Net], int] = {}
        self.addrs: dict[int, tuple[str, IPv4Net]] = {}
        self._sorted: list[int] = []
        self.pending: list[Allocation] = []
        self.req: space.Request | None = None
        self._next_req_id = self.rng.randrange(1, 1 << 31)
        self._free_dirty = False
        self._next_report: float | None = None
        self._encoded: tuple[int, list[bytes]] = (-1, [])
        self.changes = 0  # bumped on every change persist() would see; the adapter compares
        self.conflicts: dict[tuple[bytes, str], dict[str, Any]] = {}
        self.drops: collections.Counter[str] = collections.Counter()
        self.counters: collections.Counter[str] = collections.Counter()
        if init.kind == "seed":
            self.ring.claim_for(init.seeds)

    # -- wiring ---------------------------------------------------------------------------
    def attach(self, gossip: Gossip, now: float, start_consensus: bool = True) -> None:
        """Take the router's handle (``router.register("ipam", allocator)``) and start.

        ``start_consensus=False`` (the router): first-start agreement begins with the first
        allocation asked here or a peer's proposal, as Weave's; until then nothing is sent.
        """
        self.gossip_handle = gossip
        if start_consensus:
            self.consensus.start(now)

    def full_ring(self) -> list[bytes]:
        """Our whole ring as RING messages, encoded once per ring change."""
        r = self.ring
        if self._encoded[0] != r.gen:
            self._encoded = (r.gen, wire.encode_ring(r.start, r.end, r.seeds,
                                                     list(r.entries.values())))
        return self._encoded[1]

    def _broadcast(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        self.changes += 1
        if self.gossip_handle is not None:
            r = self.ring
            for m in wire.encode_ring(r.start, r.end, r.seeds, entries, full=False):
                self.gossip_handle.broadcast(m)

    def _broadcast_paxos(self) -> None:
        if self.gossip_handle is not None and self.consensus.participant:
            self.gossip_handle.broadcast(wire.encode_paxos(self.consensus.init.n,
                                                           self.consensus.claims))

    # -- Gossiper -------------------------------------------------------------------------
    def gossip(self) -> GossipData | None:
        if self.ring.seeded or self.consensus.wants_gossip():
            return IpamData(self, None, paxos=True)
        return None

    def on_gossip(self, src: bytes, msg: bytes, now: float) -> GossipData | None:
        """Merge a neighbour's view; relay nothing (as Weave's IPAM).

        Every change travels once by its owner's broadcast; gossip is the repair path
        (new links, anti-entropy, healed partitions). Relaying what gossip taught us to
        every other neighbour would cost O(peers^2) messages per change in a full mesh;
        a change missed by a broadcast still spreads one hop per anti-entropy round.
        """
        self._receive(src, msg, now)
        return None

    def on_broadcast(self, origin: bytes, msg: bytes, now: float) -> bool:
        changed, paxos = self._receive(origin, msg, now)
        return bool(changed) or paxos

    def _receive(self, src: bytes, msg: bytes, now: float) -> tuple[list[Entry], bool]:
        if self.ring.seeded and msg in self.full_ring():
            self.counters["gossip_same_ring"] += 1  # canonical encoding: nothing new
            return [], False
        try:
            tag, body = wire.split(msg)
            if tag == wire.RING:
                return self._merge(src, wire.parse_ring(body), now), False
            if tag == wire.PAXOS:
                return self._on_paxos(wire.parse_paxos(body), now)
            raise wire.WireError("bad_tag")
        except wire.WireError as e:
            self.drops[e.reason] += 1
            raise GossipRefused(e.reason) from None

    def _merge(self, src: bytes, m: wire.RingMsg, now: float) -> list[Entry]:
        was_seeded = self.ring.seeded
        try:
            changed, reimposed = self.ring.merge(
                m.start, m.end, m.seeds, m.entries, self._has_allocs,
                wire.seeds_digest, m.digest,
            )
        except RingConflict as e:
            if e.reason == "delta_before_seeded":  # not a conflict: full gossip will come
                self.drops[e.reason] += 1
                return []
            self._conflict(src, e.reason, str(e), now)
            raise GossipRefused(e.reason, str(e)) from None
        if self.ring.seeded and not was_seeded:
            self.consensus.learned(self.ring.seeds)
            self.changes += 1
        if changed:
            self.changes += 1
            self._broadcast(reimposed)
            self._retry(now)
        return changed

    def _conflict(self, src: bytes, reason: str, detail: str, now: float) -> None:
        self.drops[reason] += 1
        c = self.conflicts.get((src, reason))
        if c is None:
            if len(self.conflicts) >= MAX_CONFLICTS:
                self.drops["conflicts_not_recorded"] += 1
                return
            c = self.conflicts[(src, reason)] = {"peer": src.hex(), "reason": reason,
                                                 "count": 0, "first": now}
        c["count"] += 1
        c["last"] = now
        c["detail"] = detail

    def _on_paxos(self, m: wire.PaxosMsg, now: float) -> tuple[list[Entry], bool]:
        if not self.consensus.participant:
            self.drops["paxos_not_needed"] += 1
            return [], False
        try:
            changed = self.consensus.merge(m)
        except ConsensusConflict as e:
            self.drops[e.reason] += 1
            raise GossipRefused(e.reason) from None
        if changed:
            self._broadcast_paxos()  # our row moved: every participant must see it
        self._after_consensus(now)
        return [], changed

    def _after_consensus(self, now: float) -> None:
        seeds = self.consensus.decided
        if seeds is not None and not self.ring.seeded:
            self.ring.claim_for(seeds)
            self.changes += 1
            if self.gossip_handle is not None:  # tell the participants that have not learnt
                for m in self.full_ring():
                    self.gossip_handle.broadcast(m)
            self._retry(now)

    def on_unicast(self, src: bytes, msg: bytes, now: float) -> None:
        try:
            tag, body = wire.split(msg)
            if tag == wire.SPACE_REQ:
                space.on_space_request(self, src, *wire.parse_req(body), now)
            elif tag == wire.DENIED:
                space.on_denied(self, src, wire.parse_denied(body), now)
            elif tag == wire.GRANT:
                req_id, ring = wire.parse_grant(body)
                space.on_grant(self, src, req_id, ring, now)
            else:
                raise wire.WireError("bad_tag")
        except wire.WireError as e:
            self.drops[e.reason] += 1
            raise GossipRefused(e.reason) from None

    def peer_gone(self, peer: bytes) -> None:
        """Nothing is reclaimed (that is ``rmpeer``); a request to it fails over at once."""
        if self.req is not None and self.req.donor == peer:
            self.req.denied.add(peer)
            self.req.donor = None
            self.req.next_at = 0.0

    # -- the API --------------------------------------------------------------------------
    def allocate(self, owner_id: str, subnet: str | None, now: float) -> Allocation:
        """An address for ``owner_id`` in ``subnet`` (default subnet if None).

        The same ID (and subnet) gives the same address, so retries are safe. Raises
        ``IpamError`` for bad input; a failure later (exhausted, unreachable) is the
        Allocation's ``error``. A pending Allocation completes from a later callback.
        """
        check_id(owner_id)
        net = parse_subnet(subnet, self.range) if subnet else self.default_subnet
        key = (owner_id, net)
        if key in self.allocs:
            return self._done(Allocation(owner_id, net), self.allocs[key])
        for op in self.pending:
            if op.owner_id == owner_id and op.subnet == net:
                return op
        op = Allocation(owner_id, net)
        if not self._try(op, now):
            self.pending.append(op)
            self.consensus.start(now)
            self._retry(now)
        return op

    def cancel(self, op: Allocation) -> None:
        if op in self.pending:
            self.pending.remove(op)

    def lookup(self, owner_id: str) -> list[ipaddress.IPv4Interface]:
        return [self._iface(a, n) for (i, n), a in self.allocs.items() if i == owner_id]

    def release(self, owner_id: str, now: float) -> int:
        """Free every address of ``owner_id`` (and cancel its pending ops); how many."""
        keys = [k for k in self.allocs if k[0] == owner_id]
        for k in keys:
            addr = self.allocs.pop(k)
            del self.addrs[addr]
            del self._sorted[bisect.bisect_left(self._sorted, addr)]
        for op in [op for op in self.pending if op.owner_id == owner_id]:
            self.pending.remove(op)
            op.error = IpamError(f"{owner_id} released while waiting")
            op._finish()
        if keys:
            self.counters["releases"] += len(keys)
            self._mark_free(now)
        return len(keys)

    def rmpeer(self, peer: bytes, now: float) -> int:
        """Take over a dead peer's ranges (the adapter refuses while it is alive)."""
        if peer == self.me:
            raise IpamError("cannot rmpeer ourselves (use reset)")
        changed = self.ring.takeover(peer)
        self._broadcast(changed)
        self._retry(now)
        return sum(e.free for e in changed)

    def donate_all(self, now: float) -> bytes | None:
        """Clean leave/reset: release everything and give all our ranges to a reachable peer.

        Returns the recipient, or None when we own nothing or nobody can be reached.
        """
        for owner_id in {k[0] for k in self.allocs}:
            self.release(owner_id, now)
        if not self.ring.owned() or self.gossip_handle is None:
            return None
        free = self.ring.free_by_peer()
        cands = sorted(self.ring.owners() - {self.me}, key=lambda p: (-free.get(p, 0), p))
        r = self.ring
        for peer in cands:
            saved = r.snapshot()
            changed = r.give_all(peer)
            grant = wire.encode_grant(0, r.start, r.end, r.seeds, list(r.entries.values()))
            if self.gossip_handle.unicast(peer, grant):
                self._broadcast(changed)
                self.counters["donated_all"] += 1
                return peer
            r.replace(r.seeds, saved.values())
        return None

    # -- allocation internals -------------------------------------------------------------
    def _iface(self, addr: int, net: IPv4Net) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface((addr, net.prefixlen))

    def _done(self, op: Allocation, addr: int) -> Allocation:
        op.address = self._iface(addr, op.subnet)
        op.waiting = ""
        op._finish()
        return op

    def _has_allocs(self, lo: int, hi: int) -> bool:
        i = bisect.bisect_left(self._sorted, lo)
        return i < len(self._sorted) and self._sorted[i] < hi

    def _allocs_in(self, lo: int, hi: int) -> int:
        return bisect.bisect_left(self._sorted, hi) - bisect.bisect_left(self._sorted, lo)

    def free_in(self, lo: int, hi: int) -> int:
        return self.ring.usable(lo, hi) - self._allocs_in(lo, hi)

    def _free_runs(self, slo: int, shi: int) -> list[tuple[int, int, Entry]]:
        """Maximal runs of free addresses inside our ranges and ``[slo, shi)``."""
        runs = []
        for t, n, e in self.ring.owned():
            lo, hi = max(t, slo), min(n, shi)
            if lo >= hi:
                continue
            used = [a for a in self.ring.reserved if lo <= a < hi]
            i = bisect.bisect_left(self._sorted, lo)
            while i < len(self._sorted) and self._sorted[i] < hi:
                used.append(self._sorted[i])
                i += 1
            cur = lo
            for a in [*sorted(used), hi]:
                if a > cur:
                    runs.append((cur, a, e))
                cur = max(cur, a + 1)
        return runs

    def _first_free(self, lo: int, hi: int) -> int | None:
        """The lowest unallocated, unreserved address of ours in ``[lo, hi)``, O(log^2 n)."""
        s = self._sorted
        for t, n, _e in self.ring.owned():
            x, end = max(t, lo), min(n, hi)
            while x < end:
                i0 = bisect.bisect_left(s, x)
                # s[i0 + j] == x + j holds for a prefix of j (s is sorted, unique): find its end
                a, b = 0, bisect.bisect_left(s, end) - i0
                while a < b:
                    m = (a + b) // 2
                    if s[i0 + m] == x + m:
                        a = m + 1
                    else:
                        b = m
                x += a
                if x < end and x not in self.ring.reserved:
                    return x
                x += 1
        return None

    def _try(self, op: Allocation, now: float) -> bool:
        lo, hi = bounds(op.subnet)
        addr = self._first_free(lo, hi) if self.ring.seeded else None
        if addr is None:
            return False
        key = (op.owner_id, op.subnet)
        self.allocs[key] = addr
        self.addrs[addr] = key
        bisect.insort(self._sorted, addr)
        self.counters["allocations"] += 1
        self._mark_free(now)
        self._done(op, addr)
        return True

    def _mark_free(self, now: float) -> None:
        self.changes += 1
        self._free_dirty = True
        if self._next_report is None:
            self._next_report = now + TICK

    def _report_free(self) -> None:
        changed = []
        for t, n, _e in self.ring.owned():
            e = self.ring.set_free(t, self.free_in(t, n))
            if e is not None:
                changed.append(e)
        self._free_dirty = False
        self._next_report = None
        self._broadcast(changed)

    def _fail(self, ops: Sequence[Allocation], msg: str) -> None:
        for op in ops:
            self.pending.remove(op)
            op.error = IpamError(msg)
            op._finish()

    def _retry(self, now: float) -> None:
        """Retry every pending operation; ask for space for the first one still short."""
        for op in list(self.pending):
            if self._try(op, now):
                self.pending.remove(op)
        if self.req is not None and not space.waiting_ops(self):
            self.req = None
        if not self.pending:
            return
        if not self.ring.seeded:
            for op in self.pending:
                op.waiting = str(self.consensus.status()["text"])
            return
        if self.req is None:
            lo, hi = bounds(self.pending[0].subnet)
            self.req = space.Request(self._next_req_id, lo, hi)
            self._next_req_id += 1
        if self.req.donor is None and now >= self.req.next_at:
            space.ask(self, now)

    # -- time -----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When ``tick`` wants to run next (the adapter keeps one timer for it)."""
        ds = [d for d in (self._next_report, self.consensus.next_deadline()) if d is not None]
        if self.req is not None:
            ds.append(self.req.next_at)
        return min(ds) if ds else None

    def tick(self, now: float) -> None:
        if self.consensus.tick(now):
            self._broadcast_paxos()
            self._after_consensus(now)
        if self._free_dirty and self._next_report is not None and now >= self._next_report:
            self._report_free()
        r = self.req
        if r is not None and now >= r.next_at:
            if r.donor is not None:
                self.counters["request_timeouts"] += 1
                r.denied.add(r.donor)
                r.donor = None
            r.unreachable.clear()
            space.ask(self, now)
        elif self.pending and r is None:
            self._retry(now)

    # -- state file, status, invariants (state.py) -----------------------------------------
    def persist(self) -> bytes:
        """This peer's allocations and ring view, for the adapter to write to the state dir."""
        return state.persist(self)

    def restore(self, data: bytes) -> None:
        """Load ``persist()`` bytes into a fresh allocator before ``attach``."""
        state.restore(self, data)

    def status(self) -> dict[str, Any]:
        return state.status(self)

    def check(self) -> None:
        state.check(self)
