"""Per-frame cost of the source proofs on relayed and broadcast records (proto.origin).

Same conventions as test_micro.py (64 operations per timed call, ratios to a baseline of
the same run): ``origin seal`` is what the source adds per relayed frame, ``origin check``
what the destination adds (tag + replay window), ``bcast sign`` / ``bcast verify`` the
same for a broadcast. Direct frames pay none of these. Run:
``python -m pytest -q bench/test_origin_micro.py --benchmark-only --benchmark-min-rounds=5``.
"""

from __future__ import annotations

import pytest

from bench.test_micro import OPS, Benchmark, ethernet, run
from sleeve.crypto.keys import Signer
from sleeve.proto import datagram as dg
from sleeve.proto.origin import OriginAuth

SIZES = (64, 1400)


def _pair() -> tuple[OriginAuth, OriginAuth, bytes, bytes]:
    sa, sc = Signer(bytes(range(32))), Signer(bytes(range(32, 64)))
    ids = {sa.peer_id: (sa.public, 1), sc.peer_id: (sc.public, 2)}
    return (OriginAuth(sa, 1, ids.get), OriginAuth(sc, 2, ids.get), sa.peer_id, sc.peer_id)


@pytest.mark.benchmark(group="origin")
@pytest.mark.parametrize("size", SIZES)
def test_origin_seal(benchmark: Benchmark, size: int) -> None:
    a, _c, _aid, cid = _pair()
    frame = ethernet(size)
    seal = a.seal

    def seal_all() -> None:
        for _ in range(OPS):
            seal(cid, dg.KIND_FRAME, frame)

    run(benchmark, seal_all, label=f"origin seal {size}", baseline=f"baseline copy {size}")


@pytest.mark.benchmark(group="origin")
@pytest.mark.parametrize("size", SIZES)
def test_origin_check(benchmark: Benchmark, size: int) -> None:
    a, c, aid, cid = _pair()
    frame = ethernet(size)
    n = 200 * OPS  # fresh records for every round pytest-benchmark may run
    recs = [next(dg.iter_records(dg.encode_record(dg.KIND_FRAME, frame, src=aid, dst=cid,
                                                  hops=3, auth=a.seal(cid, dg.KIND_FRAME,
                                                                      frame))))
            for _ in range(n)]
    it = iter(recs)
    check = c.check

    def check_all() -> None:
        for _ in range(OPS):
            assert check(aid, next(it)) is None

    benchmark.extra_info.update(label=f"origin check {size}", baseline=f"baseline copy {size}",
                                ops=OPS)
    benchmark.pedantic(check_all, rounds=100, iterations=1)


@pytest.mark.benchmark(group="origin")
def test_bcast_sign(benchmark: Benchmark) -> None:
    a, _c, _aid, _cid = _pair()
    frame = ethernet(64)

    def sign_all() -> None:
        for _ in range(OPS):
            a.sign(dg.KIND_FRAME, frame)

    run(benchmark, sign_all, label="bcast sign 64", baseline="baseline copy 64")


@pytest.mark.benchmark(group="origin")
def test_bcast_verify(benchmark: Benchmark) -> None:
    a, c, aid, _cid = _pair()
    frame = ethernet(64)
    recs = [next(dg.iter_records(dg.encode_record(dg.KIND_FRAME, frame, src=aid, hops=3,
                                                  bcast=True,
                                                  auth=a.sign(dg.KIND_FRAME, frame))))
            for _ in range(20 * OPS)]
    it = iter(recs)
    check = c.check

    def verify_all() -> None:
        for _ in range(OPS):
            assert check(aid, next(it)) is None

    benchmark.extra_info.update(label="bcast verify 64", baseline="baseline copy 64", ops=OPS)
    benchmark.pedantic(verify_all, rounds=20, iterations=1)
