"""Interleaved A/B runs of the end-to-end bench for two source trees of sleeve.

    python3 -m bench.ab --a /path/to/old/checkout --b . --repeats 3 --tests tcp1,udp64

This VM's figures move by 15-30% between runs, so one run's ratio is not a result.
Here the two trees run alternately (A B A B ...), each run a fresh ``bench.e2e`` with
only the encrypted ``sleeve`` subject in the same topology, the router processes
importing that tree's code (the run's working directory and ``PYTHONPATH``). The
report gives every metric's median and spread (min..max) per tree and the ratio of
medians B/A, and writes the raw runs next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

METRICS = {  # test -> (field, unit, scale)
    "tcp1": ("bits_per_second", "Gbit/s", 1e-9),
    "tcp1r": ("bits_per_second", "Gbit/s", 1e-9),
    "tcp4": ("bits_per_second", "Gbit/s", 1e-9),
    "udp64": ("rx_pps", "kpps delivered", 1e-3),
    "udp512": ("rx_pps", "kpps delivered", 1e-3),
    "ping": ("avg_ms", "ms avg", 1.0),
}
# Reported too when their test ran: row -> (test, field, unit, scale). CPU-s per GB moves
# less with the machine's load than throughput does (a starved run is slow, not costly).
EXTRA = {
    "tcp1 cpu": ("tcp1", "daemon_cpu_s_per_gb", "CPU-s/GB", 1.0),
    "tcp1r cpu": ("tcp1r", "daemon_cpu_s_per_gb", "CPU-s/GB", 1.0),
    "ping p99": ("ping", "p99_ms", "ms p99", 1.0),
}


def run_once(tree: pathlib.Path, tests: str, seconds: float, out: pathlib.Path,
             subject: str, ping_count: int = 200) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "bench.e2e", "--subjects", subject, "--tests", tests,
           "--seconds", str(seconds), "--out", str(out), "--no-latest",
           "--profile-seconds", "0", "--ping-count", str(ping_count)]
    # Run from the tree itself: ``-m`` puts the working directory first on sys.path, and
    # the routers (``python3 -m sleeve`` in the lab hosts) inherit it. Both trees must
    # have the bench (any checkout since the bench landed does).
    subprocess.run(cmd, env=env, check=True, timeout=600, cwd=tree)
    newest = max(out.glob("e2e-*.json"), key=lambda p: p.stat().st_mtime)
    data: dict[str, Any] = json.loads(newest.read_text())
    newest.rename(out / f"{newest.stem}-done.json")
    for r in data["results"]:
        if r["subject"] == subject:
            return dict(r["tests"])
    raise RuntimeError(f"no {subject} result in {newest}")


def summary(runs: list[dict[str, Any]], row: str) -> list[float]:
    test, field, _unit, scale = EXTRA[row] if row in EXTRA else (row, *METRICS[row])
    return [r[test][field] * scale for r in runs
            if test in r and r[test].get(field) is not None]


def unit(row: str) -> str:
    return EXTRA[row][2] if row in EXTRA else METRICS[row][1]


def _loadavg() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, type=pathlib.Path, help="baseline source tree")
    ap.add_argument("--b", required=True, type=pathlib.Path, help="candidate source tree")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tests", default="tcp1,udp64")
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--subject", default="sleeve")
    ap.add_argument("--ping-count", type=int, default=200, help="pings 10 ms apart (200)")
    ap.add_argument("--report", type=pathlib.Path, required=True, help="markdown file to write")
    args = ap.parse_args()
    if args.repeats < 1 or args.repeats > 20:
        sys.exit("bench.ab: --repeats must be 1..20")
    tests = [t for t in args.tests.split(",") if t]
    for t in tests:
        if t not in METRICS:
            sys.exit(f"bench.ab: unknown test {t!r} (one of {', '.join(METRICS)})")
    runs: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    load0 = _loadavg()
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    order: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sleeve-ab-") as tmp:
        out = pathlib.Path(tmp)
        for i in range(args.repeats):
            for name in ("A", "B"):
                t0 = time.monotonic()
                runs[name].append(run_once(trees[name], args.tests, args.seconds, out,
                                           args.subject, args.ping_count))
                order.append(name)
                print(f"run {i + 1}/{args.repeats} {name}: {time.monotonic() - t0:.0f} s",
                      flush=True)
    lines = [f"# A/B: {args.subject}, {args.repeats} interleaved repeats, {args.seconds} s each",
             "", f"- A: `{trees['A']}`", f"- B: `{trees['B']}`",
             f"- order: {' '.join(order)}", "",
             "B/A is the ratio of the medians; per pair, the median (min..max) of B_i / A_i over"
             " the interleaved pairs (robust to the machine's load drifting during the series).",
             "",
             "| test | unit | A median (min..max) | B median (min..max) | B/A | B/A per pair |",
             "| --- | --- | --- | --- | --- | --- |"]
    rows = tests + [k for k, v in EXTRA.items() if v[0] in tests]
    for t in rows:
        a, b = summary(runs["A"], t), summary(runs["B"], t)
        if not a or not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        pairs = [y[0] / x[0] for ra, rb in zip(runs["A"], runs["B"], strict=True)
                 if (x := summary([ra], t)) and (y := summary([rb], t)) and x[0]]
        per_pair = (f"{statistics.median(pairs):.3f} ({min(pairs):.3f}..{max(pairs):.3f})"
                    if pairs else "-")
        lines.append(f"| {t} | {unit(t)} | {ma:.3f} ({min(a):.3f}..{max(a):.3f}) | "
                     f"{mb:.3f} ({min(b):.3f}..{max(b):.3f}) | {mb / ma:.3f} | {per_pair} |")
    lines += ["", f"Load average before / after: {load0} / {_loadavg()}", "",
              "Raw per-run values:", ""]
    for t in rows:
        lines.append(f"- {t}: A {[round(x, 3) for x in summary(runs['A'], t)]}, "
                     f"B {[round(x, 3) for x in summary(runs['B'], t)]}")
    args.report.write_text("\n".join(lines) + "\n")
    args.report.with_suffix(".json").write_text(json.dumps({"order": order, "runs": runs},
                                                           indent=1, default=str) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
