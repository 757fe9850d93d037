"""PCP (RFC 6887) MAP messages: ask the gateway for a UDP port mapping, NAT-PMP's successor.

Pure codec; replies come from the LAN unauthenticated: ``decode`` raises ``PcpError``
with a short reason (the caller counts it) for anything malformed. Same UDP port as
NAT-PMP (5351); all integers big-endian, addresses 16 bytes (IPv4 as ::ffff:a.b.c.d)::

    MAP request (60 bytes)                    MAP response (60 bytes)
     0       1       2       3                 0       1       2       3
    +-------+-+-----+---------------+         +-------+-+-----+-------+-------+
    | ver 2 |0| op 1|   reserved 0  |         | ver 2 |1| op 1| resv  | result|
    +-------+-+-----+---------------+         +-------+-+-----+-------+-------+
    |  requested lifetime (s), u32  |         |      lifetime (s), u32        |
    +-------------------------------+         +-------------------------------+
    |                               |         |  epoch (s since gateway start)|
    |  client's IP address (16)     |         +-------------------------------+
    |  (the source of this request) |         |     reserved (12 bytes)       |
    |                               |         |                               |
    +===============================+  24     +===============================+
    |  mapping nonce (12 bytes):    |         |  mapping nonce (the request's)|
    |  random, kept for renewals    |         |                               |
    +-------+-----------------------+  36     +-------+-----------------------+
    | proto |  reserved 0 (3)       |         | proto |  reserved (3)         |
    +-------+-------+---------------+  40     +-------+-------+---------------+
    | internal port | suggested ext |         | internal port | assigned ext  |
    +---------------+---------------+  44     +---------------+---------------+
    |  suggested external IP (16)   |         |  assigned external IP (16)    |
    |  (::ffff:0.0.0.0: no wish)    |         |                               |
    +-------------------------------+  60     +-------------------------------+

A NAT-PMP-only gateway answers a version-2 request with a version-0 "unsupported
version" reply (RFC 6886 section 3.5); a PCP gateway of another version answers
UNSUPP_VERSION. ``decode`` reports both as ``Unsupported`` so the caller falls back.
A lifetime of 0 deletes the mapping. The nonce ties a response to our request (a
LAN host cannot guess it), so a response with another nonce is dropped.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

PORT = 5351
VERSION = 2
OP_MAP = 1
UDP = 17
REQUEST_LEN = RESPONSE_LEN = 60
MAX_LEN = 1100  # RFC 6887: PCP messages are at most 1100 bytes; options may follow MAP

RESULTS = {0: "success", 1: "unsupported version", 2: "not authorized",
           3: "malformed request", 4: "unsupported opcode", 5: "unsupported option",
           6: "malformed option", 7: "network failure", 8: "no resources",
           9: "unsupported protocol", 10: "user exceeded quota",
           11: "cannot provide external", 12: "address mismatch",
           13: "excessive remote peers"}
UNSUPP_VERSION = 1


class PcpError(ValueError):
    """A reply that is not a well-formed PCP MAP response (the message is the reason)."""


@dataclass(frozen=True)
class Unsupported:
    """The gateway does not speak PCP version 2 (``version`` it named; 0 is NAT-PMP)."""

    version: int


@dataclass(frozen=True)
class MapResponse:
    result: int
    lifetime: int
    epoch: int
    nonce: bytes
    internal: int
    external: int
    external_ip: str  # dotted IPv4 (a mapped IPv6 address is refused: we map IPv4 only)


def _addr16(ip: str) -> bytes:
    a = ipaddress.ip_address(ip)
    if isinstance(a, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + a.packed
    return a.packed


def map_request(client_ip: str, nonce: bytes, internal: int, suggested: int,
                lifetime: int) -> bytes:
    """A MAP request for UDP ``internal`` from ``client_ip`` (our address on the gateway's
    side); ``nonce`` 12 random bytes, the same for every renewal of one mapping."""
    if len(nonce) != 12:
        raise ValueError("PCP: the mapping nonce is 12 bytes")
    if not (0 < internal < 65536 and 0 <= suggested < 65536 and 0 <= lifetime < 2 ** 32):
        raise ValueError("PCP: port out of 1..65535 or lifetime out of range")
    return (struct.pack("!BBHI", VERSION, OP_MAP, 0, lifetime) + _addr16(client_ip)
            + nonce + struct.pack("!B3xHH", UDP, internal, suggested) + _addr16("0.0.0.0"))


def decode(data: bytes) -> MapResponse | Unsupported:
    """A MAP response (any result), or ``Unsupported`` (fall back to NAT-PMP)."""
    if len(data) < 4:
        raise PcpError("short")
    if len(data) > MAX_LEN:
        raise PcpError("long")
    ver, rop, _, result = struct.unpack_from("!BBBB", data)
    if ver == 0:  # a NAT-PMP gateway: its 8-byte "unsupported version" reply
        if len(data) == 8 and rop & 0x80 and data[3] == UNSUPP_VERSION and data[2] == 0:
            return Unsupported(0)
        raise PcpError("nat-pmp reply")
    if not rop & 0x80:
        raise PcpError("not a response")
    if ver != VERSION:
        # RFC 6887 section 9: the server names the version it speaks; only a result of
        # UNSUPP_VERSION makes that a negotiation rather than garbage
        if result == UNSUPP_VERSION:
            return Unsupported(ver)
        raise PcpError("version")
    if result == UNSUPP_VERSION:
        return Unsupported(ver)
    if rop & 0x7F != OP_MAP:
        raise PcpError("opcode")
    if len(data) < 24 or len(data) % 4:
        raise PcpError("length")
    lifetime, epoch = struct.unpack_from("!II", data, 4)
    if len(data) < RESPONSE_LEN:
        if result == 0:
            raise PcpError("length")
        # an error answered before the MAP data was parsed (e.g. malformed request)
        return MapResponse(result, lifetime, epoch, b"", 0, 0, "")
    nonce = data[24:36]
    proto, internal, external = struct.unpack_from("!B3xHH", data, 36)
    if result != 0:
        return MapResponse(result, lifetime, epoch, bytes(nonce), internal, external, "")
    if proto != UDP:
        raise PcpError("protocol")
    ext = ipaddress.IPv6Address(data[44:60]).ipv4_mapped
    if ext is None:
        raise PcpError("external not IPv4")
    if not (internal and external):
        raise PcpError("zero port")
    return MapResponse(result, lifetime, epoch, bytes(nonce), internal, external, str(ext))
