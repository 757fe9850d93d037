"""PCP MAP codec (traversal.pcp) and the client's PCP path (traversal.portmap) on loopback."""

from __future__ import annotations

import socket
import struct

import pytest

from sleeve.proto.stats import Counters
from sleeve.traversal import pcp
from sleeve.traversal.portmap import IDLE, LIFETIME, PortMapper

NONCE = bytes(range(12))
V4 = b"\0" * 10 + b"\xff\xff"


def response(nonce: bytes = NONCE, result: int = 0, lifetime: int = 3600, epoch: int = 50,
             internal: int = 6783, external: int = 41000, ext_ip: bytes = bytes([198, 18, 60, 1]),
             proto: int = 17, ver: int = 2) -> bytes:
    return (struct.pack("!BBBBII12x", ver, 0x81, 0, result, lifetime, epoch) + nonce
            + struct.pack("!B3xHH", proto, internal, external) + V4 + ext_ip)


def test_request_layout() -> None:
    r = pcp.map_request("198.18.41.2", NONCE, 6783, 6783, 7200)
    assert len(r) == 60
    assert r[:8] == bytes.fromhex("02010000 00001c20")
    assert r[8:24] == V4 + bytes([198, 18, 41, 2])  # our address, IPv4-mapped
    assert r[24:36] == NONCE
    assert r[36:44] == bytes.fromhex("11000000 1a7f 1a7f")  # UDP, internal, suggested
    assert r[44:60] == V4 + bytes(4)  # no external address wished for
    with pytest.raises(ValueError):
        pcp.map_request("198.18.41.2", b"short", 6783, 0, 60)
    with pytest.raises(ValueError):
        pcp.map_request("198.18.41.2", NONCE, 0, 0, 60)


def test_responses() -> None:
    r = pcp.decode(response())
    assert r == pcp.MapResponse(0, 3600, 50, NONCE, 6783, 41000, "198.18.60.1")
    refused = pcp.decode(response(result=2, external=0, ext_ip=bytes(4)))
    assert isinstance(refused, pcp.MapResponse) and refused.result == 2
    header_only = pcp.decode(struct.pack("!BBBBII12x", 2, 0x81, 0, 3, 0, 9))
    assert isinstance(header_only, pcp.MapResponse) and header_only.result == 3
    # version negotiation: NAT-PMP's reply, or a PCP server of another version
    assert pcp.decode(struct.pack("!BBHI", 0, 0x81, 1, 9)) == pcp.Unsupported(0)
    assert pcp.decode(struct.pack("!BBBBII12x", 1, 0x81, 0, 1, 0, 9)) == pcp.Unsupported(1)


@pytest.mark.parametrize("data,reason", [
    (b"\x02\x81", "short"),
    (bytes(1101), "long"),
    (struct.pack("!BBHI", 0, 0x81, 0, 9), "nat-pmp reply"),  # NAT-PMP success: not for us
    (response(ver=3), "version"),
    (pcp.map_request("198.18.41.2", NONCE, 6783, 6783, 60), "not a response"),
    (response()[:2].replace(b"\x81", b"\x82") + response()[2:], "opcode"),
    (response()[:58], "length"),
    (response()[:40], "length"),
    (response(proto=6), "protocol"),
    (response()[:44] + bytes(16), "external not IPv4"),
    (response(external=0), "zero port"),
])
def test_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(pcp.PcpError, match=f"^{reason}$"):
        pcp.decode(data)


def rig() -> tuple[PortMapper, socket.socket, Counters, Counters]:
    g = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    g.bind(("127.0.0.1", 0))
    g.settimeout(2)
    drops, stats = Counters(), Counters()
    pm = PortMapper(drops, stats, enabled=True, server_port=g.getsockname()[1])
    return pm, g, drops, stats


def ask(pm: PortMapper, g: socket.socket, now: float) -> tuple[bytes, tuple[str, int]]:
    pm.tick(now, "127.0.0.1", 6783)
    data, src = g.recvfrom(2048)
    return data, src


def settle(pm: PortMapper, now: float, until: object) -> None:
    for _ in range(100):  # loopback is quick, but not synchronous
        pm.tick(now, "127.0.0.1", 6783)
        if until():  # type: ignore[operator]
            return


def test_maps_with_pcp_checks_the_nonce_and_renews_with_it() -> None:
    pm, g, drops, stats = rig()
    req, src = ask(pm, g, 0.0)
    assert req[:2] == b"\x02\x01" and req[8:24] == V4 + bytes([127, 0, 0, 1])
    # suggests an external port other than ours (see PortMapper._suggest)
    assert struct.unpack_from("!HH", req, 40) == (6783, pm._suggest) and pm._suggest != 6783
    nonce = req[24:36]
    assert struct.unpack_from("!I", req, 4)[0] == LIFETIME
    g.sendto(response(nonce=bytes(12)), src)  # someone else's mapping: dropped
    g.sendto(response(nonce=nonce, internal=9999), src)  # not our port
    g.sendto(response(nonce=nonce), src)
    settle(pm, 0.1, lambda: pm.mapped)
    assert pm.mapped == ("198.18.60.1", 41000), pm.status()
    assert drops["pcp_wrong_nonce"] == 1 and drops["pcp_wrong_port"] == 1
    st = pm.status()
    assert st["protocol"] == "pcp" and st["lifetime_s"] == 3600 and st["mapped"]
    assert stats["pcp_requests"] == 1 and stats["pcp_mappings"] == 1
    g.settimeout(0.2)
    pm.tick(1799.0, "127.0.0.1", 6783)  # renewal at half the granted 3600 s
    with pytest.raises(TimeoutError):
        g.recvfrom(2048)
    g.settimeout(2)
    req2, _ = ask(pm, g, 1801.0)
    assert req2[24:36] == nonce and req2[40:44] == struct.pack("!HH", 6783, 41000)
    pm.close()
    g.close()


def test_a_pcp_refusal_is_shown_counted_and_left_alone() -> None:
    pm, g, drops, stats = rig()
    req, src = ask(pm, g, 0.0)
    g.sendto(response(nonce=req[24:36], result=2, external=0, ext_ip=bytes(4)), src)
    settle(pm, 0.1, lambda: pm.error != "asking")
    assert pm.mapped is None and "not authorized" in pm.error, pm.status()
    assert pm.status()["refusals"] == [f"pcp: {pm.error}"]
    assert stats["pcp_failures"] == 1 and pm._next >= IDLE
    assert not drops.snapshot()
    pm.close()
    g.close()


def test_falls_back_to_nat_pmp_on_unsupp_version_and_to_upnp_on_silence() -> None:
    pm, g, _, stats = rig()
    _, src = ask(pm, g, 0.0)
    g.sendto(struct.pack("!BBBBII12x", 1, 0x81, 0, 1, 0, 9), src)  # PCP version 1 only
    settle(pm, 0.1, lambda: pm.mode == "nat-pmp")
    assert pm.mode == "nat-pmp"
    req, _ = g.recvfrom(64)
    assert req == b"\x00\x00"  # NAT-PMP's address request, at once
    for t in range(1, 8):  # NAT-PMP unanswered: UPnP next (no task runner here: says so)
        pm.tick(float(t), "127.0.0.1", 6783)
    assert stats["pcp_failures"] == 1 and stats["pmp_failures"] == 1, stats.snapshot()
    assert stats["upnp_failures"] == 1
    assert [r.split(":")[0] for r in pm.status()["refusals"]] == ["pcp", "nat-pmp", "upnp"]
    pm.close()
    g.close()


def test_nothing_listening_on_5351_goes_straight_to_upnp() -> None:
    pm, g, _, stats = rig()
    port = g.getsockname()[1]
    g.close()  # ICMP port unreachable for our requests
    pm = PortMapper(Counters(), stats, enabled=True, server_port=port)
    settle(pm, 0.0, lambda: pm.mode != "pcp")
    assert stats["pcp_failures"] == 1 and "no PCP/NAT-PMP server" in pm.status()["refusals"][0]
    pm.close()


def test_metrics_per_protocol() -> None:
    from sleeve.status.metrics import metrics_route
    st = {"connections": [], "drops": {}, "mac_count": 0, "peer_count": 1,
          "counters": {"pcp_requests": 3, "pcp_failures": 1, "pmp_mappings": 1}}
    text = metrics_route(lambda: st)({})[1].decode()
    assert 'sleeve_port_mapping_total{event="requests",protocol="pcp"} 3.0' in text
    assert 'sleeve_port_mapping_total{event="failures",protocol="pcp"} 1.0' in text
    assert 'sleeve_port_mapping_total{event="mappings",protocol="nat-pmp"} 1.0' in text
    assert 'sleeve_port_mapping_total{event="mappings",protocol="upnp"} 0.0' in text
    assert 'event="pcp_requests"' not in text  # not twice (in sleeve_events too)
