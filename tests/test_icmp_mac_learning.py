"""A relay's ICMP "too big" never teaches the far host's MAC (forward.ingress).

The relay that cannot carry a frame answers the sender with ICMP from the far host's MAC
and IP (forward.oversize), so the sender's stack matches it to the flow. Learning that
source would move the far host's MAC to the relay: refused while the far host's entry is
held (``mac_takeover``), but taken once the far host had been silent past the hold, and
the sender's frames to the far host then went to the relay until the host spoke again.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from scapy.layers.inet import ICMP, Ether

from sleeve.forward import relayseg
from sleeve.forward.egress import relayed_mtu
from sleeve.proto import datagram as dg
from sleeve.proto import vnet
from sleeve.proto.mactable import HOLD
from tests.test_mesh_inproc import mac
from tests.test_node_inproc import BCAST, frame, wait_for
from tests.test_relayseg import MAX_BODY, chain, relayable
from tests.test_relayseg_paths import _df


@pytest.mark.parametrize("far_silent", [0.0, HOLD + 5.0])
def test_the_relays_icmp_leaves_the_far_hosts_mac_where_it_is(far_silent: float) -> None:
    async def run() -> None:
        async with chain() as (a, pa, r, _pr, c, pc):
            pc.inject(vnet.ZERO_HDR + frame(BCAST, mac(3), b"arp from c"))  # A learns C's MAC
            await wait_for(lambda: len(pa.delivered) == 1)
            assert a.macs.lookup(mac(3), time.monotonic()) == c.id
            a.macs._t[mac(3)].seen -= far_silent  # C has been quiet this long
            raw = _df(relayable(5000, dst=mac(3), src=mac(1)))
            recs = relayseg.cut(raw, 5, MAX_BODY, a.origin, a.id, c.id)
            assert recs is not None
            smaller = len(recs[0]) + dg.HEADER_LEN + dg.TAG_LEN - 100  # R's next hop
            r.egress._too_big(r.links[c.id], recs[0], smaller,
                              smaller - dg.HEADER_LEN - dg.TAG_LEN)
            r.egress.flush_touched()  # the ICMP, relayed to A as R's own proven record
            await wait_for(lambda: len(pa.delivered) > 1, 5)
            icmp = Ether(list(pa.delivered)[1][vnet.HDR_LEN:])
            assert icmp[ICMP].type == 3 and icmp[ICMP].nexthopmtu == relayed_mtu(smaller)
            assert bytes(icmp)[6:12] == mac(3)  # from the far host's MAC, delivered
            assert a.macs.lookup(mac(3), time.monotonic()) == c.id  # and not learnt
            assert a.macs.moves == 0

    asyncio.run(run())
