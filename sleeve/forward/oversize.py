"""What to do with a record whose frame does not fit the link's path MTU (pure).

A record is ``len[2] kind flags [src 8] [dst 8] [auth] frame`` (see proto.datagram).
For a frame too big for a datagram of ``datagram`` bytes:

- IPv4 without DF: fragmented here into frames that fit; each fragment gets the
  original record's kind, flags and peer ids, so relaying and broadcast trees
  treat them like the original. Not a record with its source's proof (``auth``):
  the proof covers the whole frame, so such a record is answered with ICMP or, when
  no ICMP can help, the caller carries it whole in sleeve fragments;
- IPv4 with DF, or IPv6: an ICMP "fragmentation needed" / ICMPv6 "packet too big"
  frame addressed back to the sender, carrying the MTU that fits, so the sending
  host's kernel lowers its path MTU for that destination (the overlay MTU thereby
  follows the smallest path, per destination);
- a relayed frame (flags S, D, A) is answered with ``relayseg.relayed_mtu``, the MTU
  whose TCP segments still fit a relayed super-frame's piece; a relayed piece of one
  (KIND_VNET_SEG, S D A) too big for this hop is answered with ICMP built from the
  segment it carries (``relayseg.piece_too_big``), so that its sender lowers its MSS
  instead of a relay sleeve-fragmenting every piece for the life of the flow (the
  reply speaks for the far host's MAC: its receiver delivers it without learning that
  MAC, ``icmp.is_too_big``);
- anything else (broadcasts, ICMP errors, garbage, frames flooded down a broadcast
  tree): dropped; never a bogus ICMP.
"""

from __future__ import annotations

import struct

from sleeve.forward import relayseg
from sleeve.forward.superframe import KIND_VNET_SEG
from sleeve.proto import datagram as dg
from sleeve.proto.icmp import too_big_reply
from sleeve.proto.ipfrag import fragment_ipv4
from sleeve.proto.pmtu import overlay_mtu

# A relayed unicast record with its source's proof: flags S, D, A and not B (low nibble).
_SDA = dg.FLAG_SRC | dg.FLAG_DST | dg.FLAG_AUTH
_RELAYED_HEAD = dg.REC_LEN + relayseg.EXTRA  # 44


def record_ids(rec: bytes) -> int:
    flags = rec[3]
    return bool(flags & dg.FLAG_SRC) + bool(flags & dg.FLAG_DST)


def shrink(rec: bytes, datagram: int) -> tuple[list[bytes], bytes | None, str]:
    """Return (fragment records, ICMP reply frame or None, outcome).

    outcome is "fragmented", "too_big_reply" or a drop reason.
    """
    if len(rec) < dg.REC_LEN:
        return [], None, "too_big"
    relayed = rec[3] & 0x0F == _SDA
    if rec[2] != dg.KIND_FRAME:
        if rec[2] != KIND_VNET_SEG or not relayed:
            return [], None, "too_big"
        reply = relayseg.piece_too_big(rec[_RELAYED_HEAD:], relayseg.relayed_mtu(datagram))
        return [], reply, "too_big" if reply is None else "piece_too_big_reply"
    nids = record_ids(rec)
    head = dg.head_len(rec[3])
    if head < dg.REC_LEN:
        return [], None, "too_big"  # bad flags: never queued by us
    frame = rec[head:]
    mtu = (relayseg.relayed_mtu(datagram) if relayed else
           overlay_mtu(datagram, nids) - (head - dg.REC_LEN - nids * dg.PEER_ID_LEN))
    frags = None if rec[3] & dg.FLAG_AUTH else fragment_ipv4(frame, mtu)
    if frags is not None and len(frags) > 1:
        prefix = rec[2:head]
        return [struct.pack("!H", len(f)) + prefix + f for f in frags], None, "fragmented"
    if rec[3] & dg.FLAG_BCAST:
        return [], None, "too_big_flooded"  # several relays would each answer: none does
    reply = too_big_reply(frame, mtu)
    if reply is None:
        return [], None, "too_big"
    return [], reply, "too_big_reply"


def record_source(rec: bytes) -> bytes | None:
    """The source peer id a record carries, if any."""
    if rec[3] & dg.FLAG_SRC:
        return rec[dg.REC_LEN:dg.REC_LEN + dg.PEER_ID_LEN]
    return None
