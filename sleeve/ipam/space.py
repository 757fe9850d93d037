"""Space moving between peers: the requester's state machine and the donor's choice.

Split from allocator.py (functions on the ``Allocator``, which owns the state; the
state machine is drawn in allocator.py's docstring). Wire messages: SPACE_REQ, GRANT
and DENIED (wire.py), all unicast over the mesh.

Requester: one ``Request`` in flight per allocator, for the subnet of the first
pending operation that is short of space. The donor is picked at random weighted by
the free space the ring says it owns inside the subnet; a DENIED or REQ_TIMEOUT of
silence moves on to the next, at most MAX_ASKS sends per round; donors without a
route are retried every TICK for UNREACHABLE_WAIT, then the waiting operations fail.

Donor: a whole free entry changes owner, else the upper half of our largest free run
(``Ring.grant`` splits or carves); the GRANT carries our full ring so the receiver
learns every token inside its new space; never space that holds allocations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sleeve.ipam import wire
from sleeve.ipam.ring import MAX_ENTRIES
from sleeve.ipam.validate import Allocation, IpamError, bounds

if TYPE_CHECKING:
    from sleeve.ipam.allocator import Allocator

TICK = 5.0  # s: free-count reports, retries of waiting requests (Weave's tick)
REQ_TIMEOUT = 5.0  # s without a reply from a donor: ask the next one
MAX_ASKS = 8  # requests sent in one round before the waiting operations fail
UNREACHABLE_WAIT = 30.0  # s a request may wait for a route to any donor


@dataclass
class Request:
    req_id: int
    lo: int
    hi: int
    donor: bytes | None = None  # None: not asked yet, or waiting for a route
    next_at: float = 0.0  # reply timeout (asking) or next retry (waiting)
    asks: int = 0
    denied: set[bytes] = field(default_factory=set)  # denied or silent: not asked again
    unreachable: set[bytes] = field(default_factory=set)  # no route: asked again on tick
    no_route_since: float | None = None


def waiting_ops(al: Allocator) -> list[Allocation]:
    r = al.req
    assert r is not None
    return [op for op in al.pending if bounds(op.subnet) == (r.lo, r.hi)]


def give_up(al: Allocator, why: str, now: float) -> None:
    for op in waiting_ops(al):
        al.pending.remove(op)
        op.error = IpamError(why)
        op._finish()
    al.counters["failed_allocations"] += 1
    al.req = None
    al._retry(now)


def ask(al: Allocator, now: float) -> None:
    r = al.req
    assert r is not None and al.gossip_handle is not None
    waiting = waiting_ops(al)
    if not waiting:  # all released or served meanwhile: the request has no purpose
        al.req = None
        return None
    free = al.ring.free_by_peer(r.lo, r.hi)
    free.pop(al.me, None)
    net = str(waiting[0].subnet)
    if not free:
        return give_up(al, f"no free address in {net}: range exhausted", now)
    cands = {p: f for p, f in free.items() if p not in r.denied | r.unreachable}
    if r.asks >= MAX_ASKS or not (cands or r.unreachable):
        return give_up(al, f"asked {r.asks} peer(s) for space in {net}; none gave any", now)
    while cands:
        peers = sorted(cands)
        donor = al.rng.choices(peers, weights=[cands[p] for p in peers])[0]
        del cands[donor]
        if al.gossip_handle.unicast(donor, wire.encode_space_req(r.req_id, r.lo, r.hi)):
            r.donor, r.next_at, r.no_route_since = donor, now + REQ_TIMEOUT, None
            r.asks += 1
            al.counters["space_requests"] += 1
            for op in waiting_ops(al):
                op.waiting = f"asked {donor.hex()} for space"
            return None
        r.unreachable.add(donor)
        al.counters["no_route"] += 1
    if r.no_route_since is None:
        r.no_route_since = now
    if now - r.no_route_since >= UNREACHABLE_WAIT:
        return give_up(al, f"no peer with free space in {net} reachable for "
                             f"{UNREACHABLE_WAIT:.0f} s (partitioned?)", now)
    r.next_at = now + TICK
    for op in waiting_ops(al):
        op.waiting = "the peers with free space are unreachable; waiting"
    return None


def on_space_request(al: Allocator, src: bytes, req_id: int, lo: int, hi: int, now: float) -> None:
    assert al.gossip_handle is not None
    grant = choose_donation(al, lo, hi) if al.ring.seeded and src != al.me else None
    if grant is not None and al._has_allocs(*grant):  # never: a guard, counted if hit
        al.drops["grant_with_allocations"] += 1
        grant = None
    if grant is None:
        al.counters["denials_sent"] += 1
        al.gossip_handle.unicast(src, wire.encode_denied(req_id))
        return
    changed = al.ring.grant(grant[0], grant[1], src, al.free_in)
    r = al.ring
    al.counters["grants_given"] += 1
    al.gossip_handle.unicast(
        src, wire.encode_grant(req_id, r.start, r.end, r.seeds, list(r.entries.values()))
    )
    al._broadcast(changed)


def choose_donation(al: Allocator, lo: int, hi: int) -> tuple[int, int] | None:
    runs = al._free_runs(lo, hi)
    if not runs or len(al.ring.tokens) + 2 > MAX_ENTRIES:
        return None
    a, b, e = max(runs, key=lambda r: (r[1] - r[0], -r[0]))
    n = al.ring.next_token(e.token)
    if e.token >= lo and n <= hi and al.free_in(e.token, n) == al.ring.usable(e.token, n):
        return e.token, n  # a whole free entry changes owner
    if n - b <= 2 and all(x in al.ring.reserved for x in range(b, n)):
        b = n  # no useless one-address entry for the range's broadcast address
    size = max(1, (b - a) // 2)
    return b - size, b  # the upper half of the largest free run


def on_denied(al: Allocator, src: bytes, req_id: int, now: float) -> None:
    r = al.req
    if r is None or r.req_id != req_id or r.donor != src:
        al.drops["stale_denial"] += 1
        return
    al.counters["denials_received"] += 1
    r.denied.add(src)
    r.donor = None
    ask(al, now)


def on_grant(al: Allocator, src: bytes, req_id: int, ring: wire.RingMsg, now: float) -> None:
    r = al.req
    if req_id and (r is None or r.req_id != req_id or r.donor != src):
        al.drops["stale_grant"] += 1  # still merged: the space is ours either way
    al._merge(src, ring, now)
    al.counters["grants_received"] += 1
    if al.req is not None and al.req.req_id == req_id and al.req.donor == src:
        al.req = None
        al._retry(now)
