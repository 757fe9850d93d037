"""Plain-text rendering of the status JSON (what `sleeve status [WHAT]` prints)."""

from __future__ import annotations

from typing import Any


def table(rows: list[list[Any]], head: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *cells, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in cells]
    return "\n".join(lines)


def summary(s: dict[str, Any]) -> str:
    conns = s.get("connections", [])
    est = sum(1 for c in conns if c["state"] == "established")
    out = [
        f"        Name: {s['name']} ({s['nickname']})",
        f"  Encryption: {s['encryption']}",
        f"  Membership: {s.get('membership', 'unknown')}",
        f"        Port: {s['port']}   interface {s['interface']}   MTU {s['mtu']}",
        f"       Peers: {len(s.get('peers', []))}",
        f" Connections: {len(conns)} ({est} established, {len(conns) - est} pending)",
        f"     Targets: {len(s.get('targets', []))}   MACs: {len(s.get('macs', []))}",
        "     FastDP: " + _fastdp(s.get("fastdp")),
    ]
    if s.get("dns"):
        out.append("         DNS: " + _dns_line(s["dns"]))
    if s.get("ipam"):
        out.append("        IPAM: " + _ipam_line(s["ipam"]))
    if s.get("traversal"):
        out += ["   Traversal: " + _traversal_line(s["traversal"])]
    if s.get("drops"):
        out.append("       Drops: " + ", ".join(f"{k}={v}" for k, v in sorted(s["drops"].items())))
    if conns:
        out += ["", connections(s)]
    if (s.get("traversal") or {}).get("peers"):
        out += ["", punching(s)]
    return "\n".join(out)


def _traversal_line(t: dict[str, Any]) -> str:
    nat = t.get("nat") or {}
    pm = t.get("port_mapping") or {}
    hl = t.get("hop_limit") or {}
    if not t.get("enabled", True):
        return "hole punching off (--no-discovery)"
    kind = f"NAT {nat.get('kind', 'unknown')}"
    if nat.get("prediction"):
        kind += f" (predicted {nat['prediction']})"
    if not pm.get("enabled", False):
        mapping = "port mapping off"
    elif pm.get("mapped"):
        mapping = f"port mapping {pm.get('mapped')} by {pm.get('protocol')}"
    else:
        mapping = f"no port mapping ({pm.get('error') or pm.get('asking') or 'none yet'})"
    hop = (f"k_min {hl['k_min']}" if hl.get("k_min") is not None
           else f"hop limit unmeasured: {hl.get('why', '?')}")
    return f"{kind}; {mapping}; {hop}"


def punching(s: dict[str, Any]) -> str:
    """Per peer that needed hole punching: state, attempts, the last attempt's story."""
    rows, why = [], []
    for p in (s.get("traversal") or {}).get("peers", []):
        last = p["tried"][-1] if p.get("tried") else {}
        hv = last.get("hops") or {}
        nxt = p.get("next_attempt_in_s")
        rows.append([p["peer"], p["state"], f"{p.get('successes', 0)}/{p.get('attempts', 0)}",
                     last.get("result", "-"),
                     "-" if hv.get("ttl") is None else hv["ttl"],
                     f"{nxt} s" if nxt is not None else f"by {p.get('next_attempt_by', '-')}"])
        if last:
            why.append(f"  {p['peer']}: {last.get('plan')}"
                       + (f"; hop limit: {hv['why']}" if hv.get("why") else "")
                       + (f"; {last['prediction']}" if last.get("prediction") else "")
                       + (f"; {last['spray']}" if last.get("spray") else "")
                       + (f"; {last['limit']}" if last.get("limit") else ""))
    head = ["PUNCH PEER", "STATE", "OK/TRIED", "LAST RESULT", "TTL", "NEXT"]
    return "\n".join([table(rows, head), *why])


def _fastdp(f: dict[str, Any] | None) -> str:
    if not f:
        return "unknown"
    if f.get("active"):
        return f"active, {f.get('links_on_fastdp', 0)} link(s) on the kernel path"
    return ("available but unused: " if f.get("available") else "not in use: ") + str(f["reason"])


def _dns_line(d: dict[str, Any]) -> str:
    t = d.get("table", {})
    where = ", ".join(d.get("listen", [])) or "-"
    return (f"{d.get('state')} ({d.get('domain')} on {where}), {t.get('live', 0)} names live, "
            f"{len(t.get('origins', {}))} origin(s)")


def dns(s: dict[str, Any]) -> str:
    d = s.get("dns") or {}
    srv = d.get("server") or {}
    res = srv.get("resolver") or {}
    out = [f"       State: {d.get('state')}",
           f"      Domain: {d.get('domain')}   TTL {d.get('ttl')}s   "
           f"{'one address per answer' if d.get('one_address') else 'all addresses, shuffled'}",
           f"      Listen: {', '.join(d.get('listen', [])) or '-'}",
           f"   Upstreams: {', '.join(srv.get('upstreams', [])) or '-'}  (forwarding for "
           f"{', '.join(d.get('forward_to_clients_in', []))})"]
    if srv:
        ans = srv.get("answers", {})
        out.append("     Answers: " + (", ".join(f"{k}={v}" for k, v in sorted(ans.items()))
                                       or "none yet"))
        drops = {**res.get("drops", {}), **{k: v for k, v in srv.get("stats", {}).items()
                                            if k in ("forward_busy", "tcp_rejected",
                                                     "tcp_oversize")}}
        if drops:
            out.append("       Drops: " + ", ".join(f"{k}={v}" for k, v in sorted(drops.items())))
    rows = [[r["name"], r["address"], r["owner"], r["origin"], r["version"]]
            for r in d.get("records", [])]
    out += ["", table(rows, ["NAME", "ADDRESS", "ID", "ORIGIN", "VERSION"])]
    if d.get("records_truncated"):
        out.append("(more records: see sleeve status dns --json or GET /dns)")
    return "\n".join(out)


def _ipam_line(i: dict[str, Any]) -> str:
    c = i.get("consensus", {})
    return (f"{i.get('range')} ({c.get('mode')}: {c.get('state')}), "
            f"{len(i.get('allocations', []))} allocated here, {i.get('free_owned', 0)} free here, "
            f"{len(i.get('ring', []))} owner(s)"
            + (f", {len(i['conflicts'])} CONFLICT(S)" if i.get("conflicts") else ""))


def ipam(s: dict[str, Any]) -> str:
    i = s.get("ipam") or {}
    c = i.get("consensus", {})
    out = [f"       Range: {i.get('range')}   default subnet {i.get('default_subnet')}",
           f"   Consensus: {c.get('mode')}: {c.get('text')}",
           f"        Ring: {i.get('entries', 0)} entries, {len(i.get('ring', []))} owner(s)", ""]
    rows = [[p["peer"] + (" (self)" if p.get("self") else ""), p.get("nickname", ""),
             "yes" if p.get("reachable") else "NO", len(p["ranges"]), p["size"], p["free"],
             " ".join(f"{r['start']}-{r['end']}" for r in p["ranges"][:4])
             + (" ..." if len(p["ranges"]) > 4 else "")] for p in i.get("ring", [])]
    out += [table(rows, ["PEER", "NICK", "REACHABLE", "RANGES", "SIZE", "FREE", "FIRST RANGES"]),
            "", table([[a["id"], a["address"]] for a in i.get("allocations", [])],
                      ["ID", "ADDRESS"])]
    if i.get("pending"):
        out += ["", "Waiting:", table([[p["id"], p["subnet"], p["waiting"]] for p in i["pending"]],
                                      ["ID", "SUBNET", "WHY"])]
    if i.get("conflicts"):
        out += ["", "Conflicts (gossip refused):",
                table([[x["peer"], x["reason"], x["count"], x.get("detail", "")]
                       for x in i["conflicts"]], ["PEER", "REASON", "COUNT", "DETAIL"])]
    return "\n".join(out)


def connections(s: dict[str, Any]) -> str:
    rows = []
    for c in s.get("connections", []):
        k = c["counters"]
        drops = sum(v for key, v in k.items() if key.startswith("drop_"))
        rows.append([c["peer"], c["nickname"], c["direction"], c["udp"], c["state"], c["path"],
                     "yes" if c["encrypted"] else "NO", c.get("pmtu", ""),
                     "-" if c["rtt_ms"] is None else c["rtt_ms"],
                     f"{k.get('tx_packets', 0)}/{k.get('tx_bytes', 0)}",
                     f"{k.get('rx_packets', 0)}/{k.get('rx_bytes', 0)}", drops])
    out = table(rows, ["PEER", "NICK", "DIR", "UDP", "STATE", "PATH", "ENC", "PMTU", "RTT_MS",
                       "TX_PKTS/BYTES", "RX_PKTS/BYTES", "DROPS"])
    why = [f"  {c['nickname']}: {c['state']}: {c['reason']}" for c in s.get("connections", [])
           if c["state"] != "established"]
    why += [f"  {c['nickname']}: path {c['path']}: {c['path_reason']}"
            for c in s.get("connections", []) if c.get("path_reason")]
    return "\n".join([out, *why])


def render(what: str, s: dict[str, Any]) -> str:
    if what == "summary":
        return summary(s)
    if what == "connections":
        return connections(s)
    if what == "dns":
        return dns(s)
    if what == "ipam":
        return ipam(s)
    if what == "traversal":
        t = s.get("traversal") or {}
        return "\n".join(["   Traversal: " + _traversal_line(t), "", punching(s)])
    if what == "peers":
        return table([[p["peer"], p["nickname"], p["uid"], "yes" if p["self"] else "",
                       "yes" if p.get("direct") else "", len(p.get("connections", []))]
                      for p in s.get("peers", [])],
                     ["PEER", "NICK", "UID", "SELF", "DIRECT", "CONNECTIONS"])
    if what == "routes":
        nick = {p["peer"]: p["nickname"] for p in s.get("peers", [])}
        return table([[r["destination"], nick.get(r["destination"], ""),
                       "direct" if r["via"] == r["destination"] else
                       f"relayed via {nick.get(r['via'], r['via'])}", r["hops"], r["usable"]]
                      for r in s.get("routes", [])],
                     ["DESTINATION", "NICK", "PATH", "HOPS", "USABLE"])
    if what == "macs":
        return table([[m["mac"], m["peer"], m["age_s"]] for m in s.get("macs", [])],
                     ["MAC", "PEER", "AGE_S"])
    if what == "targets":
        return table([[t["target"], "yes" if t["connected"] else "no", t["attempts"],
                       t["retry_in_s"], t["last_error"]] for t in s.get("targets", [])],
                     ["TARGET", "CONNECTED", "ATTEMPTS", "RETRY_IN_S", "LAST_ERROR"])
    raise ValueError(what)
