"""Sleeve-level fragmentation of a record that no datagram on the path can carry.

The last resort for oversize frames: IPv4 without DF is fragmented as IP, DF and
IPv6 get an ICMP "too big" so the sender adapts; what is left (IPv6 on a path
below its 1280-byte minimum, non-IP frames, oversize broadcasts) is cut into
KIND_FRAGMENT records, one hop at a time, and reassembled by the next hop into
the original record, which is then handled as if it had arrived whole::

    KIND_FRAGMENT record payload (record flags 0: no peer ids, one hop only)
     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                     fragment set id (BE)                      |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |    index      |    count      |  bytes of the original record |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  (len, kind, flags, ids, frame) ...

Reassembly is bounded (it runs on authenticated input, but a buggy or hostile
peer must still not grow our memory): at most ``MAX_SETS`` sets in progress,
``MAX_COUNT`` fragments per set, ``MAX_RECORD`` bytes per record, and a set not
completed within ``TIMEOUT`` seconds is dropped. The oldest set is evicted first.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Final

from sleeve.proto import datagram as dg

KIND_FRAGMENT: Final = 3
FRAG_HEAD = struct.Struct("!IBB")
MAX_SETS: Final = 64
MAX_COUNT: Final = 64
MAX_RECORD: Final = 65535 + dg.REC_LEN + 2 * dg.PEER_ID_LEN
TIMEOUT: Final = 2.0


def fragment(rec: bytes, set_id: int, max_body: int) -> list[bytes]:
    """Cut ``rec`` into KIND_FRAGMENT records that each fit ``max_body``; [] if impossible."""
    chunk = max_body - dg.REC_LEN - FRAG_HEAD.size
    if chunk < 64 or len(rec) > MAX_RECORD:
        return []
    parts = [rec[i:i + chunk] for i in range(0, len(rec), chunk)]
    if len(parts) > MAX_COUNT:
        return []
    n = len(parts)
    return [dg.encode_record(KIND_FRAGMENT, FRAG_HEAD.pack(set_id, i, n) + p)
            for i, p in enumerate(parts)]


class Reassembler:
    """Per-link reassembly of fragment sets; ``add`` returns the whole record when done."""

    __slots__ = ("_sets", "drops")

    def __init__(self) -> None:
        self._sets: OrderedDict[int, _Set] = OrderedDict()
        self.drops: dict[str, int] = {}

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def add(self, payload: bytes | memoryview, now: float) -> bytes | None:
        if len(payload) <= FRAG_HEAD.size:
            self._drop("bad_fragment")
            return None
        set_id, index, count = FRAG_HEAD.unpack_from(payload, 0)
        if not 0 < count <= MAX_COUNT or index >= count:
            self._drop("bad_fragment")
            return None
        self.expire(now)
        entry = self._sets.get(set_id)
        if entry is None:
            if len(self._sets) >= MAX_SETS:
                self._sets.popitem(last=False)
                self._drop("fragment_evicted")
            entry = _Set(now, count)
            self._sets[set_id] = entry
        if entry.count != count:
            del self._sets[set_id]
            self._drop("bad_fragment")
            return None
        data = bytes(payload[FRAG_HEAD.size:])
        parts = entry.parts
        old = parts.get(index)
        parts[index] = data
        entry.size += len(data) - (len(old) if old is not None else 0)
        if entry.size > MAX_RECORD:
            del self._sets[set_id]
            self._drop("fragment_too_big")
            return None
        if len(parts) < count:
            return None
        del self._sets[set_id]
        return b"".join([parts[i] for i in range(count)])

    def expire(self, now: float) -> None:
        while self._sets:
            set_id, entry = next(iter(self._sets.items()))
            if now - entry.first < TIMEOUT:
                break
            del self._sets[set_id]
            self._drop("fragment_timeout")

    def __len__(self) -> int:
        return len(self._sets)


class _Set:
    __slots__ = ("count", "first", "parts", "size")

    def __init__(self, first: float, count: int) -> None:
        self.first = first
        self.count = count
        self.size = 0  # bytes held, kept up to date so a check costs O(1) per fragment
        self.parts: dict[int, bytes] = {}
