"""Local HTTP API (status, and the few actions the CLI drives), on 127.0.0.1:6782 by default.

A deliberately tiny HTTP/1.0 responder on asyncio streams: one request per
connection, bounded request size. It never listens on a public address unless the
operator asks for one. A handler returns ``(content type, body)`` or an awaitable of
it: an action that must wait for the mesh (an IPAM allocation) awaits without holding
up the loop, and bounds its own wait. Errors: ``ValueError`` -> 400 with its text (the
caller's mistake), ``Unavailable`` -> 503 with its text (the mesh did not answer in
time), anything else -> 500 with the exception's type only.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

MAX_REQUEST = 8192


Reply = tuple[str, bytes]
Route = Callable[[dict[str, str]], Reply | Awaitable[Reply]]


class Unavailable(Exception):
    """The action could not complete in time (503); ``str()`` is one line for the user."""


async def start_http(host: str, port: int, routes: dict[str, Route]) -> asyncio.Server:
    """Serve ``routes`` keyed by "METHOD /path"; handlers get the query string as a dict."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        parts = head.split(b"\r\n", 1)[0].split()
        target = parts[1].decode("latin-1") if len(parts) >= 2 else ""
        path, _, qs = target.partition("?")
        route = routes.get(f"{parts[0].decode('latin-1')} {path}") if parts else None
        if route is None:
            code, ctype, body = "404 Not Found", "text/plain", b"not found\n"
        else:
            try:
                res = route(dict(urllib.parse.parse_qsl(qs)))
                if inspect.isawaitable(res):
                    res = await res
                ctype, body = res
                code = "200 OK"
            except ValueError as e:  # the caller's mistake: say what it was
                code, ctype, body = "400 Bad Request", "text/plain", f"{e}\n".encode()
            except Unavailable as e:
                code, ctype, body = "503 Service Unavailable", "text/plain", f"{e}\n".encode()
            except Exception as e:  # a status bug must not take the router down
                code, ctype, body = "500 Internal Server Error", "text/plain", \
                    f"{type(e).__name__}\n".encode()
        writer.write(f"HTTP/1.0 {code}\r\nContent-Type: {ctype}\r\nContent-Length: "
                     f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        try:
            await writer.drain()
        except OSError:
            pass
        writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST, reuse_address=True)


def json_route(fn: Callable[[], Any]) -> Route:
    return lambda q: ("application/json", json.dumps(fn(), indent=1).encode() + b"\n")


def json_action(fn: Callable[[dict[str, str]], Any]) -> Route:
    return lambda q: ("application/json", json.dumps(fn(q)).encode() + b"\n")


def json_async_action(fn: Callable[[dict[str, str]], Awaitable[Any]]) -> Route:
    """An action that awaits (it bounds its own wait: raise ``Unavailable`` past it)."""
    async def run(q: dict[str, str]) -> Reply:
        return ("application/json", json.dumps(await fn(q)).encode() + b"\n")
    return run
