"""Fast-datapath heartbeats: codec and per-link sequence/echo bookkeeping (sans-IO).

A heartbeat is an Ethernet frame with the private ethertype 0x88B5 (IEEE "local
experimental"), sent by the router *into its own VXLAN device* towards the peer's
heartbeat MAC, for which the VXLAN device has a static FDB entry pointing at the
peer's underlay IP. The kernel therefore carries it exactly like a data frame. Its
payload is padded so the frame is as large as the biggest data frame (overlay MTU
+ 14): a heartbeat that arrives proves full-size frames pass both VXLAN ends, the
underlay (the outer header has DF set) and any firewall in between::

    payload (after the 14-byte Ethernet header), all integers big-endian
     0      4     5     6        8            16           24     32     40
    +------+-----+-----+--------+------------+------------+------+------+--------+------+
    |"SLVH"| ver |flags| size   | sender id  |receiver id | seq  | echo | zeros  | tag  |
    |      | = 1 |     | BE16   | 8 bytes    | 8 bytes    | BE64 | BE64 | ...    | 16 B |
    +------+-----+-----+--------+------------+------------+------+------+--------+------+
    size  = length of the whole payload (tag included): a truncated or padded frame fails
    flags = REQUEST (0x01): "answer me now" (the answer has REQUEST clear, no ping-pong)
    seq   = the sender's counter in this direction, from 1, strictly increasing
    echo  = the highest seq the sender has accepted from the receiver (0: none yet)
    tag   = BLAKE2b-128 keyed with the sender->receiver heartbeat key over bytes [0, size-16)

Keys: one per direction, derived from that direction's data-plane key
(:func:`derive_key`), so only the authenticated peer can make a heartbeat that we
accept, and a heartbeat cannot be reflected back to its sender. ``seq`` must grow,
so a captured heartbeat (VXLAN is clear text) cannot be replayed.

An *ack* is a heartbeat from the peer whose ``echo`` names a seq we sent recently:
it proves a full-size frame went from us to the peer and another came back, through
the kernel path alone. ``HeartbeatSession`` turns received payloads into acks
(for :class:`sleeve.fastdp.health.Health`) and answers requests.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

ETHERTYPE: Final = 0x88B5
MAGIC: Final = b"SLVH"
VERSION: Final = 1
FLAG_REQUEST: Final = 0x01
TAG_LEN: Final = 16
ID_LEN: Final = 8
_HDR: Final = struct.Struct("!4sBBH8s8sQQ")
HEADER_LEN: Final = _HDR.size  # 40
MIN_SIZE: Final = HEADER_LEN + TAG_LEN  # 56
MAX_SIZE: Final = 65535
KEY_LEN: Final = 32
_KDF_PERSON: Final = b"sleeve-fastdp-hb"  # 16 bytes: BLAKE2b's personalisation limit
_SENT_KEPT: Final = 32  # recent seqs remembered for matching echoes (bounded, oldest dropped)


def derive_key(direction_key: bytes) -> bytes:
    """The heartbeat key for one direction, from that direction's data-plane key.

    One-way (keyed BLAKE2b with its own personalisation), so a heartbeat key reveals
    nothing about the data key; both ends derive the same value.
    """
    if len(direction_key) < 16:
        raise ValueError("direction key too short")
    return hashlib.blake2b(b"", key=direction_key[:64], person=_KDF_PERSON,
                           digest_size=KEY_LEN).digest()


def heartbeat_mac(peer: bytes) -> bytes:
    """The MAC heartbeats *to* ``peer`` are addressed to: unicast, locally administered.

    Derived from the peer id, so both ends agree without asking. The receiving bridge
    has it as a local entry (never flooded to other ports).
    """
    m = bytearray(hashlib.blake2b(b"sleeve-fastdp-hb-mac" + peer, digest_size=6).digest())
    m[0] = (m[0] & 0xFC) | 0x02
    return bytes(m)


def _tag(key: bytes, body: bytes | bytearray | memoryview) -> bytes:
    return hashlib.blake2b(body, key=key, digest_size=TAG_LEN).digest()


def encode(key: bytes, sender: bytes, receiver: bytes, seq: int, echo: int, size: int,
           request: bool) -> bytes:
    """A heartbeat payload of exactly ``size`` bytes (``MIN_SIZE <= size <= MAX_SIZE``)."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"heartbeat size {size} out of range")
    if len(sender) != ID_LEN or len(receiver) != ID_LEN:
        raise ValueError("peer ids are 8 bytes")
    body = bytearray(size - TAG_LEN)
    _HDR.pack_into(body, 0, MAGIC, VERSION, FLAG_REQUEST if request else 0, size, sender,
                   receiver, seq, echo)
    return bytes(body) + _tag(key, body)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    sender: bytes
    receiver: bytes
    seq: int
    echo: int
    request: bool
    size: int


def peek_sender(payload: bytes | memoryview) -> bytes | None:
    """The claimed sender id, to find the link (and its key) *before* authenticating.

    Nothing else may be trusted until :func:`decode` succeeded with that link's key.
    """
    if len(payload) < MIN_SIZE or bytes(payload[:4]) != MAGIC:
        return None
    return bytes(payload[8:16])


def decode(key: bytes, payload: bytes | memoryview) -> Heartbeat | str:
    """The authenticated heartbeat, or the drop reason (a str)."""
    n = len(payload)
    if n < MIN_SIZE:
        return "hb_short"
    magic, ver, flags, size, sender, receiver, seq, echo = _HDR.unpack_from(payload, 0)
    if magic != MAGIC or ver != VERSION:
        return "hb_bad_header"
    if size > n:
        return "hb_truncated"
    if size < MIN_SIZE:
        return "hb_bad_header"
    # Bytes after ``size`` are the Ethernet minimum-frame padding; only the first ``size``
    # bytes are authenticated and counted.
    view = memoryview(payload)[:size]
    if not hmac.compare_digest(_tag(key, view[:size - TAG_LEN]), bytes(view[size - TAG_LEN:])):
        return "hb_auth"
    return Heartbeat(sender, receiver, seq, echo, bool(flags & FLAG_REQUEST), size)


@dataclass(frozen=True, slots=True)
class Received:
    """What one accepted heartbeat means for its link."""

    ack: bool  # it echoed a seq we sent recently: the round trip works
    rtt: float | None  # seconds from sending the echoed seq to now, when ``ack``
    reply: bytes | None  # the payload to send back now (the peer asked), or None


class HeartbeatSession:
    """Sequence numbers, echoes and keys of one link's heartbeats (sans-IO).

    ``size`` is the payload size every heartbeat gets (overlay MTU: the frame is then
    MTU + 14 bytes, the largest data frame). Replies are rate-limited to one per
    ``min_reply_gap`` seconds, so even a peer (the only one holding the key) cannot
    make us flood. An echo counts as an ack only within ``max_rtt`` seconds of the
    echoed heartbeat being sent.
    """

    def __init__(self, local: bytes, remote: bytes, send_key: bytes, recv_key: bytes,
                 size: int, min_reply_gap: float = 0.05, max_rtt: float = 2.0) -> None:
        if len(send_key) != KEY_LEN or len(recv_key) != KEY_LEN:
            raise ValueError("heartbeat keys are 32 bytes (see derive_key)")
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"heartbeat size {size} out of range")
        self.local = local
        self.remote = remote
        self._send_key = send_key
        self._recv_key = recv_key
        self.size = size
        self.min_reply_gap = min_reply_gap
        self.max_rtt = max_rtt  # an echo of an older seq is stale: it proves nothing about now
        self._seq = 0
        self._last_rx_seq = 0  # highest accepted from the peer (replay check, our echo)
        self._acked = 0  # highest of our seqs the peer echoed
        self._sent: OrderedDict[int, float] = OrderedDict()  # seq -> when (bounded)
        self._replied_at = float("-inf")
        self.drops: dict[str, int] = {}
        self.sent = 0
        self.received = 0

    def make(self, now: float, request: bool = True) -> bytes:
        """The next heartbeat payload to send (to be sent at ``now``)."""
        self._seq += 1
        self._sent[self._seq] = now
        while len(self._sent) > _SENT_KEPT:
            self._sent.popitem(last=False)
        self.sent += 1
        return encode(self._send_key, self.local, self.remote, self._seq, self._last_rx_seq,
                      self.size, request)

    def _drop(self, reason: str) -> Received | None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        return None

    def on_payload(self, payload: bytes | memoryview, now: float) -> Received | None:
        """Authenticate, replay-check, then interpret one payload; None if dropped."""
        hb = decode(self._recv_key, payload)
        if isinstance(hb, str):
            return self._drop(hb)
        if hb.sender != self.remote or hb.receiver != self.local:
            return self._drop("hb_wrong_link")
        if hb.size != self.size:
            # A size mismatch proves nothing about our MTU: both ends must agree on it.
            return self._drop("hb_size")
        if hb.seq <= self._last_rx_seq:
            return self._drop("hb_replay")
        self._last_rx_seq = hb.seq
        self.received += 1
        ack, rtt = False, None
        sent_at = self._sent.get(hb.echo)
        if hb.echo > self._acked and sent_at is not None and now - sent_at <= self.max_rtt:
            self._acked = hb.echo
            ack, rtt = True, max(0.0, now - sent_at)
        reply = None
        if hb.request and now - self._replied_at >= self.min_reply_gap:
            self._replied_at = now
            reply = self.make(now, request=False)
        return Received(ack, rtt, reply)
