"""The IPAM channel's messages: one tag byte, then a msgpack array. Untrusted input.

```
 0        1
+--------+------------------------------------------------------------+
|  tag   |  msgpack array (fields below)                              |
+--------+------------------------------------------------------------+

gossip / broadcast
  0x10 RING   [start, end, digest, seeds, peers, ents]
                start, end   uint   the range [start, end) as IPv4 ints, end <= 2^32
                digest       bin8   BLAKE2b-64 of the sorted seed ids (the ring's identity)
                seeds        [bin8] sorted, 1..256 peer ids; empty in a delta (only
                             full rings carry them: a delta stays small with 100 seeds)
                peers        [bin8] table of owner ids, indexed by ents
                ents         [uint] flat, 4 per entry: gap, peer index, version, free
                             token = start + running sum of gaps (first gap >= 0,
                             then >= 1: strictly increasing), token < end
  0x11 PAXOS  [quorum, peers, claims]
                claims       [[node, p_round, p_node, a_round, a_node, [value]]]
                             node/p_node/a_node/value are indexes into peers;
                             round 0 = no ballot (its node index is ignored)
unicast (between two peers)
  0x01 SPACE_REQ [req_id, lo, hi]        give me free space inside [lo, hi)
  0x02 DENIED    [req_id]                 I have none for you
  0x03 GRANT     [req_id, ring]           done (or req_id 0: a leaving peer's
                                          ranges); ring = the donor's full RING body
```

Bounds: a message is at most ``MAX_MSG`` bytes, a ring at most ``MAX_ENTRIES``
entries; a full ring that would exceed ``CHUNK_ENTRIES`` is sent as several RING
messages (each one a valid partial ring: merges are per token). Every field is type-
and range-checked; anything else is ``WireError(reason)``, never another exception.
"""

from __future__ import annotations

import hashlib
import itertools
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from sleeve.ipam.ring import MAX_ENTRIES, MAX_SEEDS, MAX_VERSION, PEER_LEN, Entry

RING, PAXOS = 0x10, 0x11
SPACE_REQ, DENIED, GRANT = 0x01, 0x02, 0x03
MAX_MSG = 512 * 1024  # a full 8192-entry ring in one GRANT fits; typical messages are < 1 KiB
CHUNK_ENTRIES = 4096
MAX_PEERS = 4096
MAX_REQ_ID = 1 << 62

Ballot = tuple[int, bytes]  # (round, proposer); round 0 = none


class WireError(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RingMsg:
    start: int
    end: int
    digest: bytes
    seeds: tuple[bytes, ...]  # () in a delta
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Claims:
    promise: Ballot
    accepted: Ballot
    value: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class PaxosMsg:
    quorum: int
    claims: dict[bytes, Claims]


# -- encoding ---------------------------------------------------------------------------
class _Table:
    def __init__(self) -> None:
        self.ids: list[bytes] = []
        self.index: dict[bytes, int] = {}

    def __call__(self, p: bytes) -> int:
        i = self.index.get(p)
        if i is None:
            i = self.index[p] = len(self.ids)
            self.ids.append(p)
        return i


def seeds_digest(seeds: Sequence[bytes]) -> bytes:
    """The ring's identity in 8 bytes (not a security check: entries are not signed)."""
    return hashlib.blake2b(b"".join(seeds), digest_size=PEER_LEN).digest()


def ring_body(start: int, end: int, seeds: Sequence[bytes], entries: Sequence[Entry],
              full: bool = True) -> list[Any]:
    table = _Table()
    flat: list[int] = []
    prev = start
    for e in sorted(entries, key=lambda e: e.token):
        flat += (e.token - prev, table(e.owner), e.version, e.free)
        prev = e.token
    return [start, end, seeds_digest(seeds), list(seeds) if full else [], table.ids, flat]


def _pack(tag: int, body: list[Any]) -> bytes:
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return bytes((tag,)) + packed


def encode_ring(
    start: int, end: int, seeds: Sequence[bytes], entries: Sequence[Entry], full: bool = True
) -> list[bytes]:
    """One or more RING messages (chunks of at most CHUNK_ENTRIES entries).

    ``full=False`` (a delta) leaves the seed list out and keeps only its digest.
    """
    es = sorted(entries, key=lambda e: e.token)  # each chunk is a sorted partial ring
    chunks = [es[i : i + CHUNK_ENTRIES] for i in range(0, len(es), CHUNK_ENTRIES)] or [[]]
    return [_pack(RING, ring_body(start, end, seeds, c, full)) for c in chunks]


def encode_paxos(quorum: int, claims: dict[bytes, Claims]) -> bytes:
    table = _Table()
    rows = []
    for node in sorted(claims):
        c = claims[node]
        rows.append(
            [table(node), c.promise[0], table(c.promise[1]) if c.promise[0] else 0,
             c.accepted[0], table(c.accepted[1]) if c.accepted[0] else 0,
             [table(v) for v in c.value]]
        )
    return _pack(PAXOS, [quorum, table.ids, rows])


def encode_space_req(req_id: int, lo: int, hi: int) -> bytes:
    return _pack(SPACE_REQ, [req_id, lo, hi])


def encode_denied(req_id: int) -> bytes:
    return _pack(DENIED, [req_id])


def encode_grant(req_id: int, start: int, end: int, seeds: Sequence[bytes],
                 entries: Sequence[Entry]) -> bytes:
    return _pack(GRANT, [req_id, ring_body(start, end, seeds, entries)])


# -- decoding (untrusted) ---------------------------------------------------------------
def check_uint(x: object, limit: int, what: str) -> int:
    if type(x) is not int or not 0 <= x < limit:
        raise WireError(f"bad_{what}")
    return x


def check_list(x: object, limit: int, what: str) -> list[Any]:
    if type(x) is not list or len(x) > limit:
        raise WireError(f"bad_{what}")
    return x


def _peers(x: object, limit: int, what: str) -> list[bytes]:
    out = check_list(x, limit, what)
    for p in out:
        if type(p) is not bytes or len(p) != PEER_LEN:
            raise WireError(f"bad_{what}")
    return out


def split(msg: bytes) -> tuple[int, list[Any]]:
    """The tag and the body array; the size and shape bounds are checked here."""
    if not 2 <= len(msg) <= MAX_MSG:
        raise WireError("bad_size")
    try:
        body = msgpack.unpackb(
            msg[1:], raw=False, use_list=True, strict_map_key=True,
            max_str_len=0, max_map_len=0, max_ext_len=0,
            max_bin_len=PEER_LEN, max_array_len=4 * MAX_ENTRIES,
        )
    except Exception as e:  # msgpack raises several types for malformed input
        raise WireError("bad_msgpack") from e
    if type(body) is not list:
        raise WireError("bad_body")
    return msg[0], body


def parse_ring(body: object) -> RingMsg:
    b = check_list(body, 6, "ring")
    if len(b) != 6:
        raise WireError("bad_ring")
    end = check_uint(b[1], (1 << 32) + 1, "range")
    start = check_uint(b[0], end, "range")
    digest = b[2]
    if type(digest) is not bytes or len(digest) != PEER_LEN:
        raise WireError("bad_digest")
    seeds = _peers(b[3], MAX_SEEDS, "seeds")
    if list(seeds) != sorted(set(seeds)) or (seeds and seeds_digest(seeds) != digest):
        raise WireError("bad_seeds")
    peers = _peers(b[4], MAX_PEERS, "peers")
    flat = check_list(b[5], 4 * MAX_ENTRIES, "entries")
    if len(flat) % 4 or not set(map(type, flat)) <= {int}:  # C-speed type check
        raise WireError("bad_entries")
    # whole-column checks: a full ring is parsed on every anti-entropy message
    gaps, idx, versions, frees = flat[0::4], flat[1::4], flat[2::4], flat[3::4]
    if gaps and (gaps[0] < 0 or min(gaps) < 0 or (len(gaps) > 1 and min(gaps[1:]) < 1)):
        raise WireError("bad_token")  # tokens strictly increasing
    tokens = list(itertools.accumulate(gaps, initial=start))[1:]
    if tokens and tokens[-1] >= end:
        raise WireError("bad_token")
    if idx and (min(idx) < 0 or max(idx) >= len(peers)):
        raise WireError("bad_peer_index")
    if versions and (min(versions) < 0 or max(versions) >= MAX_VERSION):
        raise WireError("bad_version")
    if frees and (min(frees) < 0 or any(map(operator.gt, frees, map(end.__sub__, tokens)))):
        raise WireError("bad_free")
    entries = tuple(map(Entry, tokens, map(peers.__getitem__, idx), versions, frees))
    return RingMsg(start, end, digest, tuple(seeds), entries)


def parse_paxos(body: list[Any]) -> PaxosMsg:
    if len(body) != 3:
        raise WireError("bad_paxos")
    quorum = check_uint(body[0], MAX_SEEDS + 1, "quorum")
    peers = _peers(body[1], MAX_PEERS, "peers")
    rows = check_list(body[2], MAX_SEEDS, "claims")
    claims: dict[bytes, Claims] = {}

    def peer(x: object) -> bytes:
        return peers[check_uint(x, len(peers), "peer_index")]

    for r in rows:
        r = check_list(r, 6, "claim")
        if len(r) != 6:
            raise WireError("bad_claim")
        node = peer(r[0])
        pr, ar = check_uint(r[1], MAX_VERSION, "round"), check_uint(r[3], MAX_VERSION, "round")
        promise = (pr, peer(r[2]) if pr else b"")
        accepted = (ar, peer(r[4]) if ar else b"")
        value = tuple(peer(v) for v in check_list(r[5], MAX_SEEDS, "value"))
        if accepted > promise or (ar and not value) or node in claims:
            raise WireError("bad_claim")
        claims[node] = Claims(promise, accepted, value)
    return PaxosMsg(quorum, claims)


def parse_req(body: list[Any]) -> tuple[int, int, int]:
    if len(body) != 3:
        raise WireError("bad_request")
    hi = check_uint(body[2], (1 << 32) + 1, "request")
    lo = check_uint(body[1], hi, "request")
    return check_uint(body[0], MAX_REQ_ID, "req_id"), lo, hi


def parse_denied(body: list[Any]) -> int:
    if len(body) != 1:
        raise WireError("bad_denied")
    return check_uint(body[0], MAX_REQ_ID, "req_id")


def parse_grant(body: list[Any]) -> tuple[int, RingMsg]:
    if len(body) != 2:
        raise WireError("bad_grant")
    return check_uint(body[0], MAX_REQ_ID, "req_id"), parse_ring(body[1])
