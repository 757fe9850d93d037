"""`sleeve status --watch`: a live terminal table of the local router's links (rich).

One status request per period (bounded to MIN_PERIOD..MAX_PERIOD), redrawn in place;
the same path classification and throughput as the /ui page (TopologyView). Ctrl-C
ends it cleanly; a router that stops answering ends it with one line on stderr.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sleeve.status.topology import TopologyView

MIN_PERIOD = 0.5  # never hammer the router, whatever the user asks for
MAX_PERIOD = 60.0
STYLE = {"udp": "green", "fastdp": "blue", "tcp": "yellow", "relayed": "magenta",
         "pending": "dim", "down": "bold red", "mesh": "dim"}


def _rate(bps: float | None) -> str:
    if bps is None:
        return "-"
    for unit, div in (("Gb/s", 1e9), ("Mb/s", 1e6), ("kb/s", 1e3)):
        if bps >= div:
            return f"{bps / div:.1f} {unit}"
    return f"{bps:.0f} b/s"


def frame(view: dict[str, Any], url: str) -> Group:
    """One screen: a header line and the local router's links."""
    nodes = {n["id"]: n for n in view["nodes"]}
    me = nodes[view["self"]]
    st = view["status"]
    enc = str(view["encryption"])
    head = Text.assemble(
        (f"{me['nickname']} {view['self']}", "bold"), "  ",
        ("encryption " + enc, "green" if enc.startswith("enabled") else "bold red"),
        f"  {len(nodes)} peers  {len(st.get('connections', []))} connections  "
        f"uptime {st.get('uptime_s', '?')} s  ({url}, Ctrl-C to quit)")
    t = Table(expand=True, pad_edge=False)
    for col in ("PEER", "NICK", "PATH", "STATE", "RTT ms", "PMTU", "TX", "RX", "ENC", "WHY"):
        t.add_column(col, no_wrap=col != "WHY", overflow="fold")
    for e in view["edges"]:
        if not e["local"]:
            continue
        other = e["b"] if e["a"] == view["self"] else e["a"]
        enc_cell = "" if e.get("encrypted") is None else "yes" if e["encrypted"] else "NO"
        t.add_row(other, nodes.get(other, {}).get("nickname", ""),
                  Text(e["kind"], style=STYLE.get(e["kind"], "")), e.get("state") or "",
                  "-" if e.get("rtt_ms") is None else str(e["rtt_ms"]),
                  str(e.get("pmtu") or "-"), _rate(e.get("tx_bps")), _rate(e.get("rx_bps")),
                  enc_cell, e["reason"])
    return Group(head, t)


def watch(fetch: Callable[[], dict[str, Any]], url: str, period: float = 1.0,
          console: Console | None = None, max_frames: int | None = None) -> int:
    """Redraw until Ctrl-C (returns 0); whatever ``fetch`` raises (the router stopped
    answering) ends it, the terminal restored, for the caller to print in one line.
    ``max_frames`` bounds the loop for tests."""
    period = min(max(period, MIN_PERIOD), MAX_PERIOD)
    view = TopologyView()
    frames = 0
    try:
        first = view.update(fetch(), time.monotonic())  # unreachable: fail before drawing
        with Live(frame(first, url), console=console, auto_refresh=False,
                  transient=False) as live:
            while max_frames is None or frames < max_frames:
                time.sleep(period)
                live.update(frame(view.update(fetch(), time.monotonic()), url), refresh=True)
                frames += 1
    except KeyboardInterrupt:
        return 0
    return 0
