"""Is there an end-to-end A-B session in the ``sleeve-relayed`` topology, and for how long?

End-to-end sealed relaying (issue 23, relay5) would seal a relayed path's data under the
data keys of the A-B Noise session that hole punching runs over a relayed control
stream (``traversal/relay.py``). This builds ``bench.e2e``'s ``sleeve-relayed`` lab
(a -> r -> b, a and b blocked from each other by nft on a) and samples, every
``--every`` seconds for ``--seconds``, a's and b's connections to each other (a virtual
link: state, key epochs, key exchanges) and their punch status. Must hold the lab lock::

    flock /tmp/sleeve-lab.lock python3 -m bench.relay_e2e_link_check --seconds 100
"""

from __future__ import annotations

import argparse
import shutil
import time
from typing import Any

from bench.e2e import A_UL, B_UL, R_UL, setup_relayed, teardown_subject
from sleeve.lab import Lab
from sleeve.lab.routers import workdir


def _link_to(st: dict[str, Any], peer: str) -> dict[str, Any] | None:
    found: list[dict[str, Any]] = [c for c in st["connections"] if c["peer"] == peer]
    return found[0] if found else None


def _punch(st: dict[str, Any], peer: str) -> str:
    for p in st["traversal"]["peers"]:
        if p["peer"] == peer:
            return f"{p['state']} (attempts {p['attempts']}, next {p['next_attempt_in_s']})"
    return "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seconds", type=float, default=100.0)
    ap.add_argument("--every", type=float, default=2.0)
    args = ap.parse_args(argv)
    wd = workdir("sleeve-relay-e2e-check-")
    present = samples = 0
    try:
        with Lab() as lab:
            sw = lab.switch()
            a, b, r = lab.host("a"), lab.host("b"), lab.host("r")
            lab.connect(a, sw, f"{A_UL}/24")
            lab.connect(b, sw, f"{B_UL}/24")
            lab.connect(r, sw, f"{R_UL}/24")
            run = setup_relayed(a, b, r, wd, None)
            try:
                ra, rb = run.routers[0], run.routers[1]
                a_name, b_name = ra.status()["name"], rb.status()["name"]
                t0 = time.monotonic()
                while time.monotonic() - t0 < args.seconds:
                    sa = ra.status()
                    lk = _link_to(sa, b_name)
                    samples += 1
                    present += lk is not None
                    desc = "no link" if lk is None else (
                        f"link {lk['state']} ({lk['reason']}) epochs {lk['key_epoch']}"
                        f" kx {lk['key_exchanges']}")
                    route = [x for x in sa["routes"] if x["destination"] == b_name]
                    print(f"t={time.monotonic() - t0:5.1f}s a->b: {desc}; punch "
                          f"{_punch(sa, b_name)}; route hops "
                          f"{route[0]['hops'] if route else None}; b sees a: "
                          f"{_link_to(rb.status(), a_name) is not None}", flush=True)
                    time.sleep(args.every)
            finally:
                teardown_subject(run)
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    print(f"a held a link to b in {present} of {samples} samples")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
