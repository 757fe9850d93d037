"""The topology page: ``GET /ui`` (one self-contained HTML file shipped as package data)
and ``GET /ui/events`` (server-sent events carrying :class:`TopologyView` updates).

Read-only: the page only reads these two endpoints; nothing it serves changes state.
"""

from __future__ import annotations

import importlib.resources
import time
from collections.abc import Callable
from typing import Any

from sleeve.status.routes import EventStream, Route
from sleeve.status.topology import TopologyView

PERIOD = 1.0  # one update a second: live enough to watch, cheap at 100 peers
MAX_CLIENTS = 8  # browsers open at once; more get 503 (and retry after 2 s)


def page() -> bytes:
    return importlib.resources.files("sleeve.status").joinpath("ui.html").read_bytes()


def page_route() -> Route:
    html = page()  # read once: it never changes while the router runs
    return lambda q: ("text/html; charset=utf-8", html)


def topology_stream(status: Callable[[], dict[str, Any]], period: float = PERIOD,
                    max_clients: int = MAX_CLIENTS,
                    clock: Callable[[], float] = time.monotonic) -> EventStream:
    view = TopologyView()
    return EventStream(lambda: view.update(status(), clock()), period, max_clients)


def ui_routes() -> dict[str, Route]:
    return {"GET /ui": page_route()}


def ui_streams(status: Callable[[], dict[str, Any]]) -> dict[str, EventStream]:
    return {"GET /ui/events": topology_stream(status)}
