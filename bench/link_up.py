"""How long a new link takes to be "established" at both ends: ``python3 -m bench.link_up``.

Two nodes in one process (memory ports, real UDP and TCP on 127.0.0.1, no root): the time
from the dialler's start to each end's link showing "established" (authenticated UDP both
ways, confirmed, path MTU known), repeated. Before 4088d44 the accepting end took about a
second: its first PMTU probe went into the guess hold's drop (links.link.GUESS_HOLD) and
the search waited for the probe timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

from sleeve.capture.memory import MemoryPort
from sleeve.config import Config, Target
from sleeve.crypto.noise import KeyPair
from sleeve.node import Node


def _node(peers: tuple[Target, ...] = ()) -> Node:
    cfg = Config(psk=b"k" * 32, port=0, listen="127.0.0.1", peers=peers, http=None,
                 state_dir=pathlib.Path(tempfile.mkdtemp(prefix="sleeve-linkup-")))
    return Node(cfg, MemoryPort(), static=KeyPair.generate())


def _up(n: Node) -> bool:
    return any(lk.state == "established" for lk in n.links.values())


async def one(timeout: float = 10.0) -> tuple[float, float]:
    """(dialler, accepting end) seconds from the dialler's start to "established"."""
    b = _node()
    tb = asyncio.create_task(b.run())
    while b.udp is None or b.port is None:
        await asyncio.sleep(0.005)
    a = _node((Target("127.0.0.1", b.udp_port),))
    t0 = time.monotonic()
    ta = asyncio.create_task(a.run())
    at: dict[str, float] = {}
    try:
        while len(at) < 2:
            now = time.monotonic()
            if now - t0 > timeout:
                raise TimeoutError(f"not established within {timeout} s: {at}")
            for name, n in (("a", a), ("b", b)):
                if name not in at and _up(n):
                    at[name] = now - t0
            await asyncio.sleep(0.002)
    finally:
        a.stop()
        b.stop()
        await asyncio.wait_for(asyncio.gather(ta, tb), 10)
    return at["a"], at["b"]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.link_up",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="links made, one after another (5)")
    args = ap.parse_args(argv)
    if not 1 <= args.repeats <= 100:
        ap.error("--repeats must be 1..100")
    import logging
    logging.disable(logging.WARNING)  # "dns: off" and the like, once per node
    runs = [asyncio.run(one()) for _ in range(args.repeats)]
    for name, i in (("dialler", 0), ("accepting end", 1)):
        xs = [r[i] * 1000 for r in runs]
        print(f"{name}: established after {statistics.median(xs):.1f} ms median "
              f"({min(xs):.1f}..{max(xs):.1f}) over {len(xs)} links")
    return 0


if __name__ == "__main__":
    sys.exit(main())
