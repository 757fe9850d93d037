"""The local HTTP API on aiohttp, on a real loopback port (no root): routes, bounds, the
/ui page and its event stream."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sleeve.status.http import (
    MAX_BODY,
    MAX_HEADERS,
    MAX_LINE,
    EventStream,
    HttpServer,
    json_action,
    json_route,
    start_http,
)
from sleeve.status.ui import page, ui_routes
from tests.fake_status import fake_status


def _serve(body: Callable[[HttpServer, dict[str, Any]], Awaitable[None]],
           streams: dict[str, EventStream] | None = None) -> dict[str, Any]:
    seen: dict[str, Any] = {"actions": []}

    def boom() -> Any:
        raise KeyError("secret detail")

    def act(q: dict[str, str]) -> Any:
        if "peer" not in q:
            raise ValueError("give peer=HOST[:PORT]")
        seen["actions"].append(q)
        return {"added": [q["peer"]]}

    routes = {"GET /status": json_route(lambda: {"name": "me"}),
              "GET /boom": json_route(boom),
              "POST /connect": json_action(act), **ui_routes()}

    async def main() -> None:
        srv = await start_http("127.0.0.1", 0, routes, streams)
        try:
            await body(srv, seen)
        finally:
            await asyncio.wait_for(srv.aclose(), 5)

    asyncio.run(main())
    return seen


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.getheader("Content-Type", ""), r.read()
    finally:
        c.close()


def test_routes_errors_and_post_actions() -> None:
    async def body(srv: HttpServer, seen: dict[str, Any]) -> None:
        p = srv.port
        st, ct, data = await asyncio.to_thread(request, p, "GET", "/status")
        assert (st, ct, json.loads(data)) == (200, "application/json", {"name": "me"})
        st, _, data = await asyncio.to_thread(request, p, "POST", "/connect?peer=127.0.0.1:9")
        assert (st, json.loads(data)) == (200, {"added": ["127.0.0.1:9"]})
        assert seen["actions"] == [{"peer": "127.0.0.1:9"}]
        st, _, data = await asyncio.to_thread(request, p, "POST", "/connect")
        assert (st, data) == (400, b"give peer=HOST[:PORT]\n")
        st, _, data = await asyncio.to_thread(request, p, "GET", "/boom")
        assert (st, data) == (500, b"KeyError\n")  # no details of the failure leak out
        for method, path in (("GET", "/nope"), ("GET", "/connect"), ("POST", "/status"),
                             ("DELETE", "/status"), ("GET", "/ui/")):
            st, _, _ = await asyncio.to_thread(request, p, method, path)
            assert st == 404, (method, path, st)

    _serve(body)


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    def three(port: int) -> list[int]:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        out = []
        c.connect()
        sock = c.sock
        for _ in range(3):
            c.request("GET", "/status")
            r = c.getresponse()
            r.read()
            out.append(r.status)
            assert c.sock is sock  # the same TCP connection each time
        c.close()
        return out

    async def body(srv: HttpServer, seen: dict[str, Any]) -> None:
        assert await asyncio.to_thread(three, srv.port) == [200, 200, 200]

    _serve(body)


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        out = b""
        while b"\r\n" not in out and len(out) < 1 << 16:  # the status line is enough
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def test_request_size_bounds() -> None:
    async def body(srv: HttpServer, seen: dict[str, Any]) -> None:
        p = srv.port
        st, _, _ = await asyncio.to_thread(request, p, "POST", "/connect?peer=h",
                                           b"x" * (MAX_BODY + 1))
        assert st == 413
        st, _, _ = await asyncio.to_thread(request, p, "POST", "/connect?peer=h", b"x" * 100)
        assert st == 200
        long_line = b"GET /status?" + b"a" * (MAX_LINE + 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert (await asyncio.to_thread(raw, p, long_line)).split(b" ", 2)[1] in (b"400", b"414")
        big_header = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"y" * 10000 + b"\r\n\r\n"
        assert (await asyncio.to_thread(raw, p, big_header)).split(b" ", 2)[1] in (b"400", b"431")
        many = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
            b"X-%d: 1\r\n" % i for i in range(MAX_HEADERS + 5)) + b"\r\n"
        assert (await asyncio.to_thread(raw, p, many)).split(b" ", 2)[1] in (b"400", b"431")
        assert seen["actions"] == [{"peer": "h"}]  # nothing oversized reached the action

    _serve(body)


def test_browser_origin_and_rebinding_refused() -> None:
    async def body(srv: HttpServer, seen: dict[str, Any]) -> None:
        p = srv.port
        st, _, _ = await asyncio.to_thread(request, p, "GET", "/status",
                                           headers={"Host": "evil.example:6782"})
        assert st == 403  # a DNS name rebound to 127.0.0.1
        st, _, _ = await asyncio.to_thread(request, p, "POST", "/connect?peer=h",
                                           headers={"Origin": "http://127.0.0.1:6782"})
        assert st == 403  # state never changes from a browser page, even our own
        for host in (f"127.0.0.1:{p}", f"localhost:{p}", f"[::1]:{p}"):
            st, _, _ = await asyncio.to_thread(request, p, "GET", "/status",
                                               headers={"Host": host})
            assert st == 200, host
        assert seen["actions"] == []

    _serve(body)


def test_ui_page_is_self_contained_html() -> None:
    async def body(srv: HttpServer, seen: dict[str, Any]) -> None:
        st, ct, data = await asyncio.to_thread(request, srv.port, "GET", "/ui")
        assert (st, ct) == (200, "text/html; charset=utf-8")
        assert data == page() and b"<svg" in data and b"EventSource(\"/ui/events\")" in data
        text = data.decode()
        # nothing fetched from elsewhere: the only URL is the SVG namespace name
        assert text.count("http://") == text.count("http://www.w3.org/2000/svg")
        assert "https://" not in text and "@import" not in text and "<script src" not in text
        assert ".innerHTML" not in text  # peer-chosen nicknames go in as text only

    _serve(body)


def read_events(port: int, n: int, path: str = "/ui/events") -> tuple[int, list[Any]]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        if r.status != 200:
            r.read()
            return r.status, []
        assert r.getheader("Content-Type") == "text/event-stream"
        out: list[Any] = []
        for _ in range(1000):  # bounded: a few lines per event
            line = r.fp.readline()
            if line.startswith(b"data: "):
                out.append(json.loads(line[6:]))
                if len(out) == n:
                    break
        return 200, out
    finally:
        c.close()


def test_event_stream_pushes_topology_shared_and_bounded() -> None:
    calls = []
    base = [0]

    def status() -> dict[str, Any]:
        calls.append(time.monotonic())
        base[0] += 125_000  # every snapshot: 125 kB more per link index
        return fake_status(20, direct=4, counter_base=base[0])

    from sleeve.status.ui import topology_stream

    stream = topology_stream(status, period=0.2, max_clients=2)

    async def body(srv: HttpServer, seen: dict[str, Any]) -> None:
        p = srv.port
        t = time.monotonic()
        (st1, ev1), (st2, ev2) = await asyncio.gather(
            asyncio.to_thread(read_events, p, 4), asyncio.to_thread(read_events, p, 4))
        took = time.monotonic() - t
        assert st1 == st2 == 200 and len(ev1) == len(ev2) == 4
        assert 0.5 < took < 3  # one event per period, the first at once
        first, last = ev1[0], ev1[-1]
        assert len(first["nodes"]) == 20 and first["self"] == first["nodes"][0]["id"]
        kinds = {e["b"]: e["kind"] for e in last["edges"] if e["local"]}
        assert sorted(set(kinds.values())) == ["fastdp", "pending", "relayed", "tcp", "udp"]
        # throughput from counters between updates: about 125 kB * 8 * index per period
        e1 = next(e for e in last["edges"] if e["kind"] == "tcp")
        assert e1["tx_bps"] is not None and e1["tx_bps"] > 1e6
        # two clients share one snapshot per period: not one status() per client per event
        assert len(calls) <= 6, len(calls)
        # a third client while two listen is refused, and the count recovers afterwards
        await until(lambda: stream.clients == 0)  # closed readers are noticed at the next write
        blocker = asyncio.gather(asyncio.to_thread(read_events, p, 8),
                                 asyncio.to_thread(read_events, p, 8))
        await until(lambda: stream.clients == 2)
        st3, _ = await asyncio.to_thread(read_events, p, 1)
        assert st3 == 503
        assert [s for s, _ in await blocker] == [200, 200]
        await until(lambda: stream.clients == 0)

    _serve(body, {"GET /ui/events": stream})


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


def test_close_ends_open_streams_promptly() -> None:
    stream = EventStream(lambda: {"x": 1}, period=0.2)

    async def main() -> None:
        srv = await start_http("127.0.0.1", 0, {}, {"GET /ev": stream})
        reader = asyncio.create_task(asyncio.to_thread(read_events, srv.port, 10_000, "/ev"))
        await until(lambda: stream.clients == 1)
        t = time.monotonic()
        await asyncio.wait_for(srv.aclose(), 5)
        assert time.monotonic() - t < 2
        status, events = await asyncio.wait_for(reader, 5)
        assert status == 200 and 0 < len(events) < 10_000

    asyncio.run(main())
