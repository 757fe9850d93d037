"""UPnP IGD client: find the gateway's WANIPConnection service and ask it for a UDP mapping.

Used when the gateway answers neither PCP nor NAT-PMP. Three steps, each bounded in
time (``TIMEOUT`` s) and size (``MAX_BODY`` bytes), plain asyncio (no HTTP library: an
HTTP/1.0 request, ``Connection: close``, read to the end)::

    1. SSDP M-SEARCH to 239.255.255.250:1900 out of our LAN interface (hop limit 2):
       only answers from the gateway itself count, and only a LOCATION on the gateway
    2. GET LOCATION (the root description): the controlURL of WANIPConnection:2/:1 or
       WANPPPConnection:1
    3. SOAP to the controlURL: GetExternalIPAddress, AddPortMapping (UDP, our port,
       lease), DeletePortMapping on shutdown

Everything here comes from the LAN unauthenticated. The XML is parsed with the
standard library's ElementTree only after refusing any document with a DOCTYPE: no
DTD means no entity definitions, so no entity expansion ("billion laughs") and no
external entities, which is what defusedxml's ``forbid_dtd`` does (defusedxml is not
a dependency; a UPnP description never needs a DTD). Failures raise ``IgdError``
whose message is a short reason (the caller counts ``upnp_bad_<reason>`` or shows it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

SSDP = ("239.255.255.250", 1900)
TIMEOUT = 3.0  # s per step
MAX_BODY = 65536  # a root description is a few KiB
MAX_SSDP_REPLIES = 16  # answers read per search (anything else on the LAN is ignored)
SERVICES = ("urn:schemas-upnp-org:service:WANIPConnection:2",
            "urn:schemas-upnp-org:service:WANIPConnection:1",
            "urn:schemas-upnp-org:service:WANPPPConnection:1")
SEARCH_TARGET = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"


class IgdError(Exception):
    """UPnP IGD step failed; the message is a short snake_case reason."""


@dataclass(frozen=True)
class Service:
    host: str  # the gateway (IPv4), checked equal to the SSDP answer's source
    port: int
    control_path: str
    service_type: str


def msearch() -> bytes:
    return ("M-SEARCH * HTTP/1.1\r\n"
            f"HOST: {SSDP[0]}:{SSDP[1]}\r\n"
            'MAN: "ssdp:discover"\r\n'
            "MX: 1\r\n"
            f"ST: {SEARCH_TARGET}\r\n\r\n").encode()


def location_of(reply: bytes, gateway: str) -> tuple[str, int, str] | None:
    """(host, port, path) of an SSDP answer's LOCATION when it points at ``gateway``."""
    m = re.search(rb"^location:[ \t]*(\S+)", reply[:2048], re.I | re.M)
    if m is None:
        return None
    try:
        u = urllib.parse.urlsplit(m.group(1).decode("ascii"))
        port = u.port or 80
    except (UnicodeDecodeError, ValueError):
        return None
    if u.scheme != "http" or u.hostname != gateway:
        return None  # a LAN host pointing us elsewhere: the mapping must be on our gateway
    return gateway, port, u.path or "/"


class _Answers(asyncio.DatagramProtocol):
    """SSDP answers, bounded: at most MAX_SSDP_REPLIES kept, the rest dropped."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue(MAX_SSDP_REPLIES)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if not self.q.full():
            self.q.put_nowait((data[:2048], str(addr[0])))


async def discover(local_ip: str, gateway: str) -> tuple[str, int, str]:
    """The gateway's root description URL (host, port, path) via SSDP."""
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.bind((local_ip, 0))
        # out of the interface toward the gateway (there may be no multicast route), and
        # no further than the next router
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local_ip))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
        # a datagram endpoint, not loop.sock_sendto: uvloop does not implement that
        transport, proto = await loop.create_datagram_endpoint(_Answers, sock=s)
    except OSError as e:
        s.close()
        raise IgdError("ssdp_socket") from e
    try:
        transport.sendto(msearch(), SSDP)
        end = loop.time() + TIMEOUT
        for _ in range(MAX_SSDP_REPLIES):
            left = end - loop.time()
            if left <= 0:
                break
            try:
                data, src = await asyncio.wait_for(proto.q.get(), left)
            except TimeoutError:
                break
            loc = location_of(data, gateway) if src == gateway else None
            if loc is not None:
                return loc
        raise IgdError("no_ssdp_answer")
    finally:
        transport.close()


async def http(host: str, port: int, method: str, path: str, body: bytes = b"",
               headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One HTTP/1.0 exchange, bounded; (status, body)."""
    try:
        return await asyncio.wait_for(_http(host, port, method, path, body, headers or {}),
                                      TIMEOUT)
    except TimeoutError as e:
        raise IgdError("http_timeout") from e
    except OSError as e:
        raise IgdError("http_connect") from e


async def _http(host: str, port: int, method: str, path: str, body: bytes,
                headers: dict[str, str]) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = [f"{method} {path} HTTP/1.0", f"Host: {host}:{port}", "Connection: close",
                *(f"{k}: {v}" for k, v in headers.items())]
        if body:
            head.append(f"Content-Length: {len(body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        data = bytearray()
        while chunk := await reader.read(8192):
            data += chunk
            if len(data) > MAX_BODY + 4096:
                raise IgdError("too_long")
    finally:
        writer.close()
    sep = data.find(b"\r\n\r\n")
    if sep < 0:
        raise IgdError("bad_http")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    if m is None:
        raise IgdError("bad_http")
    hdrs, payload = bytes(data[:sep]), bytes(data[sep + 4:])
    if re.search(rb"^transfer-encoding:[ \t]*chunked", hdrs, re.I | re.M):
        payload = _dechunk(payload)
    return int(m.group(1)), payload


def _dechunk(data: bytes) -> bytes:
    out, i = bytearray(), 0
    while True:
        j = data.find(b"\r\n", i)
        if j < 0:
            raise IgdError("bad_chunk")
        try:
            n = int(data[i:j].split(b";")[0], 16)
        except ValueError as e:
            raise IgdError("bad_chunk") from e
        if n == 0:
            return bytes(out)
        out += data[j + 2:j + 2 + n]
        i = j + 2 + n + 2


def parse_xml(body: bytes) -> ET.Element:
    """ElementTree of an untrusted document, refused if it has a DTD (see the docstring)."""
    if len(body) > MAX_BODY:
        raise IgdError("too_long")
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise IgdError("dtd")
    try:
        return ET.fromstring(body)
    except ET.ParseError as e:
        raise IgdError("bad_xml") from e


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def control_url(desc: bytes, host: str, port: int) -> Service:
    """The WAN connection service in a root description; its controlURL on ``host``."""
    root = parse_xml(desc)
    found: dict[str, str] = {}
    for svc in root.iter():
        if _local(svc.tag) != "service":
            continue
        fields = {_local(c.tag): (c.text or "").strip() for c in svc}
        st, url = fields.get("serviceType", ""), fields.get("controlURL", "")
        if st in SERVICES and url and st not in found:
            found[st] = url
    for st in SERVICES:
        if st in found:
            u = urllib.parse.urlsplit(found[st])
            if u.scheme and (u.scheme != "http" or u.hostname != host):
                raise IgdError("control_elsewhere")
            return Service(host, u.port or port if u.scheme else port, u.path or "/", st)
    raise IgdError("no_wan_service")


def soap_body(service_type: str, action: str, args: dict[str, str]) -> bytes:
    from xml.sax.saxutils import escape
    inner = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in args.items())
    return ('<?xml version="1.0"?>\r\n'
            '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
            f'<u:{action} xmlns:u="{service_type}">{inner}</u:{action}>'
            "</s:Body></s:Envelope>").encode()


async def soap(svc: Service, action: str, args: dict[str, str]) -> dict[str, str]:
    """Call ``action``; the response's arguments by name, or IgdError(upnp_error_<code>)."""
    status, body = await http(svc.host, svc.port, "POST", svc.control_path,
                              soap_body(svc.service_type, action, args),
                              {"Content-Type": 'text/xml; charset="utf-8"',
                               "SOAPAction": f'"{svc.service_type}#{action}"'})
    if status != 200 and not body.strip():
        raise IgdError(f"http_{status}")
    root = parse_xml(body)
    values = {_local(e.tag): (e.text or "").strip() for e in root.iter()}
    if status != 200:  # a SOAP fault: UPnPError's errorCode says why (718: port taken)
        code = values.get("errorCode", "")
        raise IgdError(f"upnp_error_{code}" if code.isdigit() and len(code) < 6
                       else f"http_{status}")
    return values


@dataclass(frozen=True)
class Mapping:
    external_ip: str
    external_port: int
    lifetime: int


async def find(local_ip: str, gateway: str) -> Service:
    host, port, path = await discover(local_ip, gateway)
    status, desc = await http(host, port, "GET", path)
    if status != 200:
        raise IgdError(f"http_{status}")
    return control_url(desc, host, port)


async def add_mapping(svc: Service, local_ip: str, port: int, external: int,
                      lifetime: int) -> Mapping:
    """AddPortMapping UDP ``external`` -> ``local_ip``:``port``, then the external address."""
    await soap(svc, "AddPortMapping", {
        "NewRemoteHost": "", "NewExternalPort": str(external), "NewProtocol": "UDP",
        "NewInternalPort": str(port), "NewInternalClient": local_ip, "NewEnabled": "1",
        "NewPortMappingDescription": "sleeve", "NewLeaseDuration": str(lifetime)})
    ext = (await soap(svc, "GetExternalIPAddress", {})).get("NewExternalIPAddress", "")
    try:
        ipaddress.IPv4Address(ext)
    except ValueError as e:
        raise IgdError("bad_external") from e
    return Mapping(ext, external, lifetime)


async def delete_mapping(svc: Service, external: int) -> None:
    await soap(svc, "DeletePortMapping", {"NewRemoteHost": "", "NewExternalPort": str(external),
                                          "NewProtocol": "UDP"})
