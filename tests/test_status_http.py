"""The local HTTP API on aiohttp, on a real loopback port and a unix socket (no root):
routes, bounds, read-only TCP, the socket's permissions, the /ui page and its event
stream."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import pathlib
import socket
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sleeve.status.client import ApiError, Endpoint, UnixHTTPConnection, call, read
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
from sleeve.status.unixsock import ApiSocket
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

    d = pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-"))
    seen["sock"] = str(d / "api.sock")

    async def main() -> None:
        srv = await start_http("127.0.0.1", 0, routes, streams,
                               ApiSocket(pathlib.Path(seen["sock"])))
        try:
            await body(srv, seen)
        finally:
            await asyncio.wait_for(srv.aclose(), 5)

    asyncio.run(main())
    return seen


def request(where: int | str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """On TCP port ``where``, or on the unix socket at path ``where``."""
    c = (UnixHTTPConnection(where, 5) if isinstance(where, str)
         else http.client.HTTPConnection("127.0.0.1", where, timeout=5))
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.getheader("Content-Type", ""), r.read()
    finally:
        c.close()


def test_routes_errors_and_post_actions() -> None:
    async def body(srv: HttpServer, seen: dict[str, Any]) -> None:
        p = seen["sock"]  # the unix socket takes everything; TCP: see test_tcp_is_read_only
        for where in (srv.port, p):
            st, ct, data = await asyncio.to_thread(request, where, "GET", "/status")
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
        st, _, _ = await asyncio.to_thread(request, seen["sock"], "POST", "/connect?peer=h",
                                           b"x" * (MAX_BODY + 1))
        assert st == 413
        st, _, _ = await asyncio.to_thread(request, seen["sock"], "POST", "/connect?peer=h",
                                           b"x" * 100)
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
        for where in (p, seen["sock"]):  # refused on both, whatever forwards to the socket
            st, _, _ = await asyncio.to_thread(request, where, "POST", "/connect?peer=h",
                                               headers={"Origin": "http://127.0.0.1:6782"})
            assert st == 403  # state never changes from a browser page, even our own
        # a cross-site form: a foreign Origin and a form content type (no CORS preflight)
        st, _, _ = await asyncio.to_thread(
            request, p, "POST", "/connect", b"peer=h",
            {"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"})
        assert st == 403
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


def test_tcp_is_read_only_and_changes_only_through_the_socket() -> None:
    """Whoever sends it, a state-changing method on TCP is refused before any route runs:
    one line that says where changes go."""
    async def body(srv: HttpServer, seen: dict[str, Any]) -> None:
        p = srv.port
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            st, ct, data = await asyncio.to_thread(request, p, method, "/connect?peer=h")
            assert (st, ct) == (403, "text/plain; charset=utf-8"), (method, st)
            assert data.count(b"\n") == 1 and b"read-only" in data and b"unix socket" in data
        assert seen["actions"] == []  # nothing changed
        st, _, _ = await asyncio.to_thread(request, seen["sock"], "POST", "/connect?peer=h")
        assert st == 200 and seen["actions"] == [{"peer": "h"}]
        # a reader that cannot open the socket (not root, another path) falls back to TCP
        gone = Endpoint(unix=seen["sock"] + ".gone")
        tcp = Endpoint(host="127.0.0.1", port=p)
        assert await asyncio.to_thread(read, gone, tcp, "/status") == {"name": "me"}
        with pytest.raises(ApiError) as ei:  # a change never does
            await asyncio.to_thread(call, gone, "POST", "/connect?peer=h")
        assert "no router API socket at" in str(ei.value)

    _serve(body)


def test_socket_is_root_only_and_replaces_only_a_stale_one() -> None:
    """0600 in a 0700 directory by default; 0660 in 0750 with a group; a live socket at
    the path is never taken over, a dead one is, and close removes only our own file."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-"))

    async def main() -> None:
        path = d / "run" / "api.sock"
        srv = await start_http(None, 0, {}, None, ApiSocket(path))
        try:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
            try:
                await start_http(None, 0, {}, None, ApiSocket(path))
                raise AssertionError("a second server took a live socket")
            except OSError as e:
                assert "another router" in str(e)
        finally:
            await srv.aclose()
        assert not path.exists()
        # a stale socket (a killed router) is replaced
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(path))
        stale.close()
        gid = os.getgid() if os.getgid() != 0 else 65534
        try:  # a group its members could not reach: said at start, not found out later
            await start_http(None, 0, {}, None, ApiSocket(path, gid))
            raise AssertionError("a directory the group cannot enter was accepted")
        except OSError as e:
            assert "members cannot reach" in str(e)
        # sleeve's own directory (the default /run/sleeve) follows the options
        srv = await start_http(None, 0, {}, None, ApiSocket(path, gid, manage_dir=True))
        try:
            st, dst = path.stat(), path.parent.stat()
            assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, gid)
            assert (stat.S_IMODE(dst.st_mode), dst.st_gid) == (0o750, gid)
        finally:
            await srv.aclose()
        # a directory others can write to is refused (they could swap the socket)
        shared = d / "shared"
        shared.mkdir()
        shared.chmod(0o777)
        try:
            await start_http(None, 0, {}, None, ApiSocket(shared / "api.sock"))
            raise AssertionError("a world-writable directory was accepted")
        except OSError as e:
            assert "writable by others" in str(e)

    asyncio.run(asyncio.wait_for(main(), 10))
