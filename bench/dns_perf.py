"""DNS benchmark: ``python3 -m bench.dns_perf`` (root; network namespaces; dnsperf, dnsmasq).

One lab host runs a sleeve router (overlay 198.19.70.1/24 on its TAP, underlay
198.18.70.1/24) serving ``--names`` names registered over its HTTP API, and, in the same
namespace, dnsmasq serving the same names from a hosts file on the underlay address.
dnsperf (Debian ``dnsperf``), in that namespace too, sends the same query file to each at a
steady ``--rate`` for ``--seconds`` (``-Q``, ``-l``: bounded), ``--repeats`` times,
interleaved (sleeve, dnsmasq, then dnsmasq, sleeve, ...) so drifts in machine load hit both.
Per run: achieved queries/s, lost queries, rcodes, and latency percentiles from dnsperf's
per-response latencies (``-v``). The report gives medians over the repeats with the
spread (min..max). Nothing leaves the lab namespaces.

The router runs with ``--dns-rate-limit 0``: dnsperf is one client, and the default
per-client limit (500/s) would be what is measured otherwise.

Results: ``--out`` (default ``bench/results/``) gets ``dns-<stamp>.json`` and ``.md``.
Wrap lab runs in ``flock /tmp/sleeve-lab.lock``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import platform
import random
import re
import shutil
import statistics
import sys
import time
from typing import Any

from sleeve.lab import Lab
from sleeve.lab.routers import Router, workdir

UL, OV = "198.18.70.1", "198.19.70.1"
DOMAIN = "sleeve.local"
PCTS = (50.0, 90.0, 99.0, 99.9)


def need_tools() -> None:
    missing = [f"{t} (Debian package {p})" for t, p in (("dnsperf", "dnsperf"),
                                                        ("dnsmasq", "dnsmasq-base"))
               if shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        sys.exit(f"bench.dns_perf: missing {', '.join(missing)}: apt-get install them")
    if os.geteuid() != 0:
        sys.exit("bench.dns_perf: needs root (network namespaces)")


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def parse_dnsperf(out: str) -> dict[str, Any]:
    lat = [float(x) for x in re.findall(r"^> \S+ \S+ \S+ ([0-9.]+)$", out, re.M)]

    def num(pat: str) -> float:
        m = re.search(pat, out)
        return float(m.group(1)) if m else float("nan")
    m = re.search(r"Response codes:\s*(.*)", out)
    rc = dict(re.findall(r"(\w+) (\d+) \(", m.group(1))) if m else {}
    r: dict[str, Any] = {
        "sent": num(r"Queries sent:\s+(\d+)"), "completed": num(r"Queries completed:\s+(\d+)"),
        "lost": num(r"Queries lost:\s+(\d+)"), "qps": num(r"Queries per second:\s+([0-9.]+)"),
        "rcodes": {k: int(v) for k, v in rc.items()},
        "latency_ms": {f"p{p:g}": round(percentile(lat, p) * 1000, 3) for p in PCTS},
        "responses_timed": len(lat),
    }
    r["latency_ms"]["max"] = round(max(lat) * 1000, 3) if lat else float("nan")
    return r


def spread(vals: list[float]) -> str:
    return f"{statistics.median(vals):.4g} ({min(vals):.4g}..{max(vals):.4g})"


def main() -> int:
    ap = argparse.ArgumentParser(prog="bench.dns_perf")
    ap.add_argument("--rates", default="2000,6000",
                    help="queries/s offered (dnsperf -Q), comma separated: one table each")
    ap.add_argument("--seconds", type=int, default=10, help="per run (dnsperf -l)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--names", type=int, default=100)
    ap.add_argument("--out", default="bench/results")
    a = ap.parse_args()
    try:
        a.rate_list = [int(x) for x in a.rates.split(",")]
    except ValueError:
        sys.exit("bench.dns_perf: --rates needs integers like 2000,6000")
    if not (all(1 <= r <= 100_000 for r in a.rate_list) and 1 <= a.seconds <= 120
            and 1 <= a.repeats <= 20 and 1 <= a.names <= 4000):
        sys.exit("bench.dns_perf: --rates 1..100000, --seconds 1..120, --repeats 1..20, "
                 "--names 1..4000")
    need_tools()
    wd = workdir("sleeve-dnsperf-")
    names = [(f"svc{i}", f"198.19.{71 + i // 250}.{i % 250 + 1}") for i in range(a.names)]
    hosts_file = wd / "hosts"
    hosts_file.write_text("".join(f"{ip} {n}.{DOMAIN}\n" for n, ip in names))
    rng = random.Random(1)
    qfile = wd / "queries"
    qfile.write_text("".join(f"{n}.{DOMAIN} A\n" for n, _ in rng.sample(names, len(names))))
    runs: list[dict[str, Any]] = []
    with Lab() as lab:
        sw = lab.switch()
        h = lab.host("dp")
        lab.connect(h, sw, f"{UL}/24")
        router = Router(h, ["--ip", f"{OV}/24", "--dns-rate-limit", "0"], wd, "bench password")
        router.wait(lambda st: st["dns"]["state"] == "serving", 30, "dns serving")
        register(router, names)
        router.wait(lambda st: st["dns"]["table"]["live"] == len(names), 10, "names registered")
        dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        dm = h.popen(dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                     "--no-hosts", f"--addn-hosts={hosts_file}", "--bind-interfaces",
                     f"--listen-address={UL}", "--port=53", "--user=root",
                     f"--pid-file={wd}/dnsmasq.pid", f"--local=/{DOMAIN}/",
                     "--cache-size=1000")
        time.sleep(0.5)
        servers = {"sleeve": OV, "dnsmasq": UL}
        for rate in a.rate_list:
            for rep in range(a.repeats):
                order = ["sleeve", "dnsmasq"] if rep % 2 == 0 else ["dnsmasq", "sleeve"]
                for name in order:
                    r = h.run("dnsperf", "-s", servers[name], "-d", str(qfile), "-Q",
                              str(rate), "-l", str(a.seconds), "-t", "2", "-c", "1", "-v",
                              check=False, timeout=a.seconds + 30)
                    res = {"server": name, "rate": rate, "repeat": rep,
                           **parse_dnsperf(r.stdout)}
                    runs.append(res)
                    print(f"[{rate}/s #{rep}] {name}: {res['qps']:.0f} q/s, lost "
                          f"{res['lost']:.0f}, latency ms {res['latency_ms']}", file=sys.stderr)
        st = router.status()["dns"]
        h.stop(dm)
        router.stop()
    report = summarize(a, runs, st)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"dns-{stamp}.json").write_text(json.dumps(
        {"args": vars(a), "runs": runs, "router_dns_status": st}, indent=1))
    (out / f"dns-{stamp}.md").write_text(report)
    print(report)
    print(f"wrote {out}/dns-{stamp}.md", file=sys.stderr)
    return 0


def register(r: Router, names: list[tuple[str, str]]) -> None:
    """Through the router's API socket: changes are refused on TCP."""
    script = ("import sys,urllib.parse\n"
              "from sleeve.status.client import Endpoint, call\n"
              "a=sys.argv[2:]\n"
              "for n,ip in zip(a[::2],a[1::2]):\n"
              "    q=urllib.parse.urlencode({'name':n,'address':ip})\n"
              "    call(Endpoint(unix=sys.argv[1]), 'POST', '/dns/add?'+q)\n")
    r.host.run(sys.executable, "-c", script, str(r.api_socket),
               *[x for p in names for x in p], timeout=120)


def summarize(a: argparse.Namespace, runs: list[dict[str, Any]], st: dict[str, Any]) -> str:
    lines = [f"# DNS: sleeve's micro DNS vs dnsmasq, {dt.datetime.now():%Y-%m-%d %H:%M}",
             "",
             f"`python3 -m bench.dns_perf --rates {a.rates} --seconds {a.seconds} "
             f"--repeats {a.repeats} --names {a.names}` on {platform.node()} "
             f"({os.cpu_count()} cores, kernel {platform.release()}, Python "
             f"{platform.python_version()}). dnsperf in the same namespace as both servers, "
             f"one client socket, a steady rate offered for {a.seconds} s per run, "
             f"runs interleaved; {a.names} names, each query one of them (A, all NOERROR "
             "expected). Median over the repeats, (min..max) in brackets.",
             "",
             "| offered/s | server | answered/s | lost | p50 ms | p90 ms | p99 ms | p99.9 ms "
             "| max ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for rate in a.rate_list:
        for name in ("sleeve", "dnsmasq"):
            rs = [r for r in runs if r["server"] == name and r["rate"] == rate]
            cells = [spread([r["qps"] for r in rs]), spread([r["lost"] for r in rs])]
            cells += [spread([r["latency_ms"][k] for r in rs])
                      for k in ("p50", "p90", "p99", "p99.9", "max")]
            lines.append(f"| {rate} | {name} | " + " | ".join(cells) + " |")
    lines += ["", "Response codes per run: " + "; ".join(
        f"{r['server']}@{r['rate']}[{r['repeat']}] {r['rcodes']}" for r in runs), "",
        f"sleeve's own counters at the end: answers {st['server']['answers']}, "
        f"drops {st['server']['resolver']['drops']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
