"""Plain-text rendering of the status JSON (what `sleeve status` prints)."""

from __future__ import annotations

from typing import Any


def _table(rows: list[list[str]], head: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def render_status(s: dict[str, Any]) -> str:
    conns = s.get("connections", [])
    est = sum(1 for c in conns if c["state"] == "established")
    out = [
        f"        Name: {s['name']} ({s['nickname']})",
        f"  Encryption: {s['encryption']}",
        f"        Port: {s['port']}   interface {s['interface']}   MTU {s['mtu']}",
        f" Connections: {len(conns)} ({est} established, {len(conns) - est} pending)",
        f"     Targets: {len(s.get('targets', []))}   MACs: {len(s.get('macs', []))}",
    ]
    if s.get("drops"):
        out.append("       Drops: " + ", ".join(f"{k}={v}" for k, v in sorted(s["drops"].items())))
    if conns:
        rows = [[c["peer"], c["nickname"], c["direction"], c["udp"], c["state"], c["path"],
                 "yes" if c["encrypted"] else "NO", str(c["rtt_ms"]),
                 str(c["counters"].get("tx_packets", 0)), str(c["counters"].get("rx_packets", 0))]
                for c in conns]
        out += ["", _table(rows, ["PEER", "NICK", "DIR", "UDP", "STATE", "PATH", "ENC",
                                  "RTT_MS", "TX_PKTS", "RX_PKTS"])]
    return "\n".join(out)
