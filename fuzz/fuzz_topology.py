"""Fuzz the gossip decoder ``topology.decode_records`` and the merge it feeds.

The whole input is one received topology message (msgpack). Checked:

- only ``TopologyDecodeError`` escapes ``decode_records``;
- a decoded message satisfies every documented bound (versions below 2^62, 32-byte keys,
  64-byte signatures), re-encodes with ``encode_records`` to a message that decodes to
  the same records, and each record's ``canonical()`` form decodes back to the record
  (one valid form per record);
- merging the records into a ``Topology`` that verifies signatures (records about
  ourselves included) raises only ``TopologyAuthError``, and then has changed nothing and
  names a record that really fails verification; otherwise everything it took verifies,
  and merging the records again changes nothing;
- the merge rules alone, on a ``Topology`` that trusts every record (the fuzzer cannot
  sign, so this is how it reaches them): never raise, merging twice changes nothing,
  version saturation included (fuzz/README.md finding 1), and GC runs on the result.

The seeds (fuzz/make_corpus.py) are signed by the fixed keys below, so valid records,
records about us and forgeries are all in the corpus.

Run: ``python3 -m fuzz.fuzz_topology [libFuzzer flags] [corpus dirs]`` (or fuzz.run).
"""

from __future__ import annotations

import hashlib

from fuzz.common import fuzz_main
from sleeve.crypto.keys import Signer
from sleeve.proto import topology as topo
from sleeve.proto.topology import (
    PeerRecord,
    Topology,
    TopologyAuthError,
    TopologyDecodeError,
    verify_record,
)


def fixed_signer(i: int) -> Signer:
    return Signer(hashlib.blake2b(b"sleeve fuzz peer %d" % i, digest_size=32).digest())


SIGNERS = {i: fixed_signer(i) for i in range(1, 6)}
# "Us": peer 1, whose records the seeds contain too, so records about us are easy to reach.
ME_SIGNER = SIGNERS[1]
ME = ME_SIGNER.peer_id


def _check_record(r: PeerRecord) -> None:
    assert len(r.peer) == topo.PEER_ID_LEN and len(r.nickname) <= topo.MAX_NICK
    assert 0 < r.uid <= topo.MAX_U64 and 0 <= r.version <= topo.MAX_VERSION
    assert len(r.key) == topo.KEY_LEN and len(r.sig) == topo.SIG_LEN
    assert len(r.conns) <= topo.MAX_CONNS
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
    assert r.signed_bytes().startswith(b"sleeve-peer-record-v2")


def _check_verified_merge(recs: list[PeerRecord]) -> None:
    t = Topology(ME_SIGNER, "me", 1)
    before = (t.records(), t.generation)
    try:
        delta = t.merge(recs)
    except TopologyAuthError as e:
        assert (t.records(), t.generation) == before, "a refused message changed the view"
        assert any(r.peer == e.peer and not verify_record(r) for r in recs)
        return
    assert all(verify_record(r) for r in delta)
    assert all(verify_record(r) for r in t.records())
    assert t.merge(recs) == [], "merging the same records twice changed the view"


def _check_merge_rules(recs: list[PeerRecord]) -> None:
    t = Topology(ME_SIGNER, "me", 1, verify=lambda r: True)
    t.merge(recs)
    # Idempotent in every case now, a record about us at the top version included: we
    # outbid it up to MAX_VERSION, and a record there cannot make us bump again.
    assert t.merge(recs) == [], "merging the same records twice changed the view"
    assert t.own.version <= topo.MAX_VERSION and verify_record(t.own)
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
    _check_verified_merge(recs)
    _check_merge_rules(recs)


if __name__ == "__main__":
    fuzz_main(test_one_input)
