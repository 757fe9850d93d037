"""`sleeve demo`: a guided tour on one machine, in network namespaces, in under a minute.

Builds a small lab, launches encrypted routers exactly as a user would, shows
them finding each other (one host sits behind a NAT gateway and can only dial
out), runs pings and an integrity-checked transfer with live progress, prints
the status tables, then tears everything down.

Underlay 198.18.0.0/16, overlay 198.19.0.0/16; nothing leaves the lab.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from sleeve.crypto.kdf import random_secret

TRANSFER = 30_000_000


def _say(msg: str) -> None:
    print(msg, flush=True)


def _step(n: int, msg: str) -> None:
    _say(f"\n\033[1m[{n}] {msg}\033[0m" if sys.stdout.isatty() else f"\n[{n}] {msg}")


def _bar(done: int, total: int, width: int = 30) -> str:
    k = min(width, int(width * done / total)) if total else width
    return "[" + "#" * k + "." * (width - k) + f"] {done / 1e6:5.1f}/{total / 1e6:.0f} MB"


def run_demo() -> int:
    if os.geteuid() != 0:
        print("sleeve: error: sleeve demo must run as root (it builds network namespaces)",
              file=sys.stderr)
        return 1
    from sleeve.lab import Lab, LabError
    from sleeve.lab.routers import Router, established_with, workdir
    from sleeve.lab.traffic import expected_digest, tcp_transfer

    t0 = time.monotonic()
    try:
        lab = Lab()
    except LabError as e:
        print(f"sleeve: error: {e}", file=sys.stderr)
        return 1
    with lab:
        _step(1, "Building the lab: site 1 (hosts a, b), host c behind a NAT gateway, and host d "
                 "behind a 1280-byte MTU link whose direct path to b is firewalled")
        site = lab.switch("site")
        a, b = lab.host("a"), lab.host("b")
        lab.connect(a, site, "198.18.0.1/24")
        lab.connect(b, site, "198.18.0.2/24")
        gw, c = lab.router("gw"), lab.host("c")
        gw_out = lab.connect(gw, site, "198.18.0.254/24")
        gw_in, _ = lab.link(gw, c, "198.18.10.1/24", "198.18.10.2/24")
        lab.nat(gw, gw_in, gw_out)
        c.route("198.18.0.0/24", "198.18.10.1")
        wan, d = lab.router("wan"), lab.host("d")
        lab.connect(wan, site, "198.18.0.253/24")
        lab.link(wan, d, "198.18.11.1/24", "198.18.11.2/24", mtu=1280)
        d.route("198.18.0.0/24", "198.18.11.1")
        for h in (a, b, gw):
            h.route("198.18.11.0/24", "198.18.0.253")
        c.route("198.18.11.0/24", "198.18.10.1")
        d.block("198.18.0.2")  # d <-> b: a firewall drops everything
        _say("    a 198.18.0.1, b 198.18.0.2 on one switch; c 198.18.10.2 behind NAT "
             "(gw masquerades as 198.18.0.254); nothing can dial c")
        _say("    d 198.18.11.2 behind a router on a 1280-byte MTU link; a firewall blocks d <-> b")

        _step(2, "Launching encrypted routers (password from `sleeve keygen`)")
        secret = random_secret()
        wd = workdir("sleeve-demo-")
        rb = Router(b, ["--ip", "198.19.0.2/24"], wd, secret)
        ra = Router(a, ["--ip", "198.19.0.1/24", "198.18.0.2"], wd, secret)
        rc = Router(c, ["--ip", "198.19.0.3/24", "198.18.0.2"], wd, secret)
        rd = Router(d, ["--ip", "198.19.0.4/24", "198.18.0.1"], wd, secret)
        _say("    b: sleeve launch --ip 198.19.0.2/24")
        _say("    a: sleeve launch --ip 198.19.0.1/24 198.18.0.2")
        _say("    c: sleeve launch --ip 198.19.0.3/24 198.18.0.2   (dials out through NAT)")
        _say("    d: sleeve launch --ip 198.19.0.4/24 198.18.0.1   (knows only a)")
        routers = (ra, rb, rc, rd)
        for router in routers:
            router.wait(lambda st: len(st["peers"]) == 4 and len(st["routes"]) == 3
                   and all(x["usable"] for x in st["routes"]), 40, "mesh converged")
        st = rb.wait(established_with(2), 30, "b connected to a and c")
        _say(f"    mesh converged in {time.monotonic() - t0:.1f}s since start: every router "
             "knows all 4 and has a route to each; b sees:")
        for conn in st["connections"]:
            nat = conn["nickname"] == "c"
            _say(f"      {conn['nickname']}: {conn['state']}, UDP endpoint {conn['udp']}"
                 + ("  <- NAT mapping, learnt from authenticated datagrams" if nat else ""))
        std = rd.status()
        nick = {p["peer"]: p["nickname"] for p in std["peers"]}
        _say("    d's routes (gossip found the others; the firewall made b a relay case):")
        for rt in std["routes"]:
            via = ("direct" if rt["via"] == rt["destination"]
                   else f"relayed via {nick.get(rt['via'], rt['via'])}")
            _say(f"      -> {nick.get(rt['destination'])}: {via}, {rt['hops']} hop(s)")
        for conn in std["connections"]:
            _say(f"      d's link to {conn['nickname']}: path MTU {conn['pmtu']} bytes "
                 f"({conn['pmtu_reason']})")

        _step(3, "Pinging across the overlay")
        pings_ok = True
        for src, name, dst in ((a, "a", "198.19.0.2"), (b, "b", "198.19.0.1"),
                               (c, "c", "198.19.0.2"), (b, "b", "198.19.0.3"),
                               (d, "d", "198.19.0.2"), (d, "d", "198.19.0.3")):
            r = src.run("ping", "-c", "3", "-i", "0.2", "-W", "2", dst, check=False)
            line = [ln for ln in r.stdout.splitlines() if "rtt" in ln or "loss" in ln]
            pings_ok = pings_ok and r.returncode == 0
            _say(f"    {name} -> {dst}: " + ("ok" if r.returncode == 0 else "FAILED") +
                 (f"  ({line[-1].split('=')[-1].strip()})" if line else ""))
        _say("    (b -> c reaches the host behind NAT: the tunnel it dialled carries it;")
        _say("     d -> b is relayed around the firewall by a neighbour of both)")

        _step(4, f"Transferring {TRANSFER // 1_000_000} MB from a to b, checked with SHA-256")
        result: dict[str, Any] = {}

        def transfer() -> None:
            try:
                result["r"] = tcp_transfer(a, b, "198.19.0.2", TRANSFER, timeout=60)
            except Exception as e:
                result["e"] = e

        th = threading.Thread(target=transfer, daemon=True)
        th.start()
        base = _rx_bytes(rb, "a")
        live = sys.stdout.isatty()  # a redrawn bar only makes sense on a terminal
        while th.is_alive():
            th.join(0.4)
            if live:
                done = max(0, _rx_bytes(rb, "a") - base)  # includes sleeve overhead: capped
                print("\r    " + _bar(min(done, TRANSFER), TRANSFER), end="", flush=True)
        print(("\r" if live else "") + "    " + _bar(TRANSFER, TRANSFER), flush=True)
        if "e" in result:
            _say(f"    transfer FAILED: {result['e']}")
            return 1
        n, digest, secs = result["r"]
        ok = n == TRANSFER and digest == expected_digest(TRANSFER, "sleeve")
        _say(f"    {n / 1e6:.0f} MB in {secs:.2f}s = {n * 8 / secs / 1e9:.2f} Gbit/s, "
             f"checksum {'matches' if ok else 'MISMATCH'}")

        _step(5, "Status, as `sleeve status` shows it on b")
        r = rb.cli("status")  # its own API socket: lab routers share one file system
        for ln in r.stdout.splitlines():
            _say("    " + ln)

        _step(6, "Cleaning up: stopping routers (SIGTERM) and removing the namespaces")
        codes = [rt.stop() for rt in routers]
        taps = [h.run("ip", "link", "show", "sleeve0", check=False).returncode == 0
                for h in (a, b, c, d)]
        _say(f"    routers exited with {codes}; TAP devices left: {sum(taps)}")
        ok = ok and pings_ok and codes == [0, 0, 0, 0] and not any(taps)
    left = lab.namespaces()
    _say(f"    done in {time.monotonic() - t0:.1f}s; namespaces left: {len(left)}")
    return 0 if ok and not left else 1


def _rx_bytes(r: Any, nick: str) -> int:
    try:
        st = r.status()
    except Exception:
        return 0
    for conn in st["connections"]:
        if conn["nickname"] == nick:
            return int(conn["counters"].get("rx_bytes", 0))
    return 0
