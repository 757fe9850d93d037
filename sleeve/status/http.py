"""Local HTTP API on aiohttp, on 127.0.0.1:6782 by default.

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

Bounds: request bodies (``client_max_size``), request line, header size and count
(aiohttp's parser limits), idle keep-alive. It never listens on a public address
unless the operator asks for one. Against DNS rebinding and cross-site requests
from a browser, the ``Host`` must be an address literal or ``localhost`` and
state-changing (non-GET) requests that carry an ``Origin`` header are refused:
the CLI sends none, and nothing the page serves may change state.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger("sleeve.http")

MAX_BODY = 16 * 1024  # POST actions take query strings; nothing needs a larger body
MAX_LINE = 4096  # request line (path + query)
MAX_FIELD = 4096  # one header
MAX_HEADERS = 32
KEEPALIVE = 30.0  # idle keep-alive connections close after this
WRITE_TIMEOUT = 10.0  # a stream client that cannot take one event in this long is dropped

Reply = tuple[str, bytes]
Route = Callable[[dict[str, str]], Reply | Awaitable[Reply]]


class Unavailable(Exception):
    """The action could not complete in time (503); ``str()`` is one line for the user."""


@dataclass
class EventStream:
    """A server-sent-events feed: ``snapshot()`` gives the data of one event (JSON-able).

    ``snapshot`` runs in the event loop, at most once per ``period`` however many
    clients listen; ``max_clients`` more are refused with 503.
    """

    snapshot: Callable[[], Any]
    period: float = 1.0
    max_clients: int = 8
    clients: int = 0
    _cached: bytes = b""
    _cached_at: float = field(default=-1e9)

    def event(self, now: float) -> bytes:
        if now - self._cached_at >= self.period * 0.5:
            data = json.dumps(self.snapshot(), separators=(",", ":"))
            self._cached, self._cached_at = f"data: {data}\n\n".encode(), now
        return self._cached


class HttpServer:
    """The running API; ``close()`` stops accepting and ends the streams, ``aclose()``
    also waits for the connections to finish (bounded by aiohttp's shutdown timeout)."""

    def __init__(self, runner: web.AppRunner, closing: asyncio.Event) -> None:
        self._runner = runner
        self._closing = closing

    @property
    def port(self) -> int:
        return int(self._runner.addresses[0][1])

    def close(self) -> None:
        self._closing.set()
        for site in self._runner.sites:
            server = site._server  # the asyncio server: stop accepting now, synchronously
            if server is not None:
                server.close()

    async def aclose(self) -> None:
        self.close()
        await self._runner.cleanup()


async def start_http(host: str, port: int, routes: dict[str, Route],
                     streams: dict[str, EventStream] | None = None) -> HttpServer:
    """Serve ``routes`` (and SSE ``streams``) keyed by "METHOD /path"."""
    streams = streams or {}
    closing = asyncio.Event()

    async def dispatch(request: web.Request) -> web.StreamResponse:
        refused = _refuse(request)
        if refused is not None:
            return _text(403, refused)
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

    runner = await serve(dispatch, lambda r: web.TCPSite(r, host, port, reuse_address=True))
    return HttpServer(runner, closing)


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


def _refuse(request: web.Request) -> str | None:
    """Why a request is refused before any route sees it (None: it may proceed)."""
    raw = request.headers.get("Host", "")
    host = (raw if raw.endswith("]") else raw.rsplit(":", 1)[0]).strip("[]")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return "Host must be an address or localhost"  # a rebound DNS name
    if request.method not in ("GET", "HEAD") and "Origin" in request.headers:
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


def json_route(fn: Callable[[], Any]) -> Route:
    return lambda q: ("application/json", json.dumps(fn(), indent=1).encode() + b"\n")


def json_action(fn: Callable[[dict[str, str]], Any]) -> Route:
    return lambda q: ("application/json", json.dumps(fn(q)).encode() + b"\n")


def json_async_action(fn: Callable[[dict[str, str]], Awaitable[Any]]) -> Route:
    """An action that awaits (it bounds its own wait: raise ``Unavailable`` past it)."""
    async def run(q: dict[str, str]) -> Reply:
        return ("application/json", json.dumps(await fn(q)).encode() + b"\n")
    return run
