"""UPnP IGD client (traversal.igd) against a fake gateway on loopback; untrusted XML refused."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sleeve.proto.stats import Counters
from sleeve.traversal import igd
from sleeve.traversal.portmap import PortMapper

WANIP = "urn:schemas-upnp-org:service:WANIPConnection:1"
DESC = f"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><device><serviceList>
<service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
<controlURL>/ctl/L3F</controlURL></service></serviceList><deviceList><device><deviceList>
<device><serviceList><service><serviceType>{WANIP}</serviceType>
<controlURL>/ctl/IPConn</controlURL></service></serviceList></device>
</deviceList></device></deviceList></device></root>""".encode()


def soap_ok(action: str, args: str = "") -> bytes:
    return (f'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/'
            f'envelope/"><s:Body><u:{action}Response xmlns:u="{WANIP}">{args}'
            f"</u:{action}Response></s:Body></s:Envelope>").encode()


def soap_fault(code: int) -> bytes:
    return ('<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/'
            'envelope/"><s:Body><s:Fault><faultcode>s:Client</faultcode><detail>'
            '<UPnPError xmlns="urn:schemas-upnp-org:control-1-0">'
            f"<errorCode>{code}</errorCode></UPnPError></detail></s:Fault></s:Body>"
            "</s:Envelope>").encode()


Handler = Callable[[str, str, bytes], tuple[int, bytes]]


async def serve(handler: Handler) -> tuple[asyncio.Server, int, list[tuple[str, bytes]]]:
    calls: list[tuple[str, bytes]] = []

    async def conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        m = re.search(rb"content-length: (\d+)", head, re.I)
        body = await r.readexactly(int(m.group(1))) if m else b""
        line = head.split(b"\r\n")[0].decode()
        action = re.search(rb'SOAPAction: "[^#]*#(\w+)"', head)
        name = action.group(1).decode() if action else line
        calls.append((name, body))
        status, out = handler(line, name, body)
        w.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(out)}\r\n\r\n".encode() + out)
        await w.drain()
        w.close()

    srv = await asyncio.start_server(conn, "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1], calls


def test_location_only_on_the_gateway() -> None:
    ok = b"HTTP/1.1 200 OK\r\nLOCATION: http://198.18.41.1:5000/rootDesc.xml\r\nST: x\r\n\r\n"
    assert igd.location_of(ok, "198.18.41.1") == ("198.18.41.1", 5000, "/rootDesc.xml")
    assert igd.location_of(ok, "198.18.41.9") is None  # points elsewhere: ignored
    assert igd.location_of(ok.replace(b"http:", b"ftp:"), "198.18.41.1") is None
    assert igd.location_of(b"HTTP/1.1 200 OK\r\n\r\n", "198.18.41.1") is None


def test_control_url_and_refused_documents() -> None:
    svc = igd.control_url(DESC, "198.18.41.1", 5000)
    assert svc == igd.Service("198.18.41.1", 5000, "/ctl/IPConn", WANIP)
    laughs = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
              b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><r>&b;</r>')
    for doc, reason in ((laughs, "dtd"), (b"<root><unclosed>", "bad_xml"),
                        (b" " * (igd.MAX_BODY + 1), "too_long"),
                        (b"<root/>", "no_wan_service"),
                        (DESC.replace(b"/ctl/IPConn", b"http://198.18.9.9/c"),
                         "control_elsewhere")):
        with pytest.raises(igd.IgdError, match=f"^{reason}$"):
            igd.control_url(doc, "198.18.41.1", 5000)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_maps_through_a_fake_igd_and_takes_another_port_on_a_clash(
        monkeypatch: pytest.MonkeyPatch) -> None:
    taken: set[int] = set()

    def handler(line: str, name: str, body: bytes) -> tuple[int, bytes]:
        if line.startswith("GET /rootDesc.xml"):
            return 200, DESC
        if name == "AddPortMapping":
            port = int(re.search(rb"<NewExternalPort>(\d+)<", body).group(1))  # type: ignore[union-attr]
            if not taken:  # the first port asked for is someone else's
                taken.add(port)
            return (500, soap_fault(718)) if port in taken else (200, soap_ok(name))
        if name == "GetExternalIPAddress":
            return 200, soap_ok(name, "<NewExternalIPAddress>198.18.40.11"
                                      "</NewExternalIPAddress>")
        if name == "DeletePortMapping":
            return 200, soap_ok(name)
        return 404, b""

    async def main() -> tuple[PortMapper, Counters, list[tuple[str, bytes]]]:
        srv, port, calls = await serve(handler)

        async def discover(local_ip: str, gateway: str) -> tuple[str, int, str]:
            return "127.0.0.1", port, "/rootDesc.xml"  # SSDP itself: the lab test

        monkeypatch.setattr(igd, "discover", discover)
        stats = Counters()
        pm = PortMapper(Counters(), stats, enabled=True, server_port=1)  # nothing on port 1
        tasks: list[asyncio.Task[None]] = []
        pm.spawn = lambda c: tasks.append(asyncio.ensure_future(c))  # type: ignore[func-returns-value]
        now = 0.0
        while pm.mapped is None and now < 15:
            pm.tick(now, "127.0.0.1", 6783)
            await asyncio.sleep(0.05)
            now += 1.0
        await pm.aclose()
        srv.close()
        return pm, stats, calls

    pm, stats, calls = run(main())
    assert pm.mapped is not None and pm.mapped[0] == "198.18.40.11", pm.status()
    assert pm.protocol == "upnp" and pm.mapped[1] not in taken | {6783}  # the clash: another
    assert [c[0] for c in calls if c[0] != "GET /rootDesc.xml HTTP/1.0"] == [
        "AddPortMapping", "AddPortMapping", "GetExternalIPAddress", "DeletePortMapping"]
    add = calls[-3][1]
    assert b"<NewProtocol>UDP</NewProtocol>" in add and b"<NewInternalPort>6783<" in add
    assert b"<NewInternalClient>127.0.0.1<" in add
    assert stats["upnp_mappings"] == 1 and stats["upnp_requests"] == 2
    assert f"port {taken.pop()} taken" in pm.status()["refusals"][-1]


def test_a_hostile_igd_is_counted_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(line: str, name: str, body: bytes) -> tuple[int, bytes]:
        return 200, b"<r>" + b"x" * (igd.MAX_BODY * 4) + b"</r>"  # far too long

    async def main() -> tuple[PortMapper, Counters]:
        srv, port, _ = await serve(handler)

        async def discover(local_ip: str, gateway: str) -> tuple[str, int, str]:
            return "127.0.0.1", port, "/rootDesc.xml"

        monkeypatch.setattr(igd, "discover", discover)
        drops = Counters()
        pm = PortMapper(drops, Counters(), enabled=True, server_port=1)
        pm.spawn = lambda c: asyncio.ensure_future(c)  # type: ignore[func-returns-value]
        now = 0.0
        while not drops.snapshot() and now < 15:
            pm.tick(now, "127.0.0.1", 6783)
            await asyncio.sleep(0.05)
            now += 1.0
        pm.close()
        srv.close()
        return pm, drops

    pm, drops = run(main())
    assert drops["upnp_bad_too_long"] == 1 and pm.mapped is None, drops.snapshot()
    assert "too_long" in pm.error
