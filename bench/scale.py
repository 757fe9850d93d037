"""A mesh of many real routers on this machine (issue 23, "Scale"):

    flock /tmp/sleeve-lab.lock python3 -m bench.scale --routers 50

Root; network namespaces. N encrypted routers (``sleeve launch``, each in its own
namespace) on one lab bridge, each given 3 initial peers (ring neighbours + a chord,
``sleeve.lab.scale.initial_peers``): discovery must find the rest. Phases, in order:

1. start all N at once; convergence time = from the last process started to the moment
   every router has a usable route to every other (``ScaleLab.routes_to_all``, polled
   each 0.5 s over ``GET /routes``, every router at once, one thread each; a router
   counts from the arrival of its answer that shows routes to all); also from the first
   start, for the record;
2. idle: once no router's count of established links changed for ``--quiet`` s (discovery
   goes on adding direct links after routes to all exist; the wait is reported, bounded
   by ``--quiet-timeout``), nothing polls for ``--idle`` s; CPU per router from
   /proc/PID/stat (utime + stime, % of one core), VmRSS and VmHWM from
   /proc/PID/status; control bytes sent per router per second over the same window
   (the background every change adds to);
3. one DNS name added on one router (``sleeve dns add``): until every router's ``GET
   /dns`` has it, plus ``--settle`` s; bytes sent per router;
4. ``--restart`` routers stopped (SIGTERM) and started again at once (same keys, new
   incarnations): time from the last start to routes to all everywhere;
5. one router leaves (SIGTERM): until no router has a route to it, plus ``--settle`` s;
   bytes sent per router.

``--idle-only`` stops after phase 2 (and ``--profile``): ~3 minutes at 50 routers, for
work on idle CPU.

Control bytes are sealed control-message bytes written per link (``control_tx_bytes`` in
each connection's counters, everything on the control channel: topology, DNS, IPAM
gossip, relayed broadcasts, PMTU, liveness), summed over the links that exist before and
after; gossip bytes are the channels' payloads (``gossip.<channel>.tx_bytes``). Both are
deltas over the phase's window, idle background included (compare with phase 2's rate).

Profiles (py-spy beside the interpreter, collapsed stacks next to the results):
``--profile S`` records s1 and s<N/2+1> for S s after the idle window; ``--profile-converge
S`` records them for S s from the start, while the mesh forms.

Bounds: the whole run stops at ``--max-seconds`` (SIGALRM): the lab then kills every
router it started (by PID) and deletes every namespace, as it does on any error.
Results: ``--out`` gets ``scale-<N>-<stamp>.md`` and ``.json``; exit 1 if a target is
missed (targets: converge <= 30 s, idle CPU <= 1 % of a core and RSS <= 60 MB per
router, restart reconvergence <= 15 s).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from types import FrameType
from typing import Any

import sleeve
from sleeve.lab import Lab
from sleeve.lab.scale import ScaleLab, delta_bytes, idle_usage, initial_peers

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "scale"
TARGETS = {"converge_s": 30.0, "cpu_pct": 1.0, "rss_mb": 60.0, "reconverge_s": 15.0}


class Overtime(Exception):
    pass



def _cli_ok(m: Any, *args: str) -> None:
    """``sleeve ARGS`` against member ``m``'s API socket (changes need it); raise on failure."""
    r = m.router.cli(*args, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"sleeve {' '.join(args)}: {r.stderr.strip()[:300]}")

def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def spread(xs: Sequence[float]) -> dict[str, float]:
    s = sorted(xs)
    return {"median": statistics.median(s), "min": s[0], "max": s[-1],
            "p90": s[min(len(s) - 1, int(0.9 * len(s)))]}


def profile(pids: dict[int, int], n: int, seconds: int, out: pathlib.Path,
            stamp: str) -> dict[str, Any]:
    """py-spy (beside this interpreter) records these routers (index -> pid) for
    ``seconds`` (after the idle measurement: its own cost stays out of it; or from the
    start, ``--profile-converge``); the collapsed stacks go to ``out``, the hottest
    functions (share of non-idle samples they appear in) to the result."""
    spy = pathlib.Path(sys.executable).parent / "py-spy"
    if not os.access(spy, os.X_OK):
        return {"status": "py-spy not installed (./install.sh --bench)"}
    procs = []
    files = {}
    for i, pid in pids.items():
        f = out / f"scale-{n}-{stamp}-profile-s{i + 1}.collapsed.txt"
        files[i] = f
        procs.append(subprocess.Popen(
            [str(spy), "record", "--pid", str(pid), "--rate", "50", "--duration", str(seconds),
             "--format", "raw", "--output", str(f)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for p in procs:
        try:
            p.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    res: dict[str, Any] = {"seconds": seconds, "routers": {}}
    for i, f in files.items():
        hot: Counter[str] = Counter()
        total = 0
        if f.exists():
            for line in f.read_text().splitlines():
                stack, _, n = line.rpartition(" ")
                total += int(n)
                for fn in set(stack.split(";")):
                    hot[fn] += int(n)
        res["routers"][f"s{i + 1}"] = {
            "file": f.name, "samples": total,
            "hot": [(fn, round(100 * c / total, 1)) for fn, c in hot.most_common(40)]
            if total else []}
    return res


# node counters first (4), then link counters summed over the links
RATE_KEYS = ("ticks", "ticks_idle", "port_rx_frames", "handshake_ok", "rx_packets",
             "tx_packets", "control_tx_msgs", "rx_frames", "heartbeats_skipped")
# why a router ticked at 4 Hz (node counters ticks_busy_<why>, sleeve.node._busy)
BUSY_KEYS = tuple(f"ticks_busy_{w}" for w in ("data", "handshakes", "dials", "traversal",
                                                "fastdp", "deadlines", "links", "error"))


def _rates_snapshot(sl: ScaleLab, live: set[int]) -> dict[int, dict[str, float]]:
    """Per router: node tick counters and link counters summed over its links, and when."""
    out: dict[int, dict[str, float]] = {}
    for i, st in sl.poll(live, "/status", timeout=30).items():
        row: dict[str, float] = {k: st["counters"].get(k, 0) for k in RATE_KEYS[:4]}
        busy = {k: v for k, v in st["counters"].items() if k.startswith("ticks_busy_")}
        row.update({k: busy.get(k, 0) for k in BUSY_KEYS})
        for k in RATE_KEYS[4:]:
            row[k] = sum(c["counters"].get(k, 0) for c in st["connections"])
        row["t"] = time.monotonic()
        out[i] = row
    return out


def per_change(sl: ScaleLab, live: set[int], action: Any, done: Any, timeout: float,
               settle: float) -> dict[str, Any]:
    """Bytes each live router sent from ``action()`` until ``done()`` + ``settle`` s."""
    before = sl.control_bytes(live)
    t0 = time.monotonic()
    action()
    end = t0 + timeout
    while not done():
        if time.monotonic() > end:
            raise TimeoutError(f"change not seen everywhere within {timeout}s")
        time.sleep(0.5)
    seen = time.monotonic() - t0
    time.sleep(settle)
    window = time.monotonic() - t0
    d = delta_bytes(before, sl.control_bytes(live))
    chans = sorted({k for v in d.values() for k in v if k.startswith("gossip:")})
    return {"seen_everywhere_s": round(seen, 2), "window_s": round(window, 2),
            "routers": len(d),
            "control_bytes": spread([v["control"] for v in d.values()]),
            "control_bytes_total": sum(v["control"] for v in d.values()),
            "gossip_bytes": {c[7:]: spread([v.get(c, 0) for v in d.values()]) for c in chans}}


def run(args: argparse.Namespace, stamp: str) -> dict[str, Any]:
    n = args.routers
    res: dict[str, Any] = {"stamp": stamp, "routers": n, "initial_peers": args.peers,
                           "argv": sys.argv[1:],
                           "version": sleeve.__version__, "python": platform.python_version(),
                           "kernel": platform.release(), "cpus": os.cpu_count(),
                           "loadavg_before": os.getloadavg()}
    with Lab() as lab:
        t = time.monotonic()
        sl = ScaleLab(lab, n, args.peers)
        try:
            say(f"lab of {n} hosts built in {time.monotonic() - t:.1f}s; starting {n} routers")
            res["peers_of_s1"] = [f"s{j + 1}" for j in initial_peers(0, n, args.peers)]
            everyone = set(range(n))
            t_first = time.monotonic()
            t_last = sl.start(range(n))
            spy = None
            if args.profile_converge:  # s1 and s<N/2+1> while the mesh forms
                pids = {i: sl.router_pid(i) for i in (0, n // 2)}
                spy = threading.Thread(target=lambda: res.__setitem__("profile_converge", profile(
                    pids, n, args.profile_converge, args.out, f"{stamp}-converge")))
                spy.start()
            done = sl.wait_converged(everyone, t_last + args.converge_timeout)
            if spy is not None:
                spy.join()
                say(f"profile while converging: {json.dumps(res['profile_converge'])[:3000]}")
            t_conv = max(done.values())
            res["converge"] = {"from_last_start_s": round(t_conv - t_last, 2),
                               "from_last_up_s": round(t_conv - max(sl.up_at.values()), 2),
                               "last_up_after_start_s": round(max(sl.up_at.values()) - t_last,
                                                              2),
                               "from_first_start_s": round(t_conv - t_first, 2),
                               "spawn_all_s": round(t_last - t_first, 2)}
            say(f"converged: {res['converge']}")
            st = sl.get(0, "/status")
            res["mesh"] = {"peers": len(st["peers"]),
                           "established_links_s1": sum(c["state"] == "established"
                                                       for c in st["connections"]),
                           "discovered_targets_s1": sum(t["discovered"] for t in st["targets"])}

            try:
                waited, est = sl.wait_quiet(everyone, args.quiet, args.quiet_timeout)
                res["quiet"] = {"after_convergence_s": round(waited, 1), "quiet_s": args.quiet,
                                "established_links": spread(list(est.values()))}
            except TimeoutError as e:  # measured anyway, and said so
                res["quiet"] = {"error": str(e), "quiet_s": args.quiet}
            say(f"quiet: {res['quiet']}")
            pids = sl.pids(everyone)
            r0 = _rates_snapshot(sl, everyone)
            b0 = sl.control_bytes(everyone)
            say(f"idle: {args.idle}s with nothing polling")
            use = idle_usage(pids, args.idle)
            d = delta_bytes(b0, sl.control_bytes(everyone))
            r1 = _rates_snapshot(sl, everyone)
            res["idle"] = {
                "seconds": args.idle, "loadavg": os.getloadavg(),
                "cpu_pct_of_core": spread([u[0] for u in use.values()]),
                "rss_mb": spread([u[1] / 1024 for u in use.values()]),
                "hwm_mb": spread([u[2] / 1024 for u in use.values()]),
                # which routers are largest (is the largest always the same one?)
                "rss_top": [(f"s{i + 1}", round(use[i][1] / 1024, 2)) for i in
                            sorted(use, key=lambda i: use[i][1], reverse=True)[:3]],
                "control_bytes_per_s": spread([v["control"] / args.idle for v in d.values()]),
                # what an idle router does each second (over the window and the polls
                # around it: the polls' own ticks count too)
                "per_s": {k: spread([(r1[i][k] - r0[i][k]) / (r1[i]["t"] - r0[i]["t"])
                                     for i in r1 if i in r0]) for k in RATE_KEYS + BUSY_KEYS},
            }
            say(f"idle: {json.dumps(res['idle'])}")
            if args.profile:
                res["profile"] = profile(sl.pids([0, n // 2]), n, args.profile, args.out,
                                         res["stamp"])
                say(f"profile: {json.dumps(res['profile'])[:3000]}")
            if args.idle_only:  # phases 3-5 skipped: convergence and idle only
                return res

            origin = 0
            name = f"scale{random.getrandbits(16)}"

            def has_name() -> bool:
                views = sl.poll(everyone, "/dns")
                return len(views) == n and all(
                    any(r.get("name", "").startswith(name) for r in v.get("records", []))
                    for v in views.values())

            try:
                res["dns_add"] = per_change(
                    sl, everyone,
                    lambda: _cli_ok(sl.members[origin], "dns", "add", name, "198.19.0.200"),
                    has_name, 30, args.settle)
            except (TimeoutError, RuntimeError, OSError, subprocess.SubprocessError) as e:
                res["dns_add"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            say(f"dns add: {json.dumps(res['dns_add'])}")

            rnd = random.Random(args.seed)
            restarted = sorted(rnd.sample(range(1, n), min(args.restart, n - 2)))
            res["restarted"] = [f"s{i + 1}" for i in restarted]
            say(f"restarting {len(restarted)}: {res['restarted']}")
            sl.stop(restarted)
            t_last = sl.start(restarted)
            try:
                done = sl.wait_converged(everyone, t_last + args.converge_timeout)
            except TimeoutError as e:
                res["restart"] = {"count": len(restarted), "error": str(e)[:500]}
                return res
            res["restart"] = {"count": len(restarted),
                              "reconverge_s": round(max(done.values()) - t_last, 2),
                              "from_last_up_s": round(max(done.values()) - max(
                                  sl.up_at[i] for i in restarted), 2)}
            say(f"restart: {res['restart']}")

            leaver = n - 1 if (n - 1) not in restarted else n - 2
            live = everyone - {leaver}
            res["leave"] = per_change(
                sl, live, lambda: sl.stop([leaver]),
                lambda: len(sl.wait_converged(live, time.monotonic() + 60, gone={leaver}))
                == len(live), 60, args.settle)
            res["leave"]["router"] = f"s{leaver + 1}"
            say(f"leave: {json.dumps(res['leave'])}")
        finally:
            sl.close()
    res["lab_errors"] = lab.errors
    return res


def verdict(res: dict[str, Any]) -> dict[str, bool]:
    ok = {
        "converge_s": res["converge"]["from_last_start_s"] <= TARGETS["converge_s"],
        "cpu_pct": res["idle"]["cpu_pct_of_core"]["max"] <= TARGETS["cpu_pct"],
        "rss_mb": res["idle"]["rss_mb"]["max"] <= TARGETS["rss_mb"],
    }
    if "restart" in res:  # not run with --idle-only
        ok["reconverge_s"] = res["restart"].get("reconverge_s", 1e9) <= TARGETS["reconverge_s"]
    return ok


def _fmt(s: dict[str, float], unit: str = "", digits: int = 2) -> str:
    return (f"median {s['median']:.{digits}f}{unit}, p90 {s['p90']:.{digits}f}{unit}, "
            f"min {s['min']:.{digits}f}{unit}, max {s['max']:.{digits}f}{unit}")


def markdown(res: dict[str, Any], ok: dict[str, bool]) -> str:
    c, idle = res["converge"], res["idle"]
    rs = res.get("restart", {"count": 0, "error": "not run (--idle-only)"})
    mark = {True: "met", False: "**MISSED**"}
    lines = [
        f"# Scale: {res['routers']} routers on one machine ({res['stamp']})",
        "",
        f"Command: `flock /tmp/sleeve-lab.lock python3 -m bench.scale {' '.join(res['argv'])}`",
        f"sleeve {res['version']}, Python {res['python']}, kernel {res['kernel']}, "
        f"{res['cpus']} CPUs; load average before {res['loadavg_before']}, "
        f"during idle {idle['loadavg']}.",
        "",
        f"Each router is given {res['initial_peers']} initial peers (s1: "
        f"{', '.join(res['peers_of_s1'])}); discovery finds the rest. After convergence s1 "
        f"knew {res['mesh']['peers']} peers, had {res['mesh']['established_links_s1']} "
        f"established links, {res['mesh']['discovered_targets_s1']} of its dial targets "
        "discovered.",
        "",
        "| what | result | target |",
        "|---|---|---|",
        f"| routes to all, from the last start | {c['from_last_start_s']} s "
        f"(from the first: {c['from_first_start_s']} s; spawning took {c['spawn_all_s']} s; "
        f"the last router answered {c['last_up_after_start_s']} s after the last start, "
        f"routes to all {c['from_last_up_s']} s after that) "
        f"| <= 30 s, {mark[ok['converge_s']]} |",
        "| mesh quiet (no router's established links changed for "
        f"{res['quiet']['quiet_s']} s), after routes to all | "
        + (f"{res['quiet']['after_convergence_s']} s; established links per router: "
           f"{_fmt(res['quiet']['established_links'], '', 0)}" if "error" not in res["quiet"]
           else f"not reached: {res['quiet']['error']}") + " | |",
        f"| idle CPU per router, % of a core, {idle['seconds']} s | "
        f"{_fmt(idle['cpu_pct_of_core'])} | <= 1 %, {mark[ok['cpu_pct']]} |",
        f"| RSS per router (VmRSS) | {_fmt(idle['rss_mb'], ' MB', 1)} | <= 60 MB, "
        f"{mark[ok['rss_mb']]} |",
        f"| peak RSS per router (VmHWM) | {_fmt(idle['hwm_mb'], ' MB', 1)} | |",
        f"| {rs['count']} routers restarted: routes to all, from the last start | "
        + (f"{rs['reconverge_s']} s (from the last one up: {rs['from_last_up_s']} s) "
           if "error" not in rs else f"not reached: {rs['error'][:200]} ")
        + f"| <= 15 s, {mark[ok['reconverge_s']] if 'reconverge_s' in ok else 'not run'} |",
        f"| idle control bytes sent per router per second | "
        f"{_fmt(idle['control_bytes_per_s'], '', 0)} | |",
    ]
    for k, v in idle.get("per_s", {}).items():
        lines.append(f"| idle, per router per second: `{k}` | {_fmt(v)} | |")
    for key, what in (("dns_add", "one DNS name added"), ("leave", "one router leaves")):
        ch = res.get(key, {"error": "not run (an earlier phase failed)"})
        if "error" in ch:
            lines.append(f"| {what} | failed: {ch['error'][:200]} | |")
            continue
        lines.append(f"| {what}: control bytes sent per router "
                     f"(seen everywhere in {ch['seen_everywhere_s']} s, window "
                     f"{ch['window_s']} s) | {_fmt(ch['control_bytes'], '', 0)}; total "
                     f"{ch['control_bytes_total']} | |")
        for chan, s in ch["gossip_bytes"].items():
            lines.append(f"| {what}: `{chan}` gossip payload bytes per router | "
                         f"{_fmt(s, '', 0)} | |")
    lines += ["", f"Restarted: {', '.join(res.get('restarted', [])) or 'none'}; left: "
              f"{res.get('leave', {}).get('router', 'none')}.",
              "Definitions and method: `bench/scale.py` docstring. Raw figures: the .json "
              "next to this file."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.scale", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--routers", type=int, default=50)
    ap.add_argument("--peers", type=int, default=3, help="initial peers given to each router")
    ap.add_argument("--idle", type=float, default=30.0, help="idle measurement window, s")
    ap.add_argument("--quiet", type=float, default=10.0,
                    help="idle is measured once links stopped changing for this long, s")
    ap.add_argument("--quiet-timeout", type=float, default=90.0)
    ap.add_argument("--settle", type=float, default=5.0, help="quiet time after a change, s")
    ap.add_argument("--restart", type=int, default=10, help="routers restarted together")
    ap.add_argument("--converge-timeout", type=float, default=120.0)
    ap.add_argument("--max-seconds", type=int, default=540, help="hard bound on the run")
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--profile", type=int, default=0, metavar="S",
                    help="after the idle window, py-spy two routers for S seconds")
    ap.add_argument("--profile-converge", type=int, default=0, metavar="S",
                    help="from the start, py-spy two routers for S seconds")
    ap.add_argument("--idle-only", action="store_true",
                    help="stop after the idle window (and --profile): no DNS, restart or leave "
                    "phases (~3 minutes at 50 routers)")
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not 4 <= args.routers <= 200:
        ap.error("--routers must be 4..200")
    if args.restart < 1 or args.peers < 1:
        ap.error("--restart and --peers must be >= 1")

    def overtime(signum: int, frame: FrameType | None) -> None:
        raise Overtime(f"run longer than --max-seconds {args.max_seconds}")

    signal.signal(signal.SIGALRM, overtime)
    signal.alarm(args.max_seconds)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        res = run(args, stamp)
    finally:
        signal.alarm(0)
    ok = verdict(res)
    res["targets"] = {k: {"target": TARGETS[k], "met": v} for k, v in ok.items()}
    base = args.out / f"scale-{args.routers}-{res['stamp']}"
    base.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res, ok)
    base.with_suffix(".md").write_text(md)
    print(md)
    say(f"wrote {base}.md and .json")
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
