"""Local HTTP API (read-only status for now), on 127.0.0.1:6782 by default.

A deliberately tiny HTTP/1.0 responder on asyncio streams: one request per
connection, bounded request size, GET only. It never listens on a public
address unless the operator asks for one.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Callable
from typing import Any

MAX_REQUEST = 8192


Route = Callable[[dict[str, str]], tuple[str, bytes]]


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
                ctype, body = route(dict(urllib.parse.parse_qsl(qs)))
                code = "200 OK"
            except ValueError as e:  # the caller's mistake: say what it was
                code, ctype, body = "400 Bad Request", "text/plain", f"{e}\n".encode()
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
