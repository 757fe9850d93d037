"""Ping latency and what it costs: variants of the two-host lab, interleaved.

    python3 -m bench.ping_cpu --variants "SLEEVE_LAB_ROUTER_ARGS=--no-offload;;fastd" \\
        --repeats 3 --out /tmp/ping-cpu

Each variant is ``fastd`` or the encrypted ``sleeve`` subject of ``bench.e2e`` run with
the given environment assignments (``NAME=VALUE`` separated by commas; empty: as is).
The routers inherit the environment, so ``SLEEVE_LAB_ROUTER_ARGS`` adds router options,
and a tree's own experiment switches reach its routers too. Per run (a fresh lab each):
``--pings`` pings 10 ms apart, the CPU of both tunnel processes while pinging, and
their CPU over ``--idle`` s after a pause. A latency change that buys its gain with CPU
(a poller, a warmer) shows here; ``bench.ab`` and ``bench.series`` time the ping alone.
Variants run in turn within each repeat (A B C A B C ...); this VM moves 15-30%
between runs, so read the medians and their spread, never one run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time
from typing import Any

from bench import e2e
from bench.e2e_env import proc_cpu_seconds
from bench.e2e_measure import measure_ping
from sleeve.lab import Lab
from sleeve.lab.routers import workdir

FIELDS = (("avg_ms", "ping avg ms"), ("p99_ms", "ping p99 ms"),
          ("cpu_ping_pct", "CPU % of a core, both ends, while pinging"),
          ("cpu_idle_pct", "CPU % of a core, both ends, idle"))


def parse_variant(text: str) -> dict[str, str]:
    """``A=1,B=x`` -> {"A": "1", "B": "x"}; empty -> {} (the tree as it is)."""
    env: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        if not eq or not name.isidentifier():
            raise ValueError(f"not NAME=VALUE: {part!r}")
        env[name] = value
    return env


def one_run(variant: str, pings: int, idle: float) -> dict[str, Any]:
    subject = "fastd" if variant == "fastd" else "sleeve"
    env = {} if subject == "fastd" else parse_variant(variant)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    wd = workdir("sleeve-ping-cpu-")
    try:
        with Lab() as lb:
            sw = lb.switch()
            a, b = lb.host("a"), lb.host("b")
            ifs = (lb.connect(a, sw, f"{e2e.A_UL}/24"), lb.connect(b, sw, f"{e2e.B_UL}/24"))
            run = e2e.setup_subject(subject, a, b, ifs, wd, None)
            try:
                if not a.wait_ping(e2e.B_OV, timeout=30):
                    raise RuntimeError(f"{variant or 'sleeve'}: no ping through the tunnel")
                time.sleep(1.0)  # the first ping's learning and handshakes are over
                pids = [pid for _, pid in run.daemons]

                def cpu() -> tuple[float, float]:
                    return sum(proc_cpu_seconds(p) for p in pids), time.monotonic()

                c0, t0 = cpu()
                res = measure_ping(a, e2e.B_OV, pings)
                c1, t1 = cpu()
                time.sleep(1.5)  # whatever lingers after traffic (a warmer, a poller) ends
                c2, t2 = cpu()
                time.sleep(idle)
                c3, t3 = cpu()
            finally:
                e2e.teardown_subject(run)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    res["cpu_ping_pct"] = round(100 * (c1 - c0) / (t1 - t0), 2)
    res["cpu_idle_pct"] = round(100 * (c3 - c2) / (t3 - t2), 2)
    return res


def report(variants: list[str], runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = ["| variant | " + " | ".join(title for _, title in FIELDS) + " |",
             "|---|" + "---:|" * len(FIELDS)]
    for v in variants:
        cells = []
        for key, _ in FIELDS:
            xs = [r[key] for r in runs[v] if r.get(key) is not None]
            cells.append(f"{statistics.median(xs):.3f} ({min(xs):.3f}..{max(xs):.3f})"
                         if xs else "-")
        lines.append(f"| {v or '(as is)'} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench.ping_cpu",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--variants", required=True,
                   help='";"-separated: fastd, or NAME=VALUE[,NAME=VALUE] for sleeve')
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pings", type=int, default=300)
    p.add_argument("--idle", type=float, default=3.0)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("/tmp/sleeve-ping-cpu"))
    args = p.parse_args(argv)
    variants = args.variants.split(";")
    try:
        for v in variants:
            if v != "fastd":
                parse_variant(v)
    except ValueError as e:
        p.error(str(e))
    if not 1 <= args.repeats <= 20 or not 10 <= args.pings <= 5000 or not 0 < args.idle <= 60:
        p.error("--repeats 1..20, --pings 10..5000, --idle 0..60 s")
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    load0 = os.getloadavg()
    for rep in range(args.repeats):
        for v in variants:
            r = one_run(v, args.pings, args.idle)
            runs[v].append(r)
            print(f"repeat {rep + 1} {v or '(as is)'}: " + ", ".join(
                f"{k} {r[k]}" for k, _ in FIELDS), flush=True)
    load1 = os.getloadavg()
    lines = [f"# ping and its CPU: {args.repeats} repeats, {args.pings} pings 10 ms apart",
             "", f"order per repeat: {' '.join(v or '(as is)' for v in variants)}; "
             f"load average before {load0[0]:.2f}, after {load1[0]:.2f}", "",
             "Medians (min..max) over the repeats:", "", *report(variants, runs)]
    (args.out / "ping-cpu.json").write_text(json.dumps(runs, indent=1) + "\n")
    (args.out / "ping-cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
