"""Topology gossip while a full mesh forms and restarts, digest vs full-state anti-entropy.

    python3 -m bench.topo_digest [--peers 50] [--restart 10] [--repeats 3]

In process, no sockets, no lab: N ``TopologyChannel``s (the router's own topology
channel, with real Ed25519 signing and verification) on the gossip fabric
(``sleeve.gossip.fabric``, which applies ``PerNeighbour`` as the router does). Two
subjects, interleaved A B A B ...:

- ``digest``: the channel as it is (a new link sends a digest, the other side wants
  only what it lacks);
- ``full``: the channel as before the digest: ``gossip()`` returns every record (each
  new link swaps the complete state both ways) and a neighbour's news is relayed as
  records, not digest entries.

Scenario (what bench/scale.py does with real routers, minus time and the data plane):
each peer starts linked to 3 others (ring neighbours and a chord, as ``lab.scale``);
then the remaining pairs link one at a time in a random order (seeded), each new link
followed by both ends publishing their record (own-record pacing is not modelled: every
gain is published); then ``--restart`` peers restart (same key, new incarnation) and
link to every other peer again. Per phase: topology bytes and messages delivered, and
the CPU seconds of the whole simulation (``time.process_time``: encode, decode, verify,
merge of every peer). Results: stdout and ``bench/results/scale/topo-digest-*.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import pathlib
import random
import statistics
import time
from typing import Any

from sleeve.crypto.keys import Signer
from sleeve.gossip.fabric import Fabric
from sleeve.gossip.topology import RelayedTopology, TopologyChannel, TopologyData
from sleeve.lab.scale import initial_peers
from sleeve.mesh import LinkInfo, Mesh
from sleeve.proto.gossip import GossipData

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "scale"


class RecordsRelay(RelayedTopology):
    """A relayed delta as it was before the digest: the records themselves."""

    __slots__ = ()

    def for_neighbour(self, peer: bytes) -> GossipData | None:
        d = super().for_neighbour(peer)
        return None if not isinstance(d, TopologyData) else TopologyData(self._mesh, d.digest)


class FullStateChannel(TopologyChannel):
    """The channel before the digest: a new link (and anti-entropy) gets every record,
    and a neighbour's news is relayed as records."""

    def gossip(self) -> GossipData | None:
        return TopologyData(self.mesh, self.mesh.topology.peers())

    def on_gossip(self, src: bytes, msg: bytes, now: float) -> GossipData | None:
        delta = super().on_gossip(src, msg, now)
        if isinstance(delta, RelayedTopology):
            return RecordsRelay(self.mesh, delta.digest)
        return delta


class Sim:
    def __init__(self, n: int, kind: str, seed: int) -> None:
        self.f = Fabric()
        self.kind = kind
        self.rnd = random.Random(seed)
        self.signers = [Signer(hashlib.blake2b(b"topo-digest%d" % i, digest_size=32).digest())
                        for i in range(n)]
        self.ids = [s.peer_id for s in self.signers]
        self.meshes: dict[bytes, Mesh] = {}
        self.channels: dict[bytes, TopologyChannel] = {}
        self.t = 0.0
        for i in range(n):
            self.start(i, i + 1)

    def start(self, i: int, uid: int) -> None:
        p = self.ids[i]
        mesh = Mesh(self.signers[i], f"s{i + 1}", uid)
        cls = TopologyChannel if self.kind == "digest" else FullStateChannel
        ch = cls(mesh, self._neighbour)
        ch.gossip_handle = self.f.add(p)  # type: ignore[assignment]
        self.f.attach(p, ch)
        self.meshes[p], self.channels[p] = mesh, ch

    def _neighbour(self, p: bytes) -> tuple[int, bytes] | None:
        m = self.meshes.get(p)
        return None if m is None else (m.topology.own.uid, m.topology.own.key)

    def publish(self, p: bytes) -> None:
        self.t += 2.0  # past OWN_RECORD_INTERVAL: each gain is published
        self.channels[p].sync_links(
            [LinkInfo(q, f"198.18.{self.ids.index(q) // 250}.{self.ids.index(q) % 250 + 1}"
                      ":6783", True, True) for q in sorted(self.f.peers[p].neighbours)],
            self.t)

    def link(self, a: bytes, b: bytes) -> None:
        self.f.connect(a, b)  # both ends' gossip(), as LinkTable.on_up -> GossipRouter
        self.f.run()
        self.publish(a)
        self.publish(b)
        self.f.run()

    def agreed(self) -> bool:
        views = {tuple(sorted((r.peer, r.version, r.uid) for r in m.topology.records()))
                 for m in self.meshes.values()}
        return len(views) == 1

    def phase(self, fn: Any) -> dict[str, float]:
        b0, m0, c0 = self.f.bytes_sent, self.f.msgs_sent, time.process_time()
        fn()
        assert self.agreed(), f"{self.kind}: views differ after the phase"
        return {"bytes": self.f.bytes_sent - b0, "msgs": self.f.msgs_sent - m0,
                "cpu_s": time.process_time() - c0}


def run_once(n: int, restart: int, kind: str, seed: int) -> dict[str, dict[str, float]]:
    sim = Sim(n, kind, seed)
    ids = sim.ids

    def initial() -> None:
        for i in range(n):
            for j in initial_peers(i, n, 3):
                if ids[j] not in sim.f.peers[ids[i]].neighbours:
                    sim.link(ids[i], ids[j])

    def discovery() -> None:
        pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]
                 if b not in sim.f.peers[a].neighbours]
        sim.rnd.shuffle(pairs)
        for a, b in pairs:
            sim.link(a, b)

    def restarts() -> None:
        who = sorted(sim.rnd.sample(range(1, n), restart))
        for i in who:
            sim.f.remove(ids[i])
        for k, i in enumerate(who):
            sim.start(i, 1000 + k)
        for i in who:
            for j in range(n):
                if j != i and ids[j] not in sim.f.peers[ids[i]].neighbours:
                    sim.link(ids[i], ids[j])

    return {"initial links": sim.phase(initial), "full mesh by discovery": sim.phase(discovery),
            f"{restart} restarted, relinked to all": sim.phase(restarts)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.topo_digest",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=50)
    ap.add_argument("--restart", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=23)
    ap.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = ap.parse_args(argv)
    if not 4 <= args.peers <= 200 or not 1 <= args.restart < args.peers or args.repeats < 1:
        ap.error("--peers 4..200, --restart 1..peers-1, --repeats >= 1")
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"digest": [], "full": []}
    for r in range(args.repeats):
        for kind in ("digest", "full"):  # interleaved A B A B
            runs[kind].append(run_once(args.peers, args.restart, kind, args.seed + r))
            print(f"repeat {r + 1} {kind}: done", flush=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    lines = [f"# Topology gossip, digest vs full state ({args.peers} peers, in process, {stamp})",
             "", f"Command: `python3 -m bench.topo_digest --peers {args.peers} --restart "
             f"{args.restart} --repeats {args.repeats}` (method: the module docstring); "
             f"load average before the last repeat {os.getloadavg()[0]:.2f}.", "",
             "| phase | measure | digest: median (min..max) | full state: median (min..max) "
             "| digest / full |", "|---|---|---|---|---|"]
    for ph in runs["digest"][0]:
        for what in ("bytes", "msgs", "cpu_s"):
            med = {}
            cells = []
            for kind in ("digest", "full"):
                xs = [run[ph][what] for run in runs[kind]]
                med[kind] = statistics.median(xs)
                fmt = "{:.2f}" if what == "cpu_s" else "{:,.0f}"
                cells.append(f"{fmt.format(med[kind])} ({fmt.format(min(xs))}.."
                             f"{fmt.format(max(xs))})")
            ratio = med["digest"] / med["full"] if med["full"] else float("nan")
            lines.append(f"| {ph} | {what} | {cells[0]} | {cells[1]} | {ratio:.3f} |")
    md = "\n".join(lines) + "\n"
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"topo-digest-{args.peers}-{stamp}.md").write_text(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
