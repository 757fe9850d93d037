"""Offloaded frames between two routers whose TAPs both speak virtio-net headers.

With ``IFF_VNET_HDR`` and TSO on the TAP, the kernel hands the router TCP
super-frames of up to 64 KiB, each led by its 10-byte virtio-net header
(``sleeve.proto.vnet``), instead of one read per MSS-sized segment. To a peer that
announced the same capability in its Hello, a super-frame travels as a *set*: one
record per TCP segment's worth of payload (gso_size bytes), each led by the
super-frame's own headers, and the node sends the set's datagrams with one UDP GSO
call. Nothing is rewritten or summed on the way: the peer puts the headers back in
front of the joined payload, which is the very super-frame our kernel made (its
checksum is left partial for the peer's kernel to finish), and writes it to its TAP
in one system call. A frame that is not a super-frame but has a partial checksum
goes as one KIND_VNET record::

    KIND_VNET record payload (record flags 0: direct, one hop only)
    +-----------------------------+-------------------------------------------
    | virtio_net_hdr (10, LE)     | Ethernet frame (fits the datagram)
    +-----------------------------+-------------------------------------------

    KIND_VNET_SEG record payload (record flags 0)
     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                         set id (BE)                           |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |    index      |    count      |  the super-frame's            |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  virtio_net_hdr (10, LE;      |
    |  hdr_len = length of the headers that follow)                 |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |  the super-frame's Ethernet, IP and TCP headers (hdr_len)     |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |  TCP payload [index * gso_size, (index + 1) * gso_size)  ...  |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Why segment-sized pieces, each with the headers, and not byte ranges: a lost datagram
must cost one TCP segment, not the ~45 of its super-frame. The first lab runs cut
byte ranges; with 3% datagram loss three super-frames in ten were lost whole and a
30 MB transfer crawled at 3 Mbit/s. Here every datagram is useful on its own: when a
set completes, older sets still incomplete (their missing datagrams lost, since a
link's datagrams arrive in order) are written as the runs of consecutive segments
that did arrive (``vnet.run_frame`` gives each run the headers the sender's kernel
would have given it), and so is a set left incomplete for ``SALVAGE_AFTER``;
stragglers of a set already written go on their own. The inner TCP sees only the
lost segments missing and repairs them with SACK. Each datagram is authenticated
before anything of it is kept.

Relayed paths carry the same sets, each piece with its source's proof
(``forward.relayseg``). Peers without the capability and the TCP fallback get ordinary frames:
the node segments in software (``sleeve.proto.vnet.to_frames``). So do super-frames
whose segments do not fit the path's datagrams (the per-frame path then answers the
sender's TCP with ICMP "too big", and its next super-frames have a smaller MSS).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from sleeve.forward.reassembly import FRAG_HEAD as FRAG_HEAD
from sleeve.proto import datagram as dg
from sleeve.proto import vnet

KIND_VNET: Final = 4
KIND_VNET_SEG: Final = 5
CAP_VNET: Final = 1  # Hello "off" bit: we take KIND_VNET / KIND_VNET_SEG records
MAX_SEGMENTS: Final = 255  # the count is one byte
SEG_HEAD: Final = FRAG_HEAD.size + vnet.HDR_LEN  # 16 bytes before the headers
MAX_SETS: Final = 16  # sets in progress per link; the oldest is written out first
MAX_SET_BYTES: Final = 128 << 10  # a 64 KiB super-frame with headers in every segment
SALVAGE_AFTER: Final = 0.01  # s: an incomplete set older than this lost datagrams
DONE_MEMORY: Final = 64  # ids of written sets remembered, so stragglers go on their own

Write = tuple[bytes, bytes]  # (virtio header, frame) for the TAP
_NOTHING: Final[list[Write]] = []  # returned when there is nothing to write; never mutated
_HDR_LEN_AT: Final = FRAG_HEAD.size + 2  # the virtio header's hdr_len, little-endian


def plan(raw: bytes, max_body: int) -> tuple[bytes, int, int, int] | None:
    """(prefix: virtio header + headers, where the TCP payload begins, gso_size, count)
    of super-frame ``raw`` cut into pieces whose records fit ``max_body``; None when it
    cannot go so (a segment too big for the path, or more than 255 segments). Raises
    ``vnet.VnetError`` for a super-frame that does not parse."""
    h = vnet.parse(raw)
    hl = vnet.tcp_headers(h, memoryview(raw)[vnet.HDR_LEN:])
    mss = h.gso_size
    base = vnet.HDR_LEN + hl
    size = len(raw) - base
    count = max(1, -(-size // mss))
    prefix = (vnet.HDR.pack(h.flags, h.gso_type, hl, mss, h.csum_start, h.csum_offset)
              + raw[vnet.HDR_LEN:base])
    if count > MAX_SEGMENTS or dg.REC_LEN + FRAG_HEAD.size + len(prefix) + min(mss, size) \
            > max_body:
        return None
    return prefix, base, mss, count


def cut(raw: bytes, set_id: int, max_body: int) -> list[bytes] | None:
    """Records carrying ``raw`` (virtio header + frame) in bodies of ``max_body`` bytes.

    None when it cannot go offloaded (a single frame or a segment too big for the
    path, or more than 255 segments): the caller finishes it in software instead.
    Raises ``vnet.VnetError`` for a super-frame that does not parse.
    """
    if not raw[1]:  # not a super-frame: one record, header and frame as they are
        n = len(raw)
        return [dg.REC.pack(n, KIND_VNET, 0) + raw] if n + dg.REC_LEN <= max_body else None
    got = plan(raw, max_body)
    if got is None:
        return None
    prefix, base, mss, count = got
    pack_rec = dg.REC.pack
    pack_head = FRAG_HEAD.pack
    head = FRAG_HEAD.size + len(prefix)
    out = []
    for i in range(count):
        chunk = raw[base + i * mss:base + (i + 1) * mss]
        out.append(pack_rec(head + len(chunk), KIND_VNET_SEG, 0) + pack_head(set_id, i, count)
                   + prefix + chunk)
    return out


class _Set:
    __slots__ = ("count", "first", "parts", "prefix", "size")

    def __init__(self, first: float, count: int, prefix: bytes) -> None:
        self.first = first
        self.count = count
        self.prefix = prefix  # virtio header + the super-frame's headers
        self.size = 0
        self.parts: dict[int, bytes | memoryview] = {}


class SegmentSets:
    """Per-link receiver of KIND_VNET_SEG records: ``add`` and ``expire`` return what to
    write to the TAP (whole super-frames, or the runs that arrived of incomplete ones)."""

    __slots__ = ("_done", "_sets", "drops")

    def __init__(self) -> None:
        self._sets: OrderedDict[int, _Set] = OrderedDict()
        self._done: OrderedDict[int, None] = OrderedDict()
        self.drops: dict[str, int] = {}

    def _drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    def __len__(self) -> int:
        return len(self._sets)

    def add(self, payload: bytes | memoryview, now: float) -> list[Write]:
        """``payload`` is a view of an authenticated body that the caller does not reuse:
        the segment is kept as a view into it (one copy, at the join, not two)."""
        n = len(payload)
        if n < SEG_HEAD + 14:
            self._drop("bad_segment")
            return _NOTHING
        set_id, index, count = FRAG_HEAD.unpack_from(payload, 0)
        end = SEG_HEAD + (payload[_HDR_LEN_AT] | payload[_HDR_LEN_AT + 1] << 8)  # + hdr_len
        if index >= count or end > n:
            self._drop("bad_segment")
            return _NOTHING
        seg = payload[end:]
        entry = self._sets.get(set_id)
        if entry is not None:  # the common case: a set under way; same headers, new index
            if entry.count != count or index in entry.parts or payload[FRAG_HEAD.size:end] \
                    != entry.prefix:
                self._drop("bad_segment")
                return _NOTHING
            parts = entry.parts
            parts[index] = seg
            entry.size += n - end
            if len(parts) < count and entry.size <= MAX_SET_BYTES:
                return _NOTHING
        prefix = bytes(payload[FRAG_HEAD.size:end])
        if set_id in self._done:  # a straggler of a set already written: on its own
            return self._run(prefix, bytes(seg), index, index == count - 1)
        out: list[Write] = []
        if entry is None:
            if len(self._sets) >= MAX_SETS:
                old_id, old = self._sets.popitem(last=False)
                out += self._finish(old_id, old, "segment_set_evicted")
            entry = _Set(now, count, prefix)
            self._sets[set_id] = entry
            entry.parts[index] = seg
            entry.size += n - end
        if entry.size > MAX_SET_BYTES:
            del self._sets[set_id]
            self._remember(set_id)
            self._drop("segment_set_too_big")
            return out
        if len(entry.parts) < count:
            return out
        # Complete. Sets begun before it are older: their missing datagrams are lost.
        while self._sets:
            first_id, first = self._sets.popitem(last=False)
            if first_id == set_id:
                out += self._finish(set_id, first, "")
                break
            out += self._finish(first_id, first, "segment_set_incomplete")
        return out

    def expire(self, now: float, age: float = SALVAGE_AFTER) -> list[Write]:
        """Write out sets incomplete for ``age`` seconds (the oldest first)."""
        out: list[Write] = []
        while self._sets:
            set_id, entry = next(iter(self._sets.items()))
            if now - entry.first < age:
                break
            del self._sets[set_id]
            out += self._finish(set_id, entry, "segment_set_incomplete")
        return out

    def _finish(self, set_id: int, entry: _Set, reason: str) -> list[Write]:
        self._remember(set_id)
        parts = entry.parts
        prefix = entry.prefix
        count = entry.count
        if not reason:  # whole: the headers and the joined payload are the super-frame
            size = len(parts[0])
            if len(parts[count - 1]) > size or any(len(parts[i]) != size
                                                     for i in range(count - 1)):
                self._drop("bad_segment")  # not cut at gso_size: not what cut() sends
                return []
            return [(prefix[:vnet.HDR_LEN],
                     b"".join([prefix[vnet.HDR_LEN:], *[parts[i] for i in range(count)]]))]
        self._drop(reason)
        self._drop("segments_lost", count - len(parts))
        out: list[Write] = []
        i = 0
        while i < count:  # runs of consecutive segments that arrived
            if i not in parts:
                i += 1
                continue
            j = i
            while j + 1 < count and j + 1 in parts:
                j += 1
            out += self._run(prefix, b"".join([parts[k] for k in range(i, j + 1)]), i,
                             j == count - 1)
            i = j + 1
        return out

    def _run(self, prefix: bytes, payload: bytes, first: int, last: bool) -> list[Write]:
        try:
            return [vnet.run_frame(vnet.parse(prefix), prefix[vnet.HDR_LEN:], payload,
                                   first, last)]
        except vnet.VnetError as e:
            self._drop(e.reason)
            return []

    def _remember(self, set_id: int) -> None:
        self._done[set_id] = None
        if len(self._done) > DONE_MEMORY:
            self._done.popitem(last=False)
