"""Aggregation: pack records already read into as few datagrams as fit the path.

Pure function, no I/O: given encoded records and the largest body a datagram
may carry, return the bodies to seal. Records are never split; a record that
cannot fit on its own is returned separately so the caller can count it
(``too_big``). Order is preserved so TCP inside the tunnel sees no reordering.
"""

from __future__ import annotations


def pack(records: list[bytes], max_body: int) -> tuple[list[bytes], list[bytes]]:
    """Return (bodies, oversize records)."""
    bodies: list[bytes] = []
    oversize: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for r in records:
        n = len(r)
        if n > max_body:
            oversize.append(r)
            continue
        if size + n > max_body and cur:
            bodies.append(b"".join(cur))
            cur = []
            size = 0
        cur.append(r)
        size += n
    if cur:
        bodies.append(b"".join(cur))
    return bodies, oversize
