"""The local API's tables, without the server (``status.http``, aiohttp, loads only when
the API is served: 13.7 MB of RSS per router, issue 23).

``Route`` = query dict in, (content type, body) out, or an awaitable of it; ``EventStream``
a server-sent-events feed. ``status.http`` describes how both are served.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

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


def json_route(fn: Callable[[], Any]) -> Route:
    return lambda q: ("application/json", json.dumps(fn(), indent=1).encode() + b"\n")


def json_action(fn: Callable[[dict[str, str]], Any]) -> Route:
    return lambda q: ("application/json", json.dumps(fn(q)).encode() + b"\n")


def json_async_action(fn: Callable[[dict[str, str]], Awaitable[Any]]) -> Route:
    """An action that awaits (it bounds its own wait: raise ``Unavailable`` past it)."""
    async def run(q: dict[str, str]) -> Reply:
        return ("application/json", json.dumps(await fn(q)).encode() + b"\n")
    return run
