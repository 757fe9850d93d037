"""IPAM allocation latency through real routers in namespaces (needs root).

Two routers: A (``consensus=1``: owns the whole range after its first allocation) and B
(``observer``: owns nothing, learns the ring). A client inside each namespace times
``POST /ipam/allocate`` on its own router's HTTP API (no CLI start-up in the numbers):

- local: A allocates from its own range (the state file is written before each answer);
- donated: B allocates each time in a fresh /28 it does not own, so every allocation
  waits for a SPACE_REQ -> GRANT round trip to A over the mesh.

Run: ``flock /tmp/sleeve-lab.lock python3 -m bench.ipam_lab`` -> bench/results/ipam-lab.md
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from sleeve.lab import Lab
from sleeve.lab.routers import Router, established_with, workdir

OUT = Path(__file__).parent / "results" / "ipam-lab.md"
RANGE = "198.19.128.0/18"
N_LOCAL = 200
N_DONATED = 50

CLIENT = """
import json, sys, time, urllib.parse
from sleeve.status.client import Endpoint, call
out = []
for arg in sys.argv[2:]:
    oid, _, subnet = arg.partition("@")
    q = urllib.parse.urlencode({"id": oid, **({"subnet": subnet} if subnet else {})})
    t = time.perf_counter()
    call(Endpoint(unix=sys.argv[1]), "POST", f"/ipam/allocate?{q}", timeout=30)
    out.append(time.perf_counter() - t)
print(json.dumps(out))
"""


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> int:
    t_start = time.monotonic()
    with Lab() as lab:
        sw = lab.switch()
        a, b = lab.host("ba"), lab.host("bb")
        lab.connect(a, sw, "198.18.3.1/24")
        lab.connect(b, sw, "198.18.3.2/24")
        wd = workdir()
        common = ["--ipalloc-range", RANGE]
        ra = Router(a, [*common, "--ip", "198.19.3.1/24", "--ipalloc-init", "consensus=1"],
                    wd, "ipam bench")
        rb = Router(b, [*common, "--ip", "198.19.3.2/24", "--ipalloc-init", "observer",
                        "198.18.3.1"], wd, "ipam bench")
        ra.wait(established_with(1), 30, "mesh")
        rb.wait(established_with(1), 30, "mesh")

        def run(rt: Router, args: list[str]) -> list[float]:
            r = rt.host.run(sys.executable, "-c", CLIENT, str(rt.api_socket), *args,
                            timeout=300)
            out: list[float] = json.loads(r.stdout)
            return out

        run(ra, ["warm"])  # first allocation: consensus of one, ring seeded
        rb.wait(lambda s: s["ipam"]["consensus"]["state"] == "done", 20, "B learnt the ring")
        local = run(ra, [f"l{i}" for i in range(N_LOCAL)])
        # fresh /28s from the top of the range (A's first allocations are at the bottom)
        subnets = [f"198.19.{191 - i // 16}.{(i % 16) * 16}/28" for i in range(N_DONATED)]
        donated = run(rb, [f"d{i}@{s}" for i, s in enumerate(subnets)])
        stb = rb.status()["ipam"]
        grants = stb["counters"].get("grants_received", 0)
    ms = 1000.0
    rows = [
        ("allocate from the router's own range (A), median / p90 / p99",
         f"{pct(local, .5) * ms:.2f} / {pct(local, .9) * ms:.2f} / {pct(local, .99) * ms:.2f} ms"),
        ("allocate needing a donation (B asks A over the mesh), median / p90 / p99",
         f"{pct(donated, .5) * ms:.2f} / {pct(donated, .9) * ms:.2f} / "
         f"{pct(donated, .99) * ms:.2f} ms"),
        ("donations received by B for its allocations", f"{grants} for {N_DONATED}"),
    ]
    text = "\n".join([
        "# IPAM allocation latency through real routers (bench/ipam_lab.py)", "",
        f"Two routers in network namespaces on one machine ({platform.machine()}, "
        f"Python {platform.python_version()}), encrypted mesh, range {RANGE}; a client in "
        f"each namespace times `POST /ipam/allocate` on its own router, sequentially "
        f"({N_LOCAL} local, {N_DONATED} donated); total {time.monotonic() - t_start:.0f} s.",
        "", "| measure | value |", "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in rows], "",
        "Local allocations include the atomic write of the state file (fsync) before the "
        "answer. A donation adds a SPACE_REQ/GRANT round trip to the donor (the GRANT "
        "carries the donor's full ring) and the requester's own state write.",
        ""])
    OUT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
