"""NAT-PMP (RFC 6886) messages: ask the gateway for our public address and a UDP mapping.

Pure codec; the replies come from the network and are untrusted: ``decode`` raises
``PmpError`` with a short reason (the caller counts it) for anything malformed.
All integers big-endian; requests go to the gateway's UDP port 5351::

    public address request (2 bytes)        mapping request, UDP (12 bytes)
     0       1       2                        0       1       2               4
    +-------+-------+                        +-------+-------+---------------+
    | ver 0 | op 0  |                        | ver 0 | op 1  |  reserved 0   |
    +-------+-------+                        +-------+-------+---------------+
                                             | internal port | suggested ext |
                                             +---------------+---------------+
                                             |     lifetime (s), u32         |
                                             +-------------------------------+

    public address reply (12 bytes)          mapping reply, UDP (16 bytes)
    +-------+-------+---------------+        +-------+-------+---------------+
    | ver 0 |op 128 |  result code  |        | ver 0 |op 129 |  result code  |
    +-------+-------+---------------+        +-------+-------+---------------+
    |  epoch (s since gateway start)|        |  epoch (s since gateway start)|
    +-------------------------------+        +---------------+---------------+
    |   external IPv4 address       |        | internal port | external port |
    +-------------------------------+        +---------------+---------------+
                                             |     lifetime (s), u32         |
                                             +-------------------------------+

Result codes: 0 success, 1 unsupported version, 2 refused, 3 network failure (the
gateway has no usable outside address), 4 out of resources, 5 unsupported opcode.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

PORT = 5351
OP_ADDR, OP_MAP_UDP = 0, 1
RESULTS = {0: "success", 1: "unsupported version", 2: "not authorized/refused",
           3: "network failure", 4: "out of resources", 5: "unsupported opcode"}


class PmpError(ValueError):
    """A reply that is not a well-formed NAT-PMP answer (the message is the reason)."""


@dataclass(frozen=True)
class AddrReply:
    result: int
    epoch: int
    external: str


@dataclass(frozen=True)
class MapReply:
    result: int
    epoch: int
    internal: int
    external: int
    lifetime: int


def addr_request() -> bytes:
    return bytes((0, OP_ADDR))


def map_request(internal: int, suggested: int, lifetime: int) -> bytes:
    """Map UDP ``internal`` (lifetime 0 deletes the mapping)."""
    if not (0 < internal < 65536 and 0 <= suggested < 65536 and 0 <= lifetime < 2 ** 32):
        raise ValueError("NAT-PMP: port out of 1..65535 or lifetime out of range")
    return struct.pack("!BBHHHI", 0, OP_MAP_UDP, 0, internal, suggested, lifetime)


def decode(data: bytes) -> AddrReply | MapReply:
    if len(data) < 8:
        raise PmpError("short")
    ver, op, result, epoch = struct.unpack_from("!BBHI", data)
    if ver != 0:
        raise PmpError("version")
    if op == 128 + OP_ADDR:
        if len(data) != 12:
            raise PmpError("length")
        ext = str(ipaddress.IPv4Address(data[8:12]))
        return AddrReply(result, epoch, ext)
    if op == 128 + OP_MAP_UDP:
        if len(data) != 16:
            raise PmpError("length")
        internal, external, lifetime = struct.unpack_from("!HHI", data, 8)
        if result == 0 and not (internal and external):
            raise PmpError("zero port")
        return MapReply(result, epoch, internal, external, lifetime)
    raise PmpError("opcode")
