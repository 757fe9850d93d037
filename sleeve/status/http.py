"""Local HTTP API (read-only status for now), on 127.0.0.1:6782 by default.

A deliberately tiny HTTP/1.0 responder on asyncio streams: one request per
connection, bounded request size, GET only. It never listens on a public
address unless the operator asks for one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

MAX_REQUEST = 8192


async def start_http(host: str, port: int,
                     routes: dict[str, Callable[[], tuple[str, bytes]]]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        parts = head.split(b"\r\n", 1)[0].split()
        path = parts[1].decode("latin-1").split("?")[0] if len(parts) >= 2 else ""
        route = routes.get(path)
        if len(parts) < 2 or parts[0] != b"GET":
            code, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
        elif route is None:
            code, ctype, body = "404 Not Found", "text/plain", b"not found\n"
        else:
            try:
                ctype, body = route()
                code = "200 OK"
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


def json_route(fn: Callable[[], Any]) -> Callable[[], tuple[str, bytes]]:
    return lambda: ("application/json", json.dumps(fn(), indent=1).encode() + b"\n")
