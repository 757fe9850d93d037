"""Topology anti-entropy by digest: say which records you hold, fetch only what you lack.

Why: a new link and the periodic anti-entropy used to send the complete topology, every
record (~80 KB at 50 routers, O(peers x links)), though the other side nearly always
holds most of it already. A 50-router mesh forming ~1,200 links spent its CPU and
bytes swapping those states (bench/results/scale/). Now each side sends a *digest*,
32 bytes per record it holds, and asks (*want*) only for the records whose digest
entry beats its own; the answer carries just those records. A peer that missed an
update finds the difference in the next digest it hears and pulls it.

Wire (msgpack arrays, like ``proto.topology``; the first element is the kind)::

    digest  := [ 3, flags uint, entries bin ]       flags bit 0: ANSWER (see below)
    entries := entry * n                             n <= MAX_RECORDS, strictly
                                                     ascending by peer id
    entry   :=  0        8       16       24       32
               +--------+--------+--------+--------+
               | peer   | version| uid    | tag    |   version, uid: u64 big-endian
               +--------+--------+--------+--------+   tag: the record's sig[:8]
    want    := [ 4, ids bin ]                        ids: 8-byte peer ids, n <= MAX_RECORDS
    answer  := [ 5, [ record, ... ] ]                the records of ``proto.topology``,
                                                     sent in reply to a want

Records of kind 2 (``proto.topology.FORMAT``) are pushed news: a changed record, relayed
to neighbours as records. Kind 5 is catch-up the sender already had; whatever of it
improves our view is passed on as a digest of those peers (the neighbours pull if they
lack them), not as records: a restarted router that pulls 49 records from its first
link does not push all 49 to its 48 others, who hold them already.

The tag tells apart two records with equal (version, uid), which only a buggy owner
produces (``proto.topology._beats`` then orders them by canonical encoding): Ed25519
signatures are deterministic, so equal content has equal tags.

ANSWER asks the receiver to send its own digest back if it holds anything newer than
the digest shows or anything it lacks (the periodic anti-entropy: one side speaks, both
sides repair). A digest sent in answer never has ANSWER set, so two peers never ping-pong.

Trust: digests and wants come from an authenticated neighbour but are claims, not
records: a digest entry only makes us *ask*; records are verified by their owner's
signature when they arrive (``Topology.merge``), as always. Malformed messages raise
``TopologyDecodeError`` (the channel counts the drop).
"""

from __future__ import annotations

import struct
from typing import Final

import msgpack

from sleeve.proto.topology import (
    MAX_RECORDS,
    MAX_VERSION,
    PEER_ID_LEN,
    PeerRecord,
    Topology,
    TopologyDecodeError,
)

DIGEST: Final = 3
WANT: Final = 4
ANSWER_RECORDS: Final = 5
ANSWER: Final = 1  # digest flag: reply with your digest if you hold something newer
ENTRY: Final = struct.Struct("!8sQQ8s")  # peer, version, uid, tag
TAG_LEN: Final = 8

Entry = tuple[bytes, int, int, bytes]  # (peer, version, uid, tag)


def kind_of(data: bytes) -> int:
    """The kind of a topology message without decoding it (2 records, 3 digest, 4 want,
    5 answer); -1 when it does not start like one. A one-byte peek: the decoders check
    everything again."""
    if len(data) >= 2 and data[0] in (0x92, 0x93) and data[1] <= 0x7F:
        return data[1]
    return -1


def entry_of(rec: PeerRecord) -> Entry:
    return (rec.peer, rec.version, rec.uid, rec.sig[:TAG_LEN])


def encode_digest(records: list[PeerRecord], answer: bool) -> list[bytes]:
    """Digest messages for ``records`` (any order), at most MAX_RECORDS entries each."""
    recs = sorted(records, key=lambda r: r.peer)
    out = []
    for i in range(0, max(len(recs), 1), MAX_RECORDS):
        body = b"".join(ENTRY.pack(*entry_of(r)) for r in recs[i:i + MAX_RECORDS])
        out.append(_pack([DIGEST, ANSWER if answer else 0, body]))
    return out


def decode_digest(data: bytes) -> tuple[list[Entry], bool]:
    """(entries, answer wanted). Raises only TopologyDecodeError."""
    m = _unpack(data, MAX_RECORDS * ENTRY.size)
    if not (isinstance(m, list) and len(m) == 3 and m[0] == DIGEST and type(m[1]) is int
            and type(m[2]) is bytes):
        raise TopologyDecodeError("digest is not [3, flags, entries]")
    flags, body = m[1], m[2]
    if flags & ~ANSWER or len(body) % ENTRY.size:
        raise TopologyDecodeError("digest has unknown flags or a partial entry")
    entries: list[Entry] = list(ENTRY.iter_unpack(body))
    prev = b""
    for peer, version, uid, _tag in entries:
        if peer <= prev:
            raise TopologyDecodeError("digest entries are not strictly ascending by peer")
        if version > MAX_VERSION or uid == 0:
            raise TopologyDecodeError("digest entry with a version past 2^62-1 or uid 0")
        prev = peer
    return entries, bool(flags & ANSWER)


def encode_want(peers: set[bytes]) -> list[bytes]:
    ids = sorted(peers)
    return [_pack([WANT, b"".join(ids[i:i + MAX_RECORDS])])
            for i in range(0, len(ids), MAX_RECORDS)]


def decode_want(data: bytes) -> set[bytes]:
    m = _unpack(data, MAX_RECORDS * PEER_ID_LEN)
    if not (isinstance(m, list) and len(m) == 2 and m[0] == WANT and type(m[1]) is bytes
            and len(m[1]) % PEER_ID_LEN == 0):
        raise TopologyDecodeError("want is not [4, 8-byte ids]")
    ids = m[1]
    return {ids[i:i + PEER_ID_LEN] for i in range(0, len(ids), PEER_ID_LEN)}


def newer_than(claim: tuple[int, int, bytes], rec: PeerRecord | None) -> bool:
    """Whether a digest entry's (version, uid, tag) may name a record better than
    ``rec`` (worth fetching).

    Equal (version, uid) with another tag is worth fetching too: ``Topology.merge``
    decides which of the two wins; at most one fetch per digest that shows it."""
    if rec is None:
        return True
    if claim[0] != rec.version:
        return claim[0] > rec.version
    if claim[1] != rec.uid:
        return claim[1] > rec.uid
    return claim[2] != rec.sig[:TAG_LEN]


def lacking(topo: Topology, entries: list[Entry]) -> list[Entry]:
    """Peers whose digest entry beats what we hold. Us included: a record of an earlier
    incarnation of ours is fetched, verified and outbid (``Topology.merge``); a bare
    digest entry never moves our version (a liar could pin it at the top)."""
    return [e for e in entries if newer_than(e[1:], topo.get(e[0]))]


def holds_newer(topo: Topology, entries: list[Entry]) -> bool:
    """Whether we hold a record the digest's sender lacks or holds an older one of."""
    seen = {e[0]: e for e in entries}
    for r in topo.records():
        e = seen.get(r.peer)
        if e is None or (e[1], e[2]) < (r.version, r.uid) or (
                (e[1], e[2]) == (r.version, r.uid) and e[3] != r.sig[:TAG_LEN]):
            return True
    return False


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _unpack(data: bytes, max_bin: int) -> object:
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, max_map_len=0, max_array_len=3,
                               max_str_len=0, max_bin_len=max_bin, max_ext_len=0)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise TopologyDecodeError(f"undecodable topology message ({type(e).__name__})") \
            from None
