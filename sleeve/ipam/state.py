"""What survives a router restart, what ``status ipam`` shows, and the allocator's invariants.

State file (the adapter writes the bytes atomically whenever ``Allocator.changes``
moved; we only produce and check them)::

    msgpack array
      [0] version     uint (1)
      [1] me          bin8   the peer these allocations belong to
      [2] ring        the RING body (wire.py) of our full ring view
      [3] allocs      [[id str, subnet "A.B.C.D/N", address uint]]
      [4] paxos       the PAXOS body (wire.py), or nil when agreement is over
      [5] next_req    uint   our next space-request id

Restoring gives back the same address for the same ID and keeps our entries' versions,
so a restart neither loses nor hands out an address twice; an entry of ours that moved
on after the file was written comes back in gossip and is re-imposed or taken (ring.py).
"""

from __future__ import annotations

import bisect
import ipaddress
from typing import TYPE_CHECKING, Any

import msgpack

from sleeve.ipam import wire
from sleeve.ipam.ring import PEER_LEN
from sleeve.ipam.validate import MAX_ID, IpamError, bounds, check_id, parse_subnet

if TYPE_CHECKING:
    from sleeve.ipam.allocator import Allocator

STATE_VERSION = 1
MAX_ALLOCS = 1 << 20


def persist(a: Allocator) -> bytes:
    r = a.ring
    allocs = [[i, str(n), addr] for (i, n), addr in sorted(a.allocs.items(), key=lambda x: x[1])]
    paxos = None
    if a.consensus.participant:
        paxos = msgpack.unpackb(wire.encode_paxos(a.consensus.init.n, a.consensus.claims)[1:])
    body = [STATE_VERSION, a.me, wire.ring_body(r.start, r.end, r.seeds, list(r.entries.values())),
            allocs, paxos, a._next_req_id]
    out: bytes = msgpack.packb(body, use_bin_type=True)
    return out


def restore(a: Allocator, data: bytes) -> None:
    """Load a state file into a fresh allocator (before ``attach``); ``IpamError`` if bad."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, max_map_len=0,
                               max_str_len=4 * MAX_ID, max_bin_len=PEER_LEN)
        if type(body) is not list or len(body) != 6 or body[0] != STATE_VERSION:
            raise wire.WireError("bad_state")
        if body[1] != a.me:
            raise IpamError("state file belongs to another peer")
        ring = wire.parse_ring(body[2])
        paxos = None if body[4] is None else wire.parse_paxos(body[4])
        next_req = wire.check_uint(body[5], wire.MAX_REQ_ID, "req_id")
        rows = wire.check_list(body[3], MAX_ALLOCS, "allocs")
    except IpamError:
        raise
    except (wire.WireError, msgpack.UnpackException, ValueError) as e:
        raise IpamError(f"unreadable IPAM state: {e}") from None
    if (ring.start, ring.end) != (a.ring.start, a.ring.end):
        raise IpamError("IPAM state is for another allocation range")
    if a.ring.seeded and ring.seeds != a.ring.seeds:
        raise IpamError("IPAM state was seeded by different peers")
    try:
        a.ring.replace(ring.seeds, ring.entries)
    except AssertionError as e:
        raise IpamError(f"IPAM state ring is invalid: {e}") from None
    a.allocs.clear()
    a.addrs.clear()
    for row in rows:
        if type(row) is not list or len(row) != 3 or type(row[0]) is not str \
                or type(row[1]) is not str or type(row[2]) is not int:
            raise IpamError("IPAM state has a bad allocation row")
        owner_id, net, addr = check_id(row[0]), parse_subnet(row[1], a.range), row[2]
        lo, hi = bounds(net)
        if not lo <= addr < hi or a.ring.owner_of(addr) != a.me or addr in a.addrs \
                or addr in a.ring.reserved or (owner_id, net) in a.allocs:
            raise IpamError(f"IPAM state allocation {owner_id} is not ours or is duplicated")
        a.allocs[(owner_id, net)] = addr
        a.addrs[addr] = (owner_id, net)
    a._sorted = sorted(a.addrs)
    a._next_req_id = max(a._next_req_id, next_req)
    if ring.seeds:
        a.consensus.learned(ring.seeds)
    elif paxos is not None:
        a.consensus.restore(paxos.claims)
    a._free_dirty = True


def status(a: Allocator) -> dict[str, Any]:
    r = a.ring
    ip = ipaddress.IPv4Address
    peers: dict[str, dict[str, Any]] = {}
    for t, n, e in r.ranges():
        p = peers.setdefault(e.owner.hex(), {"peer": e.owner.hex(), "size": 0, "free": 0,
                                              "ranges": []})
        p["size"] += n - t
        p["free"] += e.free
        p["ranges"].append({"start": str(ip(t)), "end": str(ip(n - 1)), "free": e.free,
                            "version": e.version})
    return {
        "me": a.me.hex(),
        "range": str(a.range),
        "default_subnet": str(a.default_subnet),
        "consensus": a.consensus.status(),
        "ring": sorted(peers.values(), key=lambda p: str(p["peer"])),
        "entries": len(r.tokens),
        "allocations": [{"id": i, "address": f"{ip(addr)}/{n.prefixlen}"}
                        for (i, n), addr in sorted(a.allocs.items(), key=lambda x: x[1])],
        "pending": [{"id": op.owner_id, "subnet": str(op.subnet), "waiting": op.waiting}
                    for op in a.pending],
        "conflicts": list(a.conflicts.values()),
        "drops": dict(a.drops),
        "counters": dict(a.counters),
    }


def check(a: Allocator) -> None:
    """The allocator's invariants (tests call this after every step)."""
    a.ring.check()
    assert sorted(a.addrs) == a._sorted, "sorted index out of step"
    assert len(a.addrs) == len(a.allocs), "allocation maps out of step"
    for (owner_id, net), addr in a.allocs.items():
        assert a.addrs[addr] == (owner_id, net), "reverse map wrong"
        lo, hi = bounds(net)
        assert lo <= addr < hi, f"{owner_id}: address outside its subnet"
        assert a.ring.owner_of(addr) == a.me, f"{owner_id}: address in a range we do not own"
        assert addr not in a.ring.reserved, "reserved address handed out"
    assert all(bisect.bisect_left(a._sorted, x) == i for i, x in enumerate(a._sorted))
