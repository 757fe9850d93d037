"""End-to-end origin proofs of relayed and broadcast records (``proto.origin``).

Three peers as in the lab: A and C talk through EVIL. Each holds the others' verified
topology identities (Ed25519 key, uid). What EVIL can do with its own key and
everything it relays must not produce a record A or C accepts as the other's.
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from sleeve.crypto.keys import Signer
from sleeve.proto import datagram as dg
from sleeve.proto.origin import OriginAuth


class Mesh3:
    def __init__(self) -> None:
        self.signers = {n: Signer(os.urandom(32)) for n in ("a", "c", "evil")}
        self.uids = {"a": 11, "c": 33, "evil": 66}
        self.ids = {n: s.peer_id for n, s in self.signers.items()}
        self.by_id = {s.peer_id: n for n, s in self.signers.items()}
        self.auth = {n: OriginAuth(s, self.uids[n], self.ident) for n, s in self.signers.items()}

    def ident(self, peer: bytes) -> tuple[bytes, int] | None:
        n = self.by_id.get(peer)
        return None if n is None else (self.signers[n].public, self.uids[n])


def relayed(src: bytes, dst: bytes, payload: bytes, auth: bytes | None, hops: int = 14,
            ) -> dg.Record:
    """What the destination parses after a relay copied the record."""
    (rec,) = dg.iter_records(dg.encode_record(dg.KIND_FRAME, payload, src=src, dst=dst,
                                              hops=hops, auth=auth))
    return rec


def bcast(src: bytes, payload: bytes, auth: bytes | None, hops: int = 14) -> dg.Record:
    (rec,) = dg.iter_records(dg.encode_record(dg.KIND_FRAME, payload, src=src, hops=hops,
                                              bcast=True, auth=auth))
    return rec


FRAME = bytes.fromhex("ffffffffffff02000000000a0806") + bytes(28)


def test_unicast_from_the_real_source_is_accepted_once() -> None:
    m = Mesh3()
    a, c = m.ids["a"], m.ids["c"]
    auth = m.auth["a"].seal(c, dg.KIND_FRAME, FRAME)
    assert auth is not None and len(auth) == dg.AUTH_MAC_LEN
    assert m.auth["c"].check(a, relayed(a, c, FRAME, auth)) is None
    # the hop limit is not covered: a relay decrements it
    assert m.auth["c"].check(a, relayed(a, c, FRAME, auth, hops=3)) == "origin_replay"
    auth2 = m.auth["a"].seal(c, dg.KIND_FRAME, FRAME)
    assert m.auth["c"].check(a, relayed(a, c, FRAME, auth2, hops=0)) is None


def test_relay_cannot_forge_or_alter_a_source() -> None:
    m = Mesh3()
    a, c, evil = m.ids["a"], m.ids["c"], m.ids["evil"]
    ck = m.auth["c"]
    # no proof at all
    assert ck.check(a, relayed(a, c, FRAME, None)) == "origin_unauthenticated"
    # EVIL's own tag for C, under A's name: EVIL's key with C is not A's
    forged = m.auth["evil"].seal(c, dg.KIND_FRAME, FRAME)
    assert forged is not None
    assert ck.check(a, relayed(a, c, FRAME, forged)) == "origin_forged"
    # a real tag of A for C on an altered payload, or for another kind
    real = m.auth["a"].seal(c, dg.KIND_FRAME, FRAME)
    assert real is not None
    assert ck.check(a, relayed(a, c, FRAME[:-1] + b"\x01", real)) == "origin_forged"
    (other_kind,) = dg.iter_records(dg.encode_record(7, FRAME, src=a, dst=c, auth=real))
    assert ck.check(a, other_kind) == "origin_forged"
    # A's tag for EVIL replayed towards C
    for_evil = m.auth["a"].seal(evil, dg.KIND_FRAME, FRAME)
    assert for_evil is not None
    assert ck.check(a, relayed(a, c, FRAME, for_evil)) == "origin_forged"
    # a record addressed to someone else is never accepted here
    assert ck.check(a, relayed(a, evil, FRAME, for_evil)) == "origin_not_for_us"
    # a forged record with a huge counter does not slide the window: the real one passes
    huge = (2**64 - 1).to_bytes(8, "big") + bytes(16)
    assert ck.check(a, relayed(a, c, FRAME, huge)) == "origin_forged"
    assert ck.check(a, relayed(a, c, FRAME, real)) is None
    # a peer we have no topology record for
    assert ck.check(b"\x42" * 8, relayed(b"\x42" * 8, c, FRAME, real)) == "origin_unknown_peer"


def test_broadcast_signature_and_replay() -> None:
    m = Mesh3()
    a = m.ids["a"]
    auth = m.auth["a"].sign(dg.KIND_FRAME, FRAME)
    assert len(auth) == dg.AUTH_SIG_LEN
    assert m.auth["c"].check(a, bcast(a, FRAME, auth)) is None
    assert m.auth["evil"].check(a, bcast(a, FRAME, auth, hops=2)) is None  # any receiver
    assert m.auth["c"].check(a, bcast(a, FRAME, auth, hops=5)) == "origin_replay"
    # EVIL signs with its own key under A's name, or alters A's frame
    evil_sig = m.auth["evil"].sign(dg.KIND_FRAME, FRAME)
    assert m.auth["c"].check(a, bcast(a, FRAME, evil_sig)) == "origin_forged"
    fresh = m.auth["a"].sign(dg.KIND_FRAME, FRAME)
    assert m.auth["c"].check(a, bcast(a, FRAME + b"x", fresh)) == "origin_forged"
    assert m.auth["c"].check(a, bcast(a, FRAME, None)) == "origin_unauthenticated"


def test_a_broadcast_heard_first_hand_cannot_be_replayed_as_relayed() -> None:
    """C hears A's signed broadcast straight from A (the link vouches, no check runs);
    EVIL, which got it too, must not be able to pass it to C again later (review)."""
    m = Mesh3()
    a = m.ids["a"]
    auth = m.auth["a"].sign(dg.KIND_FRAME, FRAME)
    m.auth["c"].note_direct_broadcast(a, bcast(a, FRAME, auth))
    assert m.auth["c"].check(a, bcast(a, FRAME, auth, hops=3)) == "origin_replay"
    # never a drop on the direct path: a restarted A's counters start again
    m.auth["c"].note_direct_broadcast(a, bcast(a, FRAME, auth))
    later = m.auth["a"].sign(dg.KIND_FRAME, FRAME)
    assert m.auth["c"].check(a, bcast(a, FRAME, later)) is None


def test_a_new_incarnation_gets_new_keys_and_old_records_fail() -> None:
    m = Mesh3()
    a, c = m.ids["a"], m.ids["c"]
    old = m.auth["a"].seal(c, dg.KIND_FRAME, FRAME)
    old_b = m.auth["a"].sign(dg.KIND_FRAME, FRAME)
    # A restarts: a new uid in its (signed) record, a new OriginAuth counting from 0
    m.uids["a"] = 12
    m.auth["a"] = OriginAuth(m.signers["a"], 12, m.ident)
    assert m.auth["c"].check(a, relayed(a, c, FRAME, old)) == "origin_forged"
    assert m.auth["c"].check(a, bcast(a, FRAME, old_b)) == "origin_forged"
    new = m.auth["a"].seal(c, dg.KIND_FRAME, FRAME)
    assert new is not None and new[:8] == old[:8]  # counter 1 again, under a new key
    assert m.auth["c"].check(a, relayed(a, c, FRAME, new)) is None
    # C restarts: A's tags for the old C fail at the new one until A sees the new uid
    m.uids["c"] = 34
    m.auth["c"] = OriginAuth(m.signers["c"], 34, m.ident)
    again = m.auth["a"].seal(c, dg.KIND_FRAME, FRAME)  # A re-derives: the ident changed
    assert m.auth["c"].check(a, relayed(a, c, FRAME, again)) is None


def test_unknown_destination_cannot_be_sealed_for() -> None:
    m = Mesh3()
    assert m.auth["a"].seal(b"\x42" * 8, dg.KIND_FRAME, FRAME) is None


def test_pairs_are_bounded() -> None:
    m = Mesh3()
    auth = OriginAuth(m.signers["a"], 1, lambda p: (m.signers["c"].public, p[0]), max_peers=4)
    for i in range(10):
        assert auth.seal(bytes([i]) * 8, dg.KIND_FRAME, b"x") is not None
    assert len(auth._pairs) == 4


@settings(max_examples=40, deadline=None)
@given(payload=st.binary(max_size=200), flip=st.integers(0, 8 * (dg.AUTH_MAC_LEN + 200) - 1))
def test_any_bit_flip_in_proof_or_payload_is_refused(payload: bytes, flip: int) -> None:
    m = Mesh3()
    a, c = m.ids["a"], m.ids["c"]
    auth = m.auth["a"].seal(c, dg.KIND_FRAME, payload)
    assert auth is not None
    blob = bytearray(auth + payload)
    if flip >= 8 * len(blob):
        return
    blob[flip // 8] ^= 1 << (flip % 8)
    got = m.auth["c"].check(a, relayed(a, c, bytes(blob[dg.AUTH_MAC_LEN:]),
                                       bytes(blob[:dg.AUTH_MAC_LEN])))
    assert got == "origin_forged"
