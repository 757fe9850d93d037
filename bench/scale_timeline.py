"""What a forming 50-router mesh waits on (issue 23, "Scale"), as a timeline:

    flock /tmp/sleeve-lab.lock python3 -m bench.scale_timeline [--routers 50]

Root; the lab of ``bench.scale`` (``sleeve.lab.scale.ScaleLab``). All routers start at
once; every 0.5 s (or as soon as the previous round of ``GET /routes`` came back: a
round takes as long as the slowest router takes to answer, up to the 5 s timeout) one
line: seconds since the last start, routers that answered, routers with routes to all,
and the (router, destination) pairs still lacking a route or having one whose next hop
is not an established link; under it the routers that did not answer (silent) and the
routers the others most lack routes to. Stops at routes to all (or ``--seconds``); then the most
frequent lines of the routers' logs, with ids, names and numbers masked (handshake
timeouts, duplicates, switches to TCP...). Prints only; nothing written.

``--restart K``: then, after ``--settle`` s, K routers are restarted as ``bench.scale``
restarts them (same ``--seed``, so the same ones) and a second timeline follows the
reconvergence; each line splits the routers into restarted (R) and the others (O), and
the pairs lacking a usable route by direction (R->O, O->R, R->R, O->O). The log
kinds are then those written after the restart only, and the CPU time both groups used
from the restart to the end (the restarted ones' start-up included), and how s1's
node counters grew meanwhile (the largest 30). ``--profile S``:
py-spy records s1 (never restarted) for S s from the restart, collapsed stacks to
``--profile-out``.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import random
import re
import subprocess
import sys
import time

from sleeve.lab import Lab
from sleeve.lab.scale import ScaleLab, cpu_ticks

_MASK = re.compile(r"\b[0-9a-f]{2}(:[0-9a-f]{2}){5,7}\b|\bs\d+\b|\d+(\.\d+)*")


def timeline(sl: ScaleLab, n: int, t0: float, seconds: float, names: dict[int, str],
             restarted: set[int]) -> None:
    """One line per poll round until every router has routes to all (or ``seconds``)."""
    def kind(i: int) -> str:
        return "R" if i in restarted else "O"

    while time.monotonic() < t0 + seconds:
        t = time.monotonic()
        views = sl.poll(range(n))
        names.update({i: v["name"] for i, v in views.items()})
        ok: collections.Counter[str] = collections.Counter()
        lacking: collections.Counter[str] = collections.Counter()
        lacked: collections.Counter[str] = collections.Counter()  # routers others lack
        absent = unusable = 0
        index = {name: j for j, name in names.items()}
        for i, v in views.items():
            if len(names) < n:
                break
            routes = {r["destination"]: r["usable"] for r in v["routes"]}
            lack = [j for j in range(n) if j != i and not routes.get(names[j], False)]
            absent += sum(1 for j in lack if names[j] not in routes)
            unusable += sum(1 for d, usable in routes.items() if not usable)
            ok[kind(i)] += not lack and all(routes.values())
            for j in lack:
                lacking[f"{kind(i)}->{kind(index.get(names[j], j))}"] += 1
                lacked[f"s{j + 1}"] += 1
        split = (f"  R {ok['R']:2d}/{len(restarted)} O {ok['O']:2d}/{n - len(restarted)}  "
                 + " ".join(f"{k} {lacking[k]}" for k in ("R->O", "O->R", "R->R", "O->O"))
                 if restarted else "")
        print(f"t={t - t0:6.2f} s  answered {len(views):3d}  routes to all {sum(ok.values()):3d}"
              f"  pairs without a route {absent:5d}, with an unusable one {unusable:4d}{split}"
              f"  (round {time.monotonic() - t:.1f} s)", flush=True)
        # who did not answer within the poll's timeout (an overloaded loop), once some have,
        # and which routers the others still lack routes to
        silent = [f"s{i + 1}" for i in range(n) if i not in views]
        if views and (silent or lacked):
            print(f"    silent {' '.join(silent[:12]) or '-'}{' ...' if len(silent) > 12 else ''}"
                  f"  most lacked {' '.join(f'{k} ({c})' for k, c in lacked.most_common(6))}",
                  flush=True)
        if sum(ok.values()) == n:
            return
        time.sleep(max(0.0, 0.5 - (time.monotonic() - t)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routers", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--top", type=int, default=25, help="log line kinds shown")
    ap.add_argument("--restart", type=int, default=0, help="then restart this many")
    ap.add_argument("--settle", type=float, default=60.0, help="s before the restart")
    ap.add_argument("--seed", type=int, default=23, help="as bench.scale's")
    ap.add_argument("--profile", type=int, default=0, metavar="S",
                    help="py-spy s1 for S s from the restart")
    ap.add_argument("--profile-out", default="/tmp/scale-restart-s1.collapsed.txt")
    args = ap.parse_args()
    n = args.routers
    if not 0 <= args.restart <= n - 2:
        ap.error(f"--restart must be 0..{n - 2}")
    kinds: collections.Counter[str] = collections.Counter()
    with Lab() as lab:
        sl = ScaleLab(lab, n)
        try:
            names: dict[int, str] = {}
            timeline(sl, n, sl.start(range(n)), args.seconds, names, set())
            skip = {i: 0 for i in range(n)}
            if args.restart:
                time.sleep(args.settle)
                restarted = set(random.Random(args.seed).sample(range(1, n), args.restart))
                print(f"restarting {sorted(f's{i + 1}' for i in restarted)}", flush=True)
                skip = {i: len(_lines(sl, i)) for i in range(n)}  # logs are appended to
                others = {i: sl.router_pid(i) for i in range(n) if i not in restarted}
                c0 = sl.get(0, "/status")["counters"]
                before = sum(cpu_ticks(pid) for pid in others.values())
                sl.stop(restarted)
                t_last = sl.start(restarted)
                spy = None
                if args.profile:
                    spy = subprocess.Popen(
                        [str(pathlib.Path(sys.executable).parent / "py-spy"), "record", "--pid",
                         str(others[0]), "--rate", "50", "--duration", str(args.profile),
                         "--format", "raw", "--output", args.profile_out],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                timeline(sl, n, t_last, args.seconds, names, restarted)
                took = time.monotonic() - t_last
                hz = os.sysconf("SC_CLK_TCK")
                o_cpu = (sum(cpu_ticks(pid) for pid in others.values()) - before) / hz
                r_cpu = sum(cpu_ticks(sl.router_pid(i)) for i in restarted) / hz
                print(f"CPU over the {took:.1f} s: the {len(others)} others {o_cpu:.1f} s "
                      f"({o_cpu / len(others):.2f} each), the {len(restarted)} restarted "
                      f"{r_cpu:.1f} s ({r_cpu / len(restarted):.2f} each, start-up "
                      f"included)", flush=True)
                c1 = sl.get(0, "/status")["counters"]
                grew = sorted(((c1[k] - c0.get(k, 0), k) for k in c1
                               if isinstance(c1[k], int | float) and c1[k] != c0.get(k, 0)),
                              reverse=True)
                print("s1's counters over the restart (node, not per link): " + ", ".join(
                    f"{k} +{v:g}" for v, k in grew[:30]), flush=True)
                if spy is not None:
                    spy.wait(args.profile + 30)
            for i in range(n):
                for line in _lines(sl, i)[skip[i]:]:
                    kinds[_MASK.sub("#", line[24:])[:100]] += 1
        finally:
            sl.stop(range(n))
            sl.close()
    for text, count in kinds.most_common(args.top):
        print(f"{count:6d} {text}")


def _lines(sl: ScaleLab, i: int) -> list[str]:
    r = sl.members[i].router
    return [] if r is None else r.log().splitlines()


if __name__ == "__main__":
    main()
