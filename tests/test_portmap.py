"""NAT-PMP client (traversal.portmap) against a fake gateway on loopback; route parsing."""

from __future__ import annotations

import socket
import struct

from sleeve.proto.stats import Counters
from sleeve.traversal import pmp
from sleeve.traversal.portmap import IDLE, PortMapper, gateway_for

ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t002812C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth0\t00000000\t012812C6\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth1\t001412C6\t0B2A12C6\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0
"""


def test_gateway_for_takes_the_longest_prefix_via_a_next_hop() -> None:
    # 198.18.20.0/24 via 198.18.42.11 beats the default via 198.18.40.1
    assert gateway_for("198.18.20.5", ROUTES) == "198.18.42.11"
    assert gateway_for("198.18.99.9", ROUTES) == "198.18.40.1"  # the default route
    assert gateway_for("198.18.40.7", ROUTES) is None  # on link: no gateway in between
    assert gateway_for("not an ip", ROUTES) is None
    assert gateway_for("198.18.0.1", "header only\n") is None


def fake_gateway() -> socket.socket:
    g = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    g.bind(("127.0.0.1", 0))
    g.settimeout(2)
    return g


def serve(g: socket.socket, replies: list[bytes]) -> list[bytes]:
    """Read the two requests (address, map) and send ``replies`` to their sender."""
    got = []
    for _ in range(2):
        data, src = g.recvfrom(64)
        got.append(data)
    for r in replies:
        g.sendto(r, src)
    return got


def addr_reply(epoch: int) -> bytes:
    return struct.pack("!BBHI4s", 0, 128, 0, epoch, bytes([198, 18, 60, 1]))


def map_reply(epoch: int, result: int = 0, ext: int = 41000) -> bytes:
    return struct.pack("!BBHIHHI", 0, 129, result, epoch, 6783, ext, 3600)


def rig() -> tuple[PortMapper, socket.socket, Counters]:
    """A client that asked PCP first and was told "NAT-PMP only" (RFC 6886 3.5)."""
    g = fake_gateway()
    drops = Counters()
    pm = PortMapper(drops, Counters(), enabled=True, server_port=g.getsockname()[1])
    pm.tick(0.0, "127.0.0.1", 6783)
    data, src = g.recvfrom(2048)
    assert data[:2] == bytes((2, 1)) and len(data) == 60  # PCP MAP, preferred
    g.sendto(struct.pack("!BBHI", 0, 129, 1, 1), src)  # version 0: unsupported version
    for _ in range(50):
        pm.tick(0.0, "127.0.0.1", 6783)
        if pm.mode == "nat-pmp":
            break
    assert pm.mode == "nat-pmp" and not drops.snapshot(), drops.snapshot()
    return pm, g, drops


def settle(pm: PortMapper, now: float) -> None:
    for _ in range(50):  # loopback is quick, but not synchronous
        pm.tick(now, "127.0.0.1", 6783)
        if pm.mapped or pm.error not in ("asking", ""):
            return


def test_maps_and_renews_at_half_the_lifetime() -> None:
    pm, g, drops = rig()
    pm.tick(0.0, "127.0.0.1", 6783)
    got = serve(g, [b"junk", addr_reply(100), map_reply(100)])
    # an external port other than ours (a port-preserving NAT uses ours already)
    assert got == [pmp.addr_request(), pmp.map_request(6783, pm._suggest, 7200)]
    assert pm._suggest != 6783
    settle(pm, 0.1)
    assert pm.mapped == ("198.18.60.1", 41000), pm.status()
    assert drops["pmp_bad_short"] == 1  # the junk reply, counted
    assert pm.status()["mapped"] == "198.18.60.1:41000"
    pm.tick(1799.0, "127.0.0.1", 6783)
    g.settimeout(0.2)
    try:
        g.recvfrom(64)
        raise AssertionError("renewed too early")
    except TimeoutError:
        pass
    g.settimeout(2)
    pm.tick(1801.0, "127.0.0.1", 6783)
    got = serve(g, [addr_reply(1900), map_reply(1900)])
    assert got[1] == pmp.map_request(6783, 41000, 7200)  # asks for the same port again
    pm.close()
    g.close()


def test_a_refusal_is_shown_and_the_gateway_left_alone() -> None:
    pm, g, _ = rig()
    pm.tick(0.0, "127.0.0.1", 6783)
    serve(g, [addr_reply(5), map_reply(5, result=3, ext=0)])
    settle(pm, 0.1)
    assert pm.mapped is None and "network failure" in pm.error
    assert pm._next >= IDLE
    pm.close()
    g.close()


def test_a_restarted_gateway_is_asked_again() -> None:
    pm, g, _ = rig()
    pm.tick(0.0, "127.0.0.1", 6783)
    serve(g, [addr_reply(5000), map_reply(5000)])
    settle(pm, 0.1)
    assert pm.mapped is not None
    g.sendto(addr_reply(3), ("127.0.0.1", pm._sock.getsockname()[1]))  # type: ignore[union-attr]
    for _ in range(50):
        pm.tick(10.0, "127.0.0.1", 6783)
        if pm.mapped is None:
            break
    assert pm._next <= 10.0 or pm.mapped is None
    pm.close()
    g.close()


def test_off_means_no_socket() -> None:
    pm = PortMapper(Counters(), Counters(), enabled=False)
    pm.tick(0.0, "127.0.0.1", 6783)
    assert pm._sock is None and pm.mapped is None


def test_an_unusable_external_address_or_an_unrenewed_mapping_is_not_announced() -> None:
    """A gateway saying 0.0.0.0 (peers drop the whole candidate message for it), and a
    mapping whose renewals went unanswered past its lifetime (review)."""
    pm, g, drops = rig()
    pm.tick(0.0, "127.0.0.1", 6783)
    zero = struct.pack("!BBHI4s", 0, 128, 0, 7, bytes(4))
    serve(g, [zero, map_reply(7)])
    settle(pm, 0.1)
    assert pm.mapped is None and drops["pmp_bad_external"] == 1
    pm.close()
    g.close()

    pm, g, drops = rig()
    pm.tick(0.0, "127.0.0.1", 6783)
    serve(g, [addr_reply(100), map_reply(100)])
    settle(pm, 0.1)
    assert pm.mapped == ("198.18.60.1", 41000)
    pm.tick(3599.0, "127.0.0.1", 6783)  # renewals asked, never answered (3600 s lifetime)
    assert pm.mapped == ("198.18.60.1", 41000)
    pm.tick(3601.0, "127.0.0.1", 6783)
    assert pm.mapped is None and "expired" in pm.error
    pm.close()
    g.close()
