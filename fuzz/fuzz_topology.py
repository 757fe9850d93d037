"""Fuzz the gossip decoder ``topology.decode_records`` and the merge it feeds.

The whole input is one received topology message (msgpack). Checked:

- only ``TopologyDecodeError`` escapes ``decode_records``;
- a decoded message satisfies every documented bound, re-encodes with ``encode_records``
  to a message that decodes to the same records, and each record's ``canonical()`` form
  decodes back to the record (one valid form per record);
- merging the records into a ``Topology`` (records about ourselves included) never
  raises, merging them again changes nothing, and GC runs on the result.

Run: ``python3 -m fuzz.fuzz_topology [libFuzzer flags] [corpus dirs]`` (or fuzz.run).
"""

from __future__ import annotations

from fuzz.common import fuzz_main
from sleeve.proto import topology as topo
from sleeve.proto.topology import PeerRecord, Topology, TopologyDecodeError

# "Us": a peer id the seeds use too, so records about ourselves are easy to reach.
ME = bytes.fromhex("0101010101010101")


def _check_record(r: PeerRecord) -> None:
    assert len(r.peer) == topo.PEER_ID_LEN and len(r.nickname) <= topo.MAX_NICK
    assert 0 < r.uid <= topo.MAX_U64 and 0 <= r.version <= topo.MAX_U64
    assert len(r.sig) <= topo.MAX_SIG and len(r.conns) <= topo.MAX_CONNS
    peers = [c.peer for c in r.conns]
    assert peers == sorted(set(peers)) and r.peer not in peers
    for c in r.conns:
        assert len(c.addr) <= topo.MAX_ADDR
        assert type(c.outbound) is bool and type(c.established) is bool
    # [FORMAT, [record]] is fixarray(2), FORMAT, fixarray(1), then the record itself:
    # a record's canonical bytes are exactly what encode_records puts on the wire.
    one = topo.encode_records([r])
    assert one == bytes([0x92, topo.FORMAT, 0x91]) + r.canonical()
    assert topo.decode_records(one) == [r]
    assert r.signed_bytes().startswith(b"sleeve-peer-record-v1")


def _check_merge(recs: list[PeerRecord]) -> None:
    t = Topology(ME, "me", 1)
    t.merge(recs)
    # Idempotence, except for the known version-saturation case: a record about us at
    # version 2**64-1 makes us "outbid" it with a version that cannot grow (reported in
    # fuzz/README.md); every repeat then re-gossips our record.
    if not any(r.peer == ME and r.version == topo.MAX_U64 for r in recs):
        assert t.merge(recs) == [], "merging the same records twice changed the view"
    t.reachable()
    t.gc(0.0)
    t.gc(t.gc_delay + 1.0)
    assert t.get(ME) is not None  # GC never drops ourselves


def test_one_input(data: bytes) -> None:
    try:
        recs = topo.decode_records(data)
    except TopologyDecodeError:
        return
    assert len(recs) <= topo.MAX_RECORDS
    for r in recs:
        _check_record(r)
    assert topo.decode_records(topo.encode_records(recs)) == recs
    _check_merge(recs)


if __name__ == "__main__":
    fuzz_main(test_one_input)
