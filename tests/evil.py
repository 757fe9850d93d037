"""A test-only forger: what a member acting as a relay could try against its peers.

Never imported by ``sleeve`` (the production CLI cannot reach it); the in-process
tests drive ``forge_round`` on a node directly, the lab runs it in a real router
through ``tests/evil_router.py``. Each round, towards every neighbour, for every
address EVIL has learnt from another peer:

1. ``claim``: EVIL's own frame (a direct record, authentic as EVIL's) with the victim's
   source MAC: a MAC takeover;
2. ``unauth``: a relayed record naming another peer as source, without any proof;
3. ``own_tag``: the same with EVIL's *own* valid tag for the neighbour, under the other
   peer's name;
4. ``bcast``: a broadcast naming another peer as source, signed by EVIL's key;
5. ``src_only``: a record with a source id and neither destination nor broadcast.

The frames are broadcasts of a local experimental EtherType (0x88b5): every kernel
ignores them, so only the routers' MAC tables could be hurt.
"""

from __future__ import annotations

import time

from sleeve.node import Node
from sleeve.proto import datagram as dg
from sleeve.proto.mactable import LOCAL

BCAST = b"\xff" * 6
ETHERTYPE = b"\x88\xb5"
KINDS = ("claim", "unauth", "own_tag", "bcast", "src_only")


def forged_frame(src_mac: bytes) -> bytes:
    return BCAST + src_mac + ETHERTYPE + b"evil says this is mine" + bytes(24)


def forge_round(node: Node, sent: dict[str, int] | None = None) -> dict[str, int]:
    """Queue one round of forgeries on every usable link; return counts by kind."""
    sent = {} if sent is None else sent
    for k in KINDS:
        sent.setdefault(k, 0)
    now = time.monotonic()
    me = node.id
    victims = [(m, o) for m, o, _age in node.macs.entries(now) if o not in (LOCAL, me)]
    peers = [p for p in node.mesh.topology.peers() if p != me]
    for link in list(node.table):
        if not link.usable:
            continue
        n = link.peer
        for mac, owner in victims:
            f = forged_frame(mac)
            if owner != n:
                node.egress.queue(link, dg.frame_record(f))
                sent["claim"] += 1
            for p in peers:
                if p == n:
                    continue
                node.egress.queue(link, dg.encode_record(dg.KIND_FRAME, f, src=p, dst=n,
                                                         hops=dg.MAX_HOPS))
                own = node.origin.seal(n, dg.KIND_FRAME, f)
                if own is not None:
                    node.egress.queue(link, dg.encode_record(dg.KIND_FRAME, f, src=p, dst=n,
                                                             hops=dg.MAX_HOPS, auth=own))
                    sent["own_tag"] += 1
                node.egress.queue(link, dg.encode_record(
                    dg.KIND_FRAME, f, src=p, hops=dg.MAX_HOPS, bcast=True,
                    auth=node.origin.sign(dg.KIND_FRAME, f)))
                node.egress.queue(link, dg.encode_record(dg.KIND_FRAME, f, src=p))
                sent["unauth"] += 1
                sent["bcast"] += 1
                sent["src_only"] += 1
    node.egress.flush_touched()
    return sent
