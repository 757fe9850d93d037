"""Relayed-path throughput, two source trees interleaved (A B A B ...).

``python3 -m bench.relay_ab --a TREE --b TREE``.

The relay lab of tests/test_lab_relay.py: hosts a, b, c on one switch, a and c firewalled
from each other, so a's TCP to c goes a -> b -> c through b's router. Each trial makes
fresh namespaces, starts the three routers from one tree (``python -m sleeve`` run with
that tree as working directory, so it imports that tree's code), waits for the route via
b, moves ``--mbytes`` of integrity-checked TCP a -> c and reports Mbit/s and b's relayed
frames. Trials alternate between the trees, ``--repeats`` times each; medians and
spreads (min..max) are printed and, with ``--out``, written as Markdown.

Needs root; run it under the lab lock: ``flock /tmp/sleeve-lab.lock python3 -m bench.relay_ab
--a /work/main --b .``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

from sleeve.lab import Lab
from sleeve.lab.routers import Router, workdir
from sleeve.lab.traffic import expected_digest, tcp_transfer

A_UL, B_UL, C_UL = "198.18.22.1", "198.18.22.2", "198.18.22.3"
A_OV, B_OV, C_OV = "198.19.22.1", "198.19.22.2", "198.19.22.3"


def trial(tree: pathlib.Path, nbytes: int) -> tuple[float, int]:
    """One relayed transfer with routers from ``tree``: (Mbit/s, frames b relayed)."""
    here = os.getcwd()
    with Lab() as lab:
        sw = lab.switch()
        a, b, c = lab.host("a"), lab.host("b"), lab.host("c")
        for h, ip in ((a, A_UL), (b, B_UL), (c, C_UL)):
            lab.connect(h, sw, f"{ip}/24")
        a.block(C_UL)
        wd = workdir("sleeve-bench-")
        os.chdir(tree)  # the routers import the tree they start in
        try:
            rb = Router(b, ["--ip", f"{B_OV}/24"], wd, "bench pw")
            Router(a, ["--ip", f"{A_OV}/24", B_UL], wd, "bench pw")
            rc = Router(c, ["--ip", f"{C_OV}/24", B_UL], wd, "bench pw")
        finally:
            os.chdir(here)
        c_name = rc.wait(lambda st: bool(st["name"]), 20, "status")["name"]
        rb.wait(lambda st: sum(cn["state"] == "established" for cn in st["connections"]) == 2,
                30, "b linked to a and c")
        if not (a.wait_ping(C_OV, timeout=30) and c.wait_ping(A_OV, timeout=10)):
            raise RuntimeError("a and c cannot ping through b")
        tcp_transfer(a, c, C_OV, 1_000_000, timeout=30)  # warm up (PMTU, ARP, GSO proofs)
        before = rb.status()["counters"].get("relayed_frames", 0)
        got, digest, secs = tcp_transfer(a, c, C_OV, nbytes, timeout=120)
        if (got, digest) != (nbytes, expected_digest(nbytes, "sleeve")):
            raise RuntimeError(f"transfer corrupted or short: {got} of {nbytes} bytes")
        relayed = rb.status()["counters"].get("relayed_frames", 0) - before
        if relayed < nbytes // 1500:
            raise RuntimeError(f"b relayed only {relayed} frames: the path was not relayed "
                               f"(a-c route {c_name})")
        return nbytes * 8 / secs / 1e6, relayed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.relay_ab",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--a", type=pathlib.Path, required=True, help="first source tree (e.g. main)")
    p.add_argument("--b", type=pathlib.Path, required=True, help="second source tree")
    p.add_argument("--repeats", type=int, default=3, help="trials per tree (default 3, >= 3)")
    p.add_argument("--mbytes", type=int, default=30, help="MB per transfer (default 30)")
    p.add_argument("--out", type=pathlib.Path, default=None, help="write a Markdown summary")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        p.error("needs root (network namespaces)")
    if args.repeats < 3:
        p.error("--repeats must be at least 3")
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    for label, tree in trees.items():
        if not (tree / "sleeve" / "__main__.py").is_file():
            p.error(f"--{label.lower()} {tree}: not a sleeve source tree")
    results: dict[str, list[float]] = {"A": [], "B": []}
    for i in range(args.repeats):
        for label in ("A", "B"):
            mbps, relayed = trial(trees[label], args.mbytes * 1_000_000)
            results[label].append(mbps)
            print(f"trial {i + 1} {label}: {mbps:8.1f} Mbit/s ({relayed} frames relayed)",
                  flush=True)
    lines = [f"# Relayed TCP a -> b -> c, {args.mbytes} MB per trial, interleaved A B x "
             f"{args.repeats} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             "| tree | path | median Mbit/s | min | max | trials |", "|---|---|---|---|---|---|"]
    for label, tree in trees.items():
        r = results[label]
        lines.append(f"| {label} | `{tree}` | {statistics.median(r):.1f} | {min(r):.1f} | "
                     f"{max(r):.1f} | {', '.join(f'{x:.1f}' for x in r)} |")
    ratio = statistics.median(results["B"]) / statistics.median(results["A"])
    lines += ["", f"B / A (medians): {ratio:.3f}"]
    print("\n".join(lines))
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
