"""/metrics reads a light status view: O(links), not O(MACs), on the event loop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sleeve.capture.memory import MemoryPort
from sleeve.node import Node
from sleeve.status.metrics import metrics_route
from tests.test_node_inproc import established, pair, wait_for


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


class CountOnly:
    """A MAC table that can only be counted: listing it fails the test."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def entries(self, _now: float) -> list[Any]:
        raise AssertionError("a scrape listed the MAC table")


def test_metrics_view_gives_the_same_metrics_without_listing_macs() -> None:
    async def body(a: Node, _pa: MemoryPort, b: Node, _pb: MemoryPort) -> None:
        await wait_for(lambda: established(a) and established(b))
        now = time.monotonic()
        a.macs.max_per_peer = 65536  # one peer fills the table (above the default cap)
        for i in range(65536):
            a.macs.learn_remote(b"\x02" + i.to_bytes(5, "big"), b.id, now)
        a.on_timer = lambda _now: None  # type: ignore[method-assign]  # counters hold still
        await asyncio.sleep(0.3)
        t = time.perf_counter()
        full = samples(metrics_route(a.status)({})[1])
        t_full = time.perf_counter() - t

        macs, a.macs = a.macs, CountOnly(len(a.macs))  # type: ignore[assignment]
        t = time.perf_counter()
        light = samples(metrics_route(a.metrics_status)({})[1])
        t_light = time.perf_counter() - t
        a.macs = macs
        print(f"\nscrape with 65,536 MACs: full status {t_full * 1e3:.1f} ms, "
              f"light view {t_light * 1e3:.1f} ms")
        assert light[("sleeve_mac_table_entries", ())] == 65536
        assert light[("sleeve_peers", ())] == 2
        volatile = ("sleeve_link_rtt_seconds",)
        assert {k: v for k, v in light.items() if k[0] not in volatile} == \
            {k: v for k, v in full.items() if k[0] not in volatile}
        assert t_light < t_full / 5

    asyncio.run(pair(body))
