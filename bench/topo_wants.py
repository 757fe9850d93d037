"""Cost of a topology digest with the want table empty vs full (issue 23 review, finding 2).

    python3 -m bench.topo_wants [--digests 20000] [--repeats 5]

In process, no sockets, no lab: one ``TopologyChannel`` (the router's own) receives
``--digests`` empty 5-byte digests from a neighbour, and the CPU time per digest
(``time.process_time``) is measured. Two subjects, interleaved A B A B ...:

- ``empty``: no wants in flight;
- ``full``: ``MAX_RECORDS`` wants in flight, left by made-up digests of 10,000 random
  peer ids each from 10 neighbours (each neighbour's quota, ``WANT_QUOTA``, caps what
  one of them fills), none expired during the measurement.

Before the fix every digest scanned the whole table to prune expired wants (the review
measured ~220 us per digest with the table full); the table is now kept in deadline
order and pruned from the front, so ``full / empty`` should stay near 1. Results:
stdout and ``bench/results/scale/topo-wants-*.md``. To measure another tree (e.g. the
code before the fix), run the module from that tree's directory with
``PYTHONPATH=<that tree> python3 <this file>``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import pathlib
import statistics
import time

from sleeve.crypto.keys import Signer
from sleeve.gossip.topology import TopologyChannel
from sleeve.mesh import Mesh
from sleeve.proto.topodigest import DIGEST, ENTRY, _pack
from sleeve.proto.topology import MAX_RECORDS

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "scale"
LIARS = 10


class _Quiet:
    def reply(self, peer: bytes, data: object) -> None:
        pass

    def neighbours(self, data: object) -> None:
        pass


def run_once(kind: str, digests: int, seed: int) -> float:
    """Microseconds of CPU per empty digest."""
    s = Signer(hashlib.blake2b(b"topo-wants%d" % seed, digest_size=32).digest())
    ch = TopologyChannel(Mesh(s, "bench", 1), lambda p: (1, b"\0" * 32))
    ch.gossip_handle = _Quiet()  # type: ignore[assignment]
    if kind == "full":
        for i in range(LIARS):
            fake = sorted(os.urandom(8) for _ in range(MAX_RECORDS))
            body = b"".join(ENTRY.pack(p, 1, 1, b"\0" * 8) for p in fake)
            ch.on_gossip(bytes([i + 1]) * 8, _pack([DIGEST, 0, body]), 100.0)
        # (``_asked``: the table before the fix, for a run against an older tree)
        table = getattr(ch, "wants", None) or getattr(ch, "_asked", ())
        assert len(table) == MAX_RECORDS, len(table)
    tiny = _pack([DIGEST, 0, b""])
    src = b"\xee" * 8
    t0 = time.process_time()
    for _ in range(digests):
        ch.on_gossip(src, tiny, 101.0)  # within WANT_TIMEOUT: nothing expires
    return (time.process_time() - t0) / digests * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.topo_wants",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--digests", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not 100 <= args.digests <= 1_000_000 or not 3 <= args.repeats <= 50:
        ap.error("--digests 100..1000000, --repeats 3..50")
    runs: dict[str, list[float]] = {"empty": [], "full": []}
    for r in range(args.repeats):
        for kind in ("empty", "full"):  # interleaved A B A B
            runs[kind].append(run_once(kind, args.digests, r))
    med = {k: statistics.median(v) for k, v in runs.items()}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    lines = [f"# Topology digest cost, want table empty vs full ({stamp})", "",
             f"Command: `python3 -m bench.topo_wants --digests {args.digests} --repeats "
             f"{args.repeats}` (method: the module docstring); load average "
             f"{os.getloadavg()[0]:.2f}.", "",
             "| subject | us CPU per 5-byte digest: median (min..max) |", "|---|---|"]
    for k, v in runs.items():
        lines.append(f"| {k} | {med[k]:.2f} ({min(v):.2f}..{max(v):.2f}) |")
    lines += ["", f"full / empty: {med['full'] / med['empty']:.2f}"]
    md = "\n".join(lines) + "\n"
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"topo-wants-{stamp}.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
