"""What a forming 50-router mesh waits on (issue 23, "Scale"), as a timeline:

    flock /tmp/sleeve-lab.lock python3 -m bench.scale_timeline [--routers 50]

Root; the lab of ``bench.scale`` (``sleeve.lab.scale.ScaleLab``). All routers start at
once; every 0.5 s (or as soon as the previous round of ``GET /routes`` came back: a
round takes as long as the slowest router takes to answer, up to the 5 s timeout) one
line: seconds since the last start, routers that answered, routers with routes to all,
and the (router, destination) pairs still lacking a route or having one whose next hop
is not an established link. Stops at routes to all (or ``--seconds``); then the most
frequent lines of the routers' logs, with ids, names and numbers masked (handshake
timeouts, duplicates, switches to TCP...). Prints only; nothing written.
"""

from __future__ import annotations

import argparse
import collections
import re
import time

from sleeve.lab import Lab
from sleeve.lab.scale import ScaleLab

_MASK = re.compile(r"\b[0-9a-f]{2}(:[0-9a-f]{2}){5,7}\b|\bs\d+\b|\d+(\.\d+)*")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routers", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--top", type=int, default=25, help="log line kinds shown")
    args = ap.parse_args()
    n = args.routers
    with Lab() as lab:
        sl = ScaleLab(lab, n)
        try:
            t_last = sl.start(range(n))
            names: dict[int, str] = {}
            while time.monotonic() < t_last + args.seconds:
                t = time.monotonic()
                views = sl.poll(range(n))
                names.update({i: v["name"] for i, v in views.items()})
                ok = absent = unusable = 0
                for i, v in views.items():
                    if len(names) < n:
                        break
                    routes = {r["destination"]: r["usable"] for r in v["routes"]}
                    lack = [names[j] for j in range(n) if j != i and names[j] not in routes]
                    bad = [d for d, usable in routes.items() if not usable]
                    absent += len(lack)
                    unusable += len(bad)
                    ok += not lack and not bad
                print(f"t={t - t_last:6.2f} s  answered {len(views):3d}  routes to all {ok:3d}"
                      f"  pairs without a route {absent:5d}, with an unusable one {unusable:4d}"
                      f"  (round {time.monotonic() - t:.1f} s)", flush=True)
                if ok == n:
                    break
                time.sleep(max(0.0, 0.5 - (time.monotonic() - t)))
            kinds: collections.Counter[str] = collections.Counter()
            for m in sl.members:
                if m.router is not None:
                    for line in m.router.log().splitlines():
                        kinds[_MASK.sub("#", line[24:])[:100]] += 1
        finally:
            sl.stop(range(n))
            sl.close()
    for text, count in kinds.most_common(args.top):
        print(f"{count:6d} {text}")


if __name__ == "__main__":
    main()
