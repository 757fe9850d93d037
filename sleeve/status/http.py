"""Local HTTP API on aiohttp, on 127.0.0.1:6782 by default.

Imported only when the API is served (``--http`` or ``--api-socket``): the tables,
``Route`` and ``EventStream`` live in ``status.routes``, which needs no aiohttp.

Two kinds of endpoint, both plain tables keyed by "METHOD /path":

- ``routes``: ``Route`` = query dict in, (content type, body) out, called in the
  event loop (they read the router's live state, so no thread). ``ValueError``
  becomes 400 with its message (the caller's mistake); any other exception 500
  with only the exception's class name (a status bug must not leak internals or
  take the router down).
- ``streams``: server-sent events (the topology page). One bounded stream per
  client, at most ``EventStream.max_clients`` at once, one event per ``period``
  from a snapshot shared by every client (computed at most once per period, so
  N browsers never multiply the status work).

A route may return an awaitable: an action that must wait for the mesh (an IPAM
allocation) awaits without holding up the loop and bounds its own wait, raising
``Unavailable`` (503 with its text) past it.

Two sites serve the same tables:

- TCP (``--http``, 127.0.0.1:6782): read-only. GET and HEAD only; any other method is
  403 with a one-line reason before a route sees it, whoever sends it. Any local user
  and any web page the operator's browser opens can reach a loopback port.
- the unix socket (``--api-socket``, /run/sleeve/sleeve.sock): everything, including
  the POST actions. Only root (or ``--api-group``) can connect: see ``unixsock``.
  Each state change is logged with the caller's uid and pid.

Bounds: request bodies (``client_max_size``), request line, header size and count
(aiohttp's parser limits), idle keep-alive. It never listens on a public address
unless the operator asks for one. Against DNS rebinding and cross-site requests
from a browser, the ``Host`` must be an address literal or ``localhost``, and
non-GET requests that carry an ``Origin`` header are refused on both sites (defense
in depth: the CLI sends none, and nothing the page serves may change state).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable

from sleeve.lazypkg import defer_package
from sleeve.status.routes import (
    EventStream,
    Reply,
    Route,
    Unavailable,
    json_action,
    json_async_action,
    json_route,
)
from sleeve.status.unixsock import ApiSocket, bind_api_socket, peer_cred, remove_socket

defer_package("aiohttp", version=True)  # aiohttp's __init__ loads the client too: 4.3 MB
from aiohttp import web  # noqa: E402

__all__ = ["EventStream", "HttpServer", "Reply", "Route", "Unavailable", "json_action",
           "json_async_action", "json_route", "serve", "start_http"]

log = logging.getLogger("sleeve.http")

MAX_BODY = 16 * 1024  # POST actions take query strings; nothing needs a larger body
MAX_LINE = 4096  # request line (path + query)
MAX_FIELD = 4096  # one header
MAX_HEADERS = 32
KEEPALIVE = 30.0  # idle keep-alive connections close after this
WRITE_TIMEOUT = 10.0  # a stream client that cannot take one event in this long is dropped
READ_ONLY = ("GET", "HEAD")

class HttpServer:
    """The running API; ``close()`` stops accepting and ends the streams, ``aclose()``
    also waits for the connections to finish (bounded by aiohttp's shutdown timeout)
    and removes the unix socket file."""

    def __init__(self, closing: asyncio.Event) -> None:
        self._closing = closing
        self._tcp: web.AppRunner | None = None
        self._runners: list[web.AppRunner] = []
        self._unix: tuple[ApiSocket, int] | None = None

    @property
    def port(self) -> int:
        assert self._tcp is not None, "no TCP site"
        return int(self._tcp.addresses[0][1])

    def close(self) -> None:
        self._closing.set()
        for runner in self._runners:
            for site in runner.sites:
                server = site._server  # the asyncio server: stop accepting now, synchronously
                if server is not None:
                    server.close()

    async def aclose(self) -> None:
        self.close()
        for runner in self._runners:
            await runner.cleanup()
        if self._unix is not None:
            remove_socket(self._unix[0].path, self._unix[1])


async def start_http(host: str | None, port: int, routes: dict[str, Route],
                     streams: dict[str, EventStream] | None = None,
                     unix: ApiSocket | None = None) -> HttpServer:
    """Serve ``routes`` (and SSE ``streams``) keyed by "METHOD /path": read-only on TCP
    ``host:port`` (None: no TCP), everything on the unix socket ``unix`` (None: none)."""
    srv = HttpServer(asyncio.Event())
    try:
        if host is not None:
            srv._tcp = await serve(_dispatcher(routes, streams or {}, srv._closing, False),
                                   lambda r: web.TCPSite(r, host, port, reuse_address=True))
            srv._runners.append(srv._tcp)
        if unix is not None:
            sock, ino = bind_api_socket(unix)
            srv._unix = (unix, ino)
            try:
                runner = await serve(_dispatcher(routes, streams or {}, srv._closing, True),
                                     lambda r: web.SockSite(r, sock))
            except BaseException:
                sock.close()
                raise
            srv._runners.append(runner)
    except BaseException:
        await srv.aclose()
        raise
    return srv


def _dispatcher(routes: dict[str, Route], streams: dict[str, EventStream],
                closing: asyncio.Event, writable: bool,
                ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """One site's handler: ``writable`` only for the unix socket."""
    async def dispatch(request: web.Request) -> web.StreamResponse:
        refused = _refuse(request, writable)
        if refused is not None:
            return _text(403, refused)
        if request.method not in READ_ONLY:
            cred = peer_cred(request.transport.get_extra_info("socket")
                             if request.transport is not None else None)
            log.info("api: %s %s by uid %s pid %s", request.method, request.raw_path[:200],
                     *(cred[1], cred[0]) if cred else ("?", "?"))
        key = f"{request.method} {request.path}"
        stream = streams.get(key)
        if stream is not None:
            return await _serve_stream(request, stream, closing)
        route = routes.get(key)
        if route is None:
            return _text(404, "not found")
        if request.can_read_body:
            await request.read()  # bounded by client_max_size (413 beyond it)
        try:
            res = route({k: v for k, v in request.query.items()})
            if inspect.isawaitable(res):
                res = await res
            ctype, body = res
        except ValueError as e:  # the caller's mistake: say what it was
            return _text(400, str(e))
        except Unavailable as e:  # the mesh did not answer in time
            return _text(503, str(e))
        except Exception as e:  # a status bug must not take the router down
            log.exception("HTTP %s failed", key)
            return _text(500, type(e).__name__)
        return web.Response(status=200, body=body, headers={"Content-Type": ctype})

    return dispatch


async def serve(dispatch: Callable[[web.Request], Awaitable[web.StreamResponse]],
                site: Callable[[web.AppRunner], web.BaseSite], *, max_body: int = MAX_BODY,
                max_line: int = MAX_LINE, max_field: int = MAX_FIELD,
                max_headers: int = MAX_HEADERS, keepalive: float = KEEPALIVE) -> web.AppRunner:
    """Every request to ``dispatch``, within the bounds given, on the site ``site(runner)``
    makes (TCP for the local API, a unix socket for the Docker plugin); nothing is left
    running when the start fails."""
    app = web.Application(client_max_size=max_body)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0,
                           keepalive_timeout=keepalive, max_line_size=max_line,
                           max_field_size=max_field, max_headers=max_headers)
    await runner.setup()
    try:
        await site(runner).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def _text(status: int, msg: str) -> web.Response:
    return web.Response(status=status, text=msg + "\n", content_type="text/plain")


def _refuse(request: web.Request, writable: bool) -> str | None:
    """Why a request is refused before any route sees it (None: it may proceed)."""
    raw = request.headers.get("Host", "")
    host = (raw if raw.endswith("]") else raw.rsplit(":", 1)[0]).strip("[]")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return "Host must be an address or localhost"  # a rebound DNS name
    if request.method in READ_ONLY:
        return None
    if not writable:
        return ("the TCP API is read-only: changes go through the router's unix socket "
                "(--api-socket; the sleeve CLI as root)")
    if "Origin" in request.headers:
        return "state-changing requests from a browser page are refused"
    return None


async def _serve_stream(request: web.Request, stream: EventStream,
                        closing: asyncio.Event) -> web.StreamResponse:
    if stream.clients >= stream.max_clients:
        return _text(503, f"too many event streams (at most {stream.max_clients})")
    stream.clients += 1
    try:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store"})
        await resp.prepare(request)
        # a client that was refused or lost its stream retries after this long, not at once
        await resp.write(b"retry: 2000\n\n")
        while not closing.is_set():
            try:
                data = stream.event(time.monotonic())
            except Exception:  # a status bug ends this stream, never the router
                log.exception("event stream %s failed", request.path)
                break
            try:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await resp.write(data)
            except (ConnectionError, TimeoutError):
                break  # the client went away or stopped reading
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(stream.period):
                    await closing.wait()
        return resp
    finally:
        stream.clients -= 1
