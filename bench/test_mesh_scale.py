"""Gossip and routing at mesh scale, simulated in process (no sockets, no clock).

Run explicitly: ``python -m pytest bench/test_mesh_scale.py --benchmark-only``.

N peers (100, 500) form a random partial mesh: a ring (so one departure never partitions
it) plus random links until each peer has 4-8 neighbours. Every peer has its own
Topology; messages really go through ``encode_records``/``decode_records``. Gossip runs
in synchronous rounds: everything sent in a round arrives in the next; records bound for
the same neighbour in one round travel as one message (as the adapter coalesces pending
gossip per connection). A peer sends the records that improved its view to every
neighbour except the one it got them from, and its full state to a new neighbour.

Measured until every view is identical: rounds, messages and bytes, after (a) a peer
joins with 4 links, (b) a peer leaves (then every peer GCs it). The table goes to stdout
(``-s``) and ``bench/results/mesh-scale.md``. Asserted: the join costs each peer O(N)
bytes at most (the full-state sync of the newcomer's neighbours), not O(N^2) -- the mean
per peer stays flat and the total grows ~linearly.

Records are signed (Ed25519) and every peer verifies what changes its view, as the node
does; only the bootstrap (every peer learning every record before the measurement)
verifies each record once for all peers, which is what keeps setting up 500 peers fast.
The scenario times ('sim s') include signing and verification; the verification cost
per record and for a fresh peer's full-state merge are in the timing table.
"""

from __future__ import annotations

import hashlib
import pathlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sleeve.crypto.keys import Signer
from sleeve.proto.routes import broadcast_next_hops, symmetric_links, unicast_next_hops
from sleeve.proto.topology import (
    GC_DELAY,
    KEY_LEN,
    SIG_LEN,
    ConnRecord,
    PeerRecord,
    Topology,
    decode_records,
    encode_records,
    verify_record,
)

SIZES = (100, 500)
SIGNING_BYTES = 2 + KEY_LEN + 2 + SIG_LEN  # per record on the wire: bin8 key, bin8 signature
SEED = 6783
RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "mesh-scale.md"


def _signer(rnd: random.Random) -> Signer:
    # 8 random bytes per peer, as when ids were random: the same seed builds the same graph
    return Signer(hashlib.blake2b(rnd.randbytes(8), digest_size=32).digest())


class _VerifiedOnce:
    """Bootstrap only: verifies each distinct record once for the whole simulated mesh."""

    def __init__(self) -> None:
        self.ok: set[tuple[bytes, bytes]] = set()

    def __call__(self, r: PeerRecord) -> bool:
        k = (r.peer, r.sig)
        if k not in self.ok:
            if not verify_record(r):
                return False
            self.ok.add(k)
        return True


@dataclass
class Stats:
    rounds: int = 0
    messages: int = 0
    records: int = 0
    sent: dict[bytes, int] = field(default_factory=dict)  # bytes per sending peer

    def send(self, src: bytes, data: bytes, n: int) -> None:
        self.messages += 1
        self.records += n
        self.sent[src] = self.sent.get(src, 0) + len(data)


class Mesh:
    def __init__(self, n: int, seed: int) -> None:
        self.rnd = rnd = random.Random(seed)
        signers = [_signer(rnd) for _ in range(n)]
        ids = [s.peer_id for s in signers]
        self.tops = {s.peer_id: Topology(s, f"host-{i}", rnd.getrandbits(64) | 1)
                     for i, s in enumerate(signers)}
        self.nbrs: dict[bytes, set[bytes]] = {p: set() for p in ids}
        for i in range(n):
            self._link(ids[i], ids[(i + 1) % n])
        for p in ids:
            want = rnd.randint(4, 8)
            for _ in range(50):
                if len(self.nbrs[p]) >= want:
                    break
                q = rnd.choice(ids)
                if q != p and q not in self.nbrs[p] and len(self.nbrs[q]) < 8:
                    self._link(p, q)
        for p in ids:
            self._publish(p)
        everything = [t.own for t in self.tops.values()]  # bootstrap, not measured
        once = _VerifiedOnce()
        for t in self.tops.values():
            t.verify = once
            t.merge(everything)
            t.verify = verify_record  # from here on every peer verifies for itself

    def _link(self, a: bytes, b: bytes) -> None:
        self.nbrs[a].add(b)
        self.nbrs[b].add(a)

    def _publish(self, p: bytes) -> PeerRecord | None:
        return self.tops[p].set_local_connections(
            ConnRecord(q, f"198.18.{q[0]}.{q[1]}:6783", q < p, True) for q in self.nbrs[p])

    def degree(self) -> float:
        return sum(map(len, self.nbrs.values())) / len(self.nbrs)

    def gossip(self, out: dict[tuple[bytes, bytes], dict[bytes, PeerRecord]]) -> Stats:
        st = Stats()
        while out:
            st.rounds += 1
            nxt: dict[tuple[bytes, bytes], dict[bytes, PeerRecord]] = {}
            for (src, dst), recs in out.items():
                data = encode_records(recs.values())
                st.send(src, data, len(recs))
                delta = self.tops[dst].merge(decode_records(data))
                for q in self.nbrs[dst]:
                    if q != src and delta:
                        box = nxt.setdefault((dst, q), {})
                        for r in delta:
                            box[r.peer] = r
            out = nxt
        return st

    def announce(self, out: dict[tuple[bytes, bytes], dict[bytes, PeerRecord]], p: bytes,
                 rec: PeerRecord | None) -> None:
        if rec is not None:
            for q in self.nbrs[p]:
                out.setdefault((p, q), {})[p] = rec

    def join(self, k: int = 4) -> Stats:
        s = _signer(self.rnd)
        new = s.peer_id
        self.tops[new] = Topology(s, "newcomer", 12345)
        self.nbrs[new] = set()
        out: dict[tuple[bytes, bytes], dict[bytes, PeerRecord]] = {}
        targets = self.rnd.sample(sorted(p for p in self.nbrs if p != new), k)
        for q in targets:
            self._link(new, q)
        for p in (new, *targets):
            self.announce(out, p, self._publish(p))
        for q in targets:  # full state both ways over each new connection
            out.setdefault((q, new), {}).update((r.peer, r) for r in self.tops[q].records())
            out.setdefault((new, q), {}).update((r.peer, r) for r in self.tops[new].records())
        self.newcomer = new
        return self.gossip(out)

    def leave(self) -> tuple[Stats, bytes]:
        gone = self.rnd.choice(sorted(p for p in self.nbrs if p != getattr(self, "newcomer", b"")))
        del self.tops[gone]
        out: dict[tuple[bytes, bytes], dict[bytes, PeerRecord]] = {}
        for q in self.nbrs.pop(gone):
            self.nbrs[q].discard(gone)
            self.announce(out, q, self._publish(q))
        return self.gossip(out), gone

    def gc_all(self, now: float) -> dict[bytes, list[bytes]]:
        return {p: t.gc(now) for p, t in self.tops.items()}

    def agreed(self) -> bool:
        views = iter(self.tops.values())
        want = next(views).records()
        return all(t.records() == want for t in views)


def _row(scenario: str, n: int, st: Stats, mesh: Mesh, seconds: float) -> dict[str, Any]:
    per = [st.sent.get(p, 0) for p in mesh.tops]
    full = len(encode_records(next(iter(mesh.tops.values())).records()))
    return {"scenario": scenario, "n": n, "degree": mesh.degree(), "rounds": st.rounds,
            "messages": st.messages, "records": st.records, "total": sum(per),
            "mean": sum(per) / len(per), "max": max(per), "full_state": full,
            "signing": st.records * SIGNING_BYTES, "seconds": seconds}


ROWS: dict[tuple[str, int], dict[str, Any]] = {}
TIMINGS: dict[str, float] = {}
NOTES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not ROWS and not TIMINGS:
        return
    lines = ["# Mesh gossip and routing at scale (in-process simulation)", "",
             "Random partial mesh (ring + random links, 4-8 neighbours). Bytes are encoded",
             "topology messages; 'full state' is one encoding of every record, what a",
             "full-state flood would send per link per change. Records are signed: each",
             "carries its owner's Ed25519 key and signature (100 B, the 'key+sig' column).",
             "",
             "| scenario | N | mean deg | rounds | messages | records | total KiB "
             "| mean B/peer | max B/peer | full state B | of total: key+sig KiB | sim s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (_, _), r in sorted(ROWS.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        lines.append(f"| {r['scenario']} | {r['n']} | {r['degree']:.1f} | {r['rounds']} "
                     f"| {r['messages']} | {r['records']} | {r['total'] / 1024:.1f} "
                     f"| {r['mean']:.0f} | {r['max']} | {r['full_state']} "
                     f"| {r['signing'] / 1024:.1f} | {r['seconds']:.2f} |")
    if TIMINGS:
        lines += ["", "| routing (N=500) | mean |", "|---|---|"]
        lines += [f"| {k} | {v * 1e3:.3f} ms |" for k, v in TIMINGS.items()]
    if NOTES:
        lines += ["", *NOTES]
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line("")
        for line in lines:
            tr.write_line(line)


def _mean_seconds(benchmark: Any) -> float:
    return float(benchmark.stats.stats.mean) if benchmark.stats else 0.0


def _scenario(n: int, kind: str, benchmark: Any = None) -> dict[str, Any]:
    mesh = Mesh(n, SEED + n)
    assert mesh.agreed()
    holder: dict[str, Any] = {}

    def run() -> None:
        if kind == "join":
            holder["st"] = mesh.join()
        else:
            holder["st"], holder["gone"] = mesh.leave()

    if benchmark is not None:
        benchmark.pedantic(run, rounds=1, iterations=1)
        seconds = _mean_seconds(benchmark)
    else:
        run()
        seconds = 0.0
    st: Stats = holder["st"]
    if kind == "join":
        assert all(not r for r in mesh.gc_all(0.0).values())
        assert all(not r for r in mesh.gc_all(GC_DELAY).values())
        assert len(next(iter(mesh.tops.values()))) == n + 1
    else:
        assert all(not r for r in mesh.gc_all(0.0).values())
        assert all(r == [holder["gone"]] for r in mesh.gc_all(GC_DELAY).values())
        assert len(next(iter(mesh.tops.values()))) == n - 1
    assert mesh.agreed()
    row = ROWS[(kind, n)] = _row(kind, n, st, mesh, seconds)
    return row


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["join", "leave"])
def test_gossip_converges(benchmark: Any, kind: str, n: int) -> None:
    _scenario(n, kind, benchmark)


def test_join_cost_grows_linearly_not_quadratically(benchmark: Any) -> None:
    small, big = (ROWS.get(("join", n)) or _scenario(n, "join") for n in SIZES)
    scale = SIZES[1] / SIZES[0]
    # Per peer at most linear in N (in fact flat: deltas are O(1) records per link) ...
    assert big["mean"] <= 1.5 * scale * small["mean"], (small["mean"], big["mean"])
    assert big["mean"] <= 2.0 * small["mean"], (small["mean"], big["mean"])
    # ... the worst peer (a newcomer's neighbour: one full-state sync) is O(N) ...
    assert big["max"] <= 1.5 * scale * small["max"], (small["max"], big["max"])
    # ... and the whole mesh pays ~linearly, far from a full-state flood's N^2.
    assert big["total"] <= 1.5 * scale * small["total"], (small["total"], big["total"])
    assert big["total"] < big["full_state"] * SIZES[1] / 10
    mesh = Mesh(SIZES[1], SEED)
    state = mesh.tops[next(iter(mesh.tops))].records()
    benchmark(lambda: decode_records(encode_records(state)))
    TIMINGS["encode+decode full state"] = _mean_seconds(benchmark)
    per = sum(len(r.canonical()) for r in state) / len(state)
    NOTES.append(f"Mean record size at N=500: {per:.0f} B, of which 100 B are the "
                 "signing key (32 + 2) and the signature (64 + 2).")


def test_verify_one_record(benchmark: Any, mesh500: Mesh) -> None:
    r = next(iter(mesh500.tops.values())).records()[7]
    assert benchmark(verify_record, r)
    TIMINGS["verify_record (one record)"] = _mean_seconds(benchmark)


def test_fresh_peer_merges_full_state_500(benchmark: Any, mesh500: Mesh) -> None:
    """A newcomer's first full-state sync: every record is new, so every one is verified."""
    state = next(iter(mesh500.tops.values())).records()
    data = encode_records(state)
    rnd = random.Random(1)

    def run() -> None:
        t = Topology(_signer(rnd), "fresh", 1)
        assert len(t.merge(decode_records(data))) == 500

    benchmark.pedantic(run, rounds=5, iterations=1)
    TIMINGS["fresh peer: decode + verify + merge 500 records"] = _mean_seconds(benchmark)


def test_merge_known_full_state_500(benchmark: Any, mesh500: Mesh) -> None:
    """Anti-entropy between agreeing peers: nothing is new, nothing is verified."""
    tops = iter(mesh500.tops.values())
    t, other = next(tops), next(tops)
    data = encode_records(other.records())
    benchmark(lambda: t.merge(decode_records(data)))
    TIMINGS["known peer: decode + merge 500 held records"] = _mean_seconds(benchmark)


@pytest.fixture(scope="module")
def mesh500() -> Mesh:
    return Mesh(500, SEED)


def test_symmetric_links_500(benchmark: Any, mesh500: Mesh) -> None:
    t = next(iter(mesh500.tops.values()))
    links = benchmark(symmetric_links, t)
    assert len(links) == 500
    TIMINGS["symmetric_links"] = _mean_seconds(benchmark)


def test_unicast_next_hops_500(benchmark: Any, mesh500: Mesh) -> None:
    me, t = next(iter(mesh500.tops.items()))
    links = symmetric_links(t)
    hops = benchmark(unicast_next_hops, me, links)
    assert len(hops) == 499
    TIMINGS["unicast_next_hops (one table)"] = _mean_seconds(benchmark)


def test_broadcast_next_hops_500(benchmark: Any, mesh500: Mesh) -> None:
    me, t = next(iter(mesh500.tops.items()))
    links = symmetric_links(t)
    sources = sorted(links)
    benchmark(broadcast_next_hops, me, sources[250], links)
    TIMINGS["broadcast_next_hops (one source)"] = _mean_seconds(benchmark)


def test_broadcast_next_hops_500_all_sources(benchmark: Any, mesh500: Mesh) -> None:
    me, t = next(iter(mesh500.tops.items()))
    links = symmetric_links(t)
    sources = sorted(links)
    hops = benchmark.pedantic(lambda: [broadcast_next_hops(me, s, links) for s in sources],
                              rounds=3, iterations=1)
    assert sum(map(len, hops)) > 0
    TIMINGS["broadcast_next_hops (all 500 sources, cold cache)"] = _mean_seconds(benchmark)
