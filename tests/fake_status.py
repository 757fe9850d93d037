"""A status JSON for N peers without routers: the page's 100-peer test and the view tests.

``ServerThread`` serves it (/status, /ui, /ui/events) on 127.0.0.1 from a thread.
Shaped like ``Node.status()`` (only the keys the page and the view read). Peer ``p000``
is the local router; it has a direct link to the first ``direct`` peers (path kinds
cycling through udp / tcp / fastdp / pending) and reaches the others through them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from sleeve.status.http import HttpServer, start_http
from sleeve.status.routes import json_route
from sleeve.status.ui import topology_stream, ui_routes


def pid(i: int) -> str:
    return ":".join(f"{(i * 37 + k * 11) % 256:02x}" for k in range(7)) + f":{i % 256:02x}"


def fake_status(n: int = 100, direct: int = 12, counter_base: int = 0,
                with_ipam_dns: bool = True) -> dict[str, Any]:
    ids = [pid(i) for i in range(n)]
    me = ids[0]
    paths = ["sleeve", "tcp", "fastdp", "sleeve", "pending"]
    conns = []
    for i in range(1, min(direct, n - 1) + 1):
        kind = paths[i % len(paths)]
        conns.append({
            "peer": ids[i], "nickname": f"host{i:03d}", "direction": "outbound",
            "tcp": f"198.18.0.{i}:6783", "udp": f"198.18.0.{i}:6783",
            "state": "pending" if kind == "pending" else "established",
            "reason": "no authenticated UDP datagram from the peer yet" if kind == "pending"
            else "UDP heartbeats both ways",
            "rtt_ms": 0.3 + i / 10, "encrypted": True, "pmtu": 1438,
            "path": "sleeve" if kind == "pending" else kind,
            "path_reason": {"tcp": "over TCP: UDP does not get through",
                            "fastdp": "kernel VXLAN healthy"}.get(kind, "sleeve: not tried"),
            "counters": {"tx_bytes": counter_base * i, "rx_bytes": counter_base * 2 * i},
        })
    peers = []
    for i, p in enumerate(ids):
        nb = {(i + 1) % n, (i - 1) % n, (i + 7) % n}
        if i == 0:
            nb = set(range(1, min(direct, n - 1) + 1))
        peers.append({"peer": p, "nickname": f"host{i:03d}", "uid": 1000 + i, "version": 3,
                      "self": i == 0, "reachable": True, "direct": 0 < i <= direct,
                      "connections": [{"peer": ids[j], "addr": f"198.18.0.{j % 250}:6783",
                                       "outbound": j > i, "established": True}
                                      for j in sorted(nb) if j != i]})
    routes = [{"destination": ids[i], "via": ids[i] if i <= direct else ids[1 + i % direct],
               "hops": 1 if i <= direct else 2, "usable": True} for i in range(1, n)]
    st: dict[str, Any] = {
        "name": me, "nickname": "host000", "encryption": "enabled", "port": 6783,
        "interface": "sleeve0", "mtu": 1376, "uptime_s": 12.5, "connections": conns,
        "targets": [], "peers": peers, "routes": routes,
        "fastdp": {"available": True, "reason": "ok", "active": True, "links_on_fastdp": 2},
        "macs": [{"mac": "02:00:00:00:00:01", "peer": "local", "age_s": 1.0}],
        "drops": {"bad_type": 1}, "counters": {}, "pid": 1,
    }
    if with_ipam_dns:
        st["ipam"] = {"ring": [{"peer": p.replace(":", ""), "size": 256, "free": 200,
                                "ranges": [{"start": f"198.19.{i}.0", "end": f"198.19.{i}.255",
                                            "free": 200, "version": 1}]}
                               for i, p in enumerate(ids)]}
        st["dns"] = {"records": [{"name": f"web{i}.sleeve.local", "address": f"198.19.{i}.7",
                                  "origin": p.replace(":", ""), "tombstone": False}
                                 for i, p in enumerate(ids) if i % 3 == 0]}
    return st


class ServerThread:
    """The API on 127.0.0.1 in a thread of its own (Selenium calls block)."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.loop = asyncio.new_event_loop()
        self.srv: HttpServer | None = None
        ready = threading.Event()

        async def start() -> None:
            routes = {"GET /status": json_route(status), **ui_routes()}
            self.srv = await start_http("127.0.0.1", 0, routes,
                                        {"GET /ui/events": topology_stream(status, 0.5)})
            ready.set()

        self.thread = threading.Thread(target=self._run, args=(start(),), daemon=True)
        self.thread.start()
        assert ready.wait(10), "server did not start"

    def _run(self, start: Any) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(start)
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://{self.addr}/ui"

    @property
    def addr(self) -> str:
        assert self.srv is not None
        return f"127.0.0.1:{self.srv.port}"

    def close(self) -> None:
        assert self.srv is not None
        asyncio.run_coroutine_threadsafe(self.srv.aclose(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
