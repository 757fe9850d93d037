"""NAT-PMP codec (traversal.pmp): requests as RFC 6886 lays them out, replies validated."""

from __future__ import annotations

import struct

import pytest

from sleeve.traversal import pmp


def test_requests() -> None:
    assert pmp.addr_request() == b"\x00\x00"
    assert pmp.map_request(6783, 6783, 7200) == bytes.fromhex("00010000 1a7f 1a7f 00001c20")
    with pytest.raises(ValueError):
        pmp.map_request(0, 0, 60)


def test_replies() -> None:
    a = pmp.decode(struct.pack("!BBHI4s", 0, 128, 0, 77, bytes([198, 18, 60, 1])))
    assert a == pmp.AddrReply(0, 77, "198.18.60.1")
    m = pmp.decode(struct.pack("!BBHIHHI", 0, 129, 0, 78, 6783, 41000, 3600))
    assert m == pmp.MapReply(0, 78, 6783, 41000, 3600)
    refused = pmp.decode(struct.pack("!BBHIHHI", 0, 129, 3, 78, 6783, 0, 0))
    assert isinstance(refused, pmp.MapReply) and refused.result == 3


@pytest.mark.parametrize("data,reason", [
    (b"", "short"), (b"\x00\x80\x00\x00", "short"),
    (struct.pack("!BBHI4s", 1, 128, 0, 1, b"\x01\x02\x03\x04"), "version"),
    (struct.pack("!BBHI4sB", 0, 128, 0, 1, b"\x01\x02\x03\x04", 0), "length"),
    (struct.pack("!BBHIHH", 0, 129, 0, 1, 6783, 6783), "length"),
    (struct.pack("!BBHIHHI", 0, 129, 0, 1, 6783, 0, 60), "zero port"),
    (struct.pack("!BBHIHHI", 0, 130, 0, 1, 6783, 1, 60), "opcode"),
])
def test_malformed_replies_raise_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(pmp.PmpError, match=reason):
        pmp.decode(data)
