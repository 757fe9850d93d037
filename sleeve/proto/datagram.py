"""Sleeve UDP datagram codec (sans-IO).

One UDP datagram carries one sealed batch of records for one session::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |  type (=1)    |   version     |     key epoch (BE, mod 2^16)  |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                  receiver session index (BE)                  |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                 counter (BE, 64 bit) = AEAD nonce             |
    |                                                               |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |  body: records, ChaCha20-Poly1305 sealed (or clear when the   |
    |  network runs --no-encryption), the 16-byte header is the AD  |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                    Poly1305 tag (16 bytes)                    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

The receiver index names *our* session, not the sender's address, so NAT
rebinding and roaming need no trust in the outer header (WireGuard style).
Nothing in the header is believed before the tag verifies.

``key epoch`` (formerly reserved, always 0) is the sender's key epoch modulo 2**16:
the session keys rotate on time and volume (``sleeve.proto.session``), the counter
restarts at 0 in each epoch, and the field tells the receiver which key to try. Epoch 0
is the handshake's key, so a session's first datagrams are as before rotation existed.
Like the rest of the header it is AEAD associated data: a changed epoch fails the tag.

Inside the body, records follow each other::

    +--------+--------+--------+--------+---------------+---------------+---------+------------
    | length (BE 16)  | kind   | flags  | [src peer 8]  | [dst peer 8]  | [auth]  | payload ...
    +--------+--------+--------+--------+---------------+---------------+---------+------------

    flags:  7   6   5   4   3   2   1   0
          +---+---+---+---+---+---+---+---+
          |   hop limit   | A | B | D | S |
          +---+---+---+---+---+---+---+---+

``length`` counts the payload only. ``S`` (bit 0) says an 8-byte source peer id follows
(the frame was captured by a peer other than the sending hop), ``D`` (bit 1) a
destination peer id (the frame must be relayed further), ``B`` (bit 2) says the frame is
a broadcast travelling down the source's spanning tree (each receiver delivers it and
forwards it to its own children in that tree), bits 4-7 carry the remaining hop limit
for relayed and broadcast frames. Direct unicast pays 4 bytes per frame and no ``auth``.

``A`` (bit 3, needs ``S``) says the source's own end-to-end proof follows the peer ids
(``crypto.origin``), so that a relay cannot speak for another peer::

    unicast (D, not B), 24 bytes:     broadcast (B), 72 bytes:
    +---------------------------+     +---------------------------+
    | counter (BE 64)           |     | counter (BE 64)           |
    +---------------------------+     +---------------------------+
    | tag: keyed BLAKE2b-128    |     | Ed25519 signature (64)    |
    | (16)                      |     |                           |
    +---------------------------+     +---------------------------+

Relays copy ``auth`` unchanged; only the hop limit changes on the way.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

TYPE_DATA: Final = 1
VERSION: Final = 1
HEADER = struct.Struct("!BBHIQ")
HEADER_LEN: Final = HEADER.size  # 16
EPOCH_OFFSET: Final = 2  # the 16-bit key epoch, big-endian, at bytes 2..3
EPOCH_MASK: Final = 0xFFFF
TAG_LEN: Final = 16
REC = struct.Struct("!HBB")
REC_LEN: Final = REC.size  # 4
PEER_ID_LEN: Final = 8
COUNTER_LEN: Final = 8
AUTH_MAC_LEN: Final = COUNTER_LEN + 16  # counter + keyed BLAKE2b-128 tag
AUTH_SIG_LEN: Final = COUNTER_LEN + 64  # counter + Ed25519 signature

# record kinds
KIND_FRAME: Final = 0  # an Ethernet frame without FCS
KIND_HEARTBEAT: Final = 1  # payload: 8-byte echo token + 1 byte (0 = request, 1 = reply)
KIND_PROBE: Final = 2  # PMTU probe padding; payload: 4-byte probe id, zeros

FLAG_SRC: Final = 0x01
FLAG_DST: Final = 0x02
FLAG_BCAST: Final = 0x04
FLAG_AUTH: Final = 0x08
HOPS_SHIFT: Final = 4
MAX_HOPS: Final = 15

# IPv4 + UDP underlay headers plus our own fixed overhead for one frame.
UDP4_OVERHEAD: Final = 28
UDP6_OVERHEAD: Final = 48
DATAGRAM_OVERHEAD: Final = HEADER_LEN + TAG_LEN + REC_LEN  # 36


class DecodeError(ValueError):
    """A datagram or record list that does not parse. Carries a drop reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode_header(receiver: int, counter: int, epoch: int = 0) -> bytes:
    """``epoch`` is the key epoch modulo 2**16 (the caller reduces it)."""
    return HEADER.pack(TYPE_DATA, VERSION, epoch, receiver, counter)


def decode_header(dgram: bytes | memoryview) -> tuple[int, int]:
    """Return (receiver index, counter). Untrusted until the tag verifies.

    The key epoch (bytes 2..3) is read by ``DataSession.open``, which needs the datagram
    anyway; the node's dispatch only needs the index.
    """
    if len(dgram) < HEADER_LEN + TAG_LEN:
        raise DecodeError("short")
    typ, ver, _epoch, receiver, counter = HEADER.unpack_from(dgram, 0)
    if typ != TYPE_DATA:
        raise DecodeError("bad_type")
    if ver != VERSION:
        raise DecodeError("bad_version")
    return receiver, counter


def encode_record(
    kind: int,
    payload: bytes | memoryview,
    src: bytes | None = None,
    dst: bytes | None = None,
    hops: int = 0,
    bcast: bool = False,
    auth: bytes | memoryview | None = None,
) -> bytes:
    if not 0 <= hops <= MAX_HOPS or any(p is not None and len(p) != PEER_ID_LEN
                                        for p in (src, dst)):
        raise ValueError("hop limit must be 0..15 and peer ids 8 bytes")
    flags = hops << HOPS_SHIFT | (FLAG_BCAST if bcast else 0)
    parts: list[bytes | memoryview] = []
    if src is not None:
        flags |= FLAG_SRC
        parts.append(src)
    if dst is not None:
        flags |= FLAG_DST
        parts.append(dst)
    if auth is not None:
        if auth_len(flags | FLAG_AUTH) != len(auth):
            raise ValueError("auth needs a source id and is 24 bytes (unicast with a "
                             "destination) or 72 (broadcast)")
        flags |= FLAG_AUTH
        parts.append(auth)
    return REC.pack(len(payload), kind, flags) + b"".join(parts) + bytes(payload)


def frame_record(frame: bytes | memoryview) -> bytes:
    """Hot path: a directly delivered frame (no peer ids)."""
    return REC.pack(len(frame), KIND_FRAME, 0) + bytes(frame)


def auth_len(flags: int) -> int:
    """Length of the ``auth`` field ``flags`` announce; -1 for an invalid combination."""
    if not flags & FLAG_AUTH:
        return 0
    if not flags & FLAG_SRC:
        return -1
    if flags & FLAG_BCAST:
        return AUTH_SIG_LEN
    return AUTH_MAC_LEN if flags & FLAG_DST else -1


def head_len(flags: int) -> int:
    """Bytes before the payload of a record with these flags; -1 if they are invalid."""
    n = auth_len(flags)
    if n < 0:
        return -1
    return REC_LEN + PEER_ID_LEN * (bool(flags & FLAG_SRC) + bool(flags & FLAG_DST)) + n


@dataclass(frozen=True, slots=True)
class Record:
    kind: int
    src: bytes | None
    dst: bytes | None
    hops: int
    payload: memoryview
    bcast: bool = False
    auth: bytes | None = None  # the source's proof (see the module docstring)


def iter_records(body: bytes | memoryview) -> Iterator[Record]:
    """Parse records from an authenticated body. Raises DecodeError on bad framing.

    The yielded payloads are views into ``body``; the caller must copy what
    it keeps beyond the life of ``body``.
    """
    mv = memoryview(body)
    off = 0
    end = len(mv)
    while off < end:
        rec, off = parse_record(mv, off)
        yield rec


def parse_record(mv: memoryview, off: int) -> tuple[Record, int]:
    """The record at ``off`` in ``mv`` and the offset after it (see ``iter_records``)."""
    end = len(mv)
    if end - off < REC_LEN:
        raise DecodeError("truncated_record")
    length, kind, flags = REC.unpack_from(mv, off)
    off += REC_LEN
    src = dst = None
    if flags & FLAG_SRC:
        if end - off < PEER_ID_LEN:
            raise DecodeError("truncated_record")
        src = bytes(mv[off : off + PEER_ID_LEN])
        off += PEER_ID_LEN
    if flags & FLAG_DST:
        if end - off < PEER_ID_LEN:
            raise DecodeError("truncated_record")
        dst = bytes(mv[off : off + PEER_ID_LEN])
        off += PEER_ID_LEN
    auth = None
    if flags & FLAG_AUTH:
        n = auth_len(flags)
        if n < 0:
            raise DecodeError("bad_auth_flags")
        if end - off < n:
            raise DecodeError("truncated_record")
        auth = bytes(mv[off : off + n])
        off += n
    if end - off < length:
        raise DecodeError("truncated_record")
    return (Record(kind, src, dst, flags >> HOPS_SHIFT, mv[off : off + length],
                   bool(flags & FLAG_BCAST), auth), off + length)
