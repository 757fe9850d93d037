"""Signed gossip (issue 8): a peer holding the password can only speak for itself.

Every record is signed by its owner's Ed25519 key, and the peer id is the hash of that
key. Checked here, through ``Mesh.receive`` (what the node calls, with its drop reasons)
and ``Topology.merge``:

- a record written by another peer for a victim -- under its own key, under the victim's
  key with its own signature, the victim's genuine record with an invented connection,
  a zeroed or missing signature, a record about us -- is refused, the whole message with
  it, counted by reason, nothing merged and nothing forwarded;
- a direct neighbour's own record must carry the key its handshake certified;
- a replayed old (genuine) record loses to the newer one, and costs no verification;
- verification runs only for records that would change the view (the per-peer winner of
  a message, when it beats what we hold), never for ones we hold or that lose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sleeve.mesh import LinkInfo, Mesh
from sleeve.proto.topology import (
    FORMAT,
    SIG_LEN,
    ConnRecord,
    PeerRecord,
    Topology,
    TopologyAuthError,
    decode_records,
    encode_records,
    verify_record,
)
from tests.test_topology import conn, pid, rec, signed, signer

# Peers: 0 = us, 1 = an honest neighbour, 2 = the victim, 3 = the insider (it holds the
# password and its own keys, and it is our neighbour too).
US, NBR, VICTIM, INSIDER = 0, 1, 2, 3


def mesh(i: int = US, uid: int = 1000) -> Mesh:
    return Mesh(signer(i), f"peer{i}", uid)


def victim_record(version: int = 3, conns: tuple[ConnRecord, ...] | None = None
                  ) -> PeerRecord:
    conns = (conn(pid(NBR)),) if conns is None else conns
    return rec(VICTIM, "victim", 22, version, tuple(sorted(conns, key=lambda c: c.peer)))


def from_insider(m: Mesh, *recs: PeerRecord) -> tuple[bytes | None, str]:
    ins = signer(INSIDER)
    return m.receive(ins.peer_id, 33, ins.public, encode_records(recs))


def invented(r: PeerRecord, extra: ConnRecord) -> PeerRecord:
    """``r`` with a connection added (and a higher version), the owner's signature kept."""
    conns = tuple(sorted((*r.conns, extra), key=lambda c: c.peer))
    return replace(r, version=r.version + 1, conns=conns)


def forgeries() -> dict[str, PeerRecord]:
    """What the insider can produce about the victim without the victim's key."""
    genuine = victim_record()
    ins = signer(INSIDER)
    newer = replace(genuine, version=9, conns=(conn(pid(INSIDER)),))
    return {
        # its own key and a valid signature by it, under the victim's id
        "own key": replace(newer, key=ins.public, sig=ins.sign(
            replace(newer, key=ins.public).signed_bytes())),
        # the victim's key, signed by the insider
        "victim key, insider signature": replace(newer, sig=ins.sign(newer.signed_bytes())),
        # the victim's genuine record with a connection invented for it
        "invented connection": invented(genuine, conn(pid(INSIDER))),
        # the same with the connection's state changed
        "altered connection": replace(genuine, version=4,
                                      conns=(conn(pid(NBR), est=False),)),
        # zeroed signature
        "zero signature": replace(newer, sig=bytes(SIG_LEN)),
        # the signature of another of the victim's records
        "other record's signature": replace(newer, sig=genuine.sig),
    }


@pytest.mark.parametrize("kind", sorted(forgeries()))
def test_forged_record_for_another_peer_is_refused_and_counted(kind: str) -> None:
    forged = forgeries()[kind]
    assert not verify_record(forged)
    for known in (False, True):  # whether we already hold a (genuine) victim record
        m = mesh()
        if known:
            assert m.receive(pid(NBR), 11, signer(NBR).public,
                             encode_records([victim_record()]))[1] == "ok"
        before, gen = m.topology.records(), m.topology.generation
        assert from_insider(m, forged) == (None, "gossip_bad_signature")
        assert m.topology.records() == before and m.topology.generation == gen


def test_the_whole_message_is_refused_with_one_forgery() -> None:
    m = mesh()
    good = [rec(4, "four", 4, 1), rec(5, "five", 5, 1)]
    forged = forgeries()["invented connection"]
    for order in ([*good, forged], [forged, *good], [good[0], forged, good[1]]):
        assert from_insider(m, *order) == (None, "gossip_bad_signature")
        assert m.topology.peers() == {pid(US)}  # nothing of it was merged, or forwarded
    assert from_insider(m, *good)[1] == "ok"  # and the honest part alone is fine
    assert m.topology.peers() == {pid(US), pid(4), pid(5)}


def test_forged_record_about_us_is_refused_and_does_not_make_us_bump() -> None:
    m = mesh()
    own = m.topology.own
    ins = signer(INSIDER)
    lie = replace(own, version=own.version + 5, conns=(conn(pid(INSIDER)),))
    for forged in (replace(lie, sig=ins.sign(lie.signed_bytes())),
                   replace(lie, key=ins.public, sig=ins.sign(
                       replace(lie, key=ins.public).signed_bytes()))):
        assert from_insider(m, forged) == (None, "gossip_bad_signature")
        assert m.topology.own == own
    # an earlier incarnation of us (our key) is genuine: we outbid it
    earlier = signed(replace(lie, uid=7))
    fwd, outcome = from_insider(m, earlier)
    assert outcome == "ok" and fwd is not None
    assert decode_records(fwd) == [m.topology.own] and m.topology.own.version == lie.version + 1


def test_a_record_signed_by_another_key_than_its_id_names_is_refused() -> None:
    ins = signer(INSIDER)
    # correctly signed by the key it carries, but that key's id is not the record's id
    r = replace(victim_record(), key=ins.public)
    r = replace(r, sig=ins.sign(r.signed_bytes()))
    assert not verify_record(r)
    with pytest.raises(TopologyAuthError) as ei:
        Topology(signer(US), "us", 1).merge([r])
    assert ei.value.peer == pid(VICTIM)


def test_neighbour_own_record_must_carry_the_key_of_its_handshake() -> None:
    m = mesh()
    nbr, ins = signer(NBR), signer(INSIDER)
    own = rec(NBR, "nbr", 11, 1)
    assert m.receive(nbr.peer_id, 11, nbr.public, encode_records([own]))[1] == "ok"
    newer = rec(NBR, "nbr", 11, 2, (conn(pid(US)),))
    # a connection that authenticated another key (or uid) cannot deliver it as its own
    assert m.receive(nbr.peer_id, 11, ins.public, encode_records([newer])) == (
        None, "gossip_bad_origin")
    assert m.receive(nbr.peer_id, 12, nbr.public, encode_records([newer])) == (
        None, "gossip_bad_origin")
    assert m.topology.get(nbr.peer_id) == own
    # even a stale record with a wrong key is refused from the neighbour itself
    assert m.receive(nbr.peer_id, 11, nbr.public,
                     encode_records([replace(own, key=ins.public)])) == (
        None, "gossip_bad_origin")
    fwd, outcome = m.receive(nbr.peer_id, 11, nbr.public, encode_records([newer]))
    assert outcome == "ok" and fwd is not None and decode_records(fwd) == [newer]


def test_insider_can_still_speak_for_itself() -> None:
    m = mesh()
    ins = signer(INSIDER)
    mine = rec(INSIDER, "insider", 33, 1, (conn(pid(VICTIM)),))  # a claim about its own links
    fwd, outcome = m.receive(ins.peer_id, 33, ins.public, encode_records([mine]))
    assert outcome == "ok" and fwd is not None
    assert m.topology.get(ins.peer_id) == mine
    # a one-sided claim creates no usable link: routes need both ends to list it
    assert m.routes.links.get(ins.peer_id, set()) == set()


def test_replayed_old_record_loses_to_the_newer_one() -> None:
    m = mesh()
    old, new = victim_record(3), victim_record(4, (conn(pid(NBR)), conn(pid(INSIDER))))
    assert from_insider(m, new)[1] == "ok"
    assert from_insider(m, old) == (None, "ok")  # nothing learnt, nothing forwarded
    assert m.topology.get(pid(VICTIM)) == new
    # in the same message, in any order: the newer one wins
    for order in ([old, new], [new, old]):
        m2 = mesh()
        fwd, outcome = from_insider(m2, *order)
        assert outcome == "ok" and fwd is not None and decode_records(fwd) == [new]
    # a replayed record of an earlier incarnation, however high its version, is outbid
    # by the owner itself once it sees it, and then loses everywhere
    t_victim = Topology(signer(VICTIM), "victim", 23)
    replay = victim_record(50)
    delta = t_victim.merge([replay])
    assert delta == [t_victim.own] and t_victim.own.version == 51
    t_us = mesh().topology
    t_us.merge([replay])
    assert t_us.merge(delta) == [t_victim.own] and t_us.merge([replay]) == []


class CountingVerify:
    def __init__(self, inner: Callable[[PeerRecord], bool] = verify_record) -> None:
        self.inner = inner
        self.seen: list[PeerRecord] = []

    def __call__(self, r: PeerRecord) -> bool:
        self.seen.append(r)
        return self.inner(r)


def test_only_records_that_change_the_view_are_verified() -> None:
    counter = CountingVerify()
    t = Topology(signer(US), "us", 1000, verify=counter)
    v1, v2, v3 = (victim_record(v) for v in (1, 2, 3))
    others = [rec(i, f"p{i}", i, 1) for i in range(4, 9)]
    assert len(t.merge([v1, *others])) == 6 and len(counter.seen) == 6
    counter.seen.clear()
    # everything we hold, twice over, plus our own record echoed back: nothing to verify
    assert t.merge(t.records() + t.records()) == [] and counter.seen == []
    # an old record, or a stale forgery: loses on the version, never verified (harmless)
    stale_forgery = replace(v1, version=0, sig=bytes(SIG_LEN))
    assert t.merge([stale_forgery]) == [] and counter.seen == []
    # several versions of one peer in one message: only the winner is verified
    assert t.merge([v2, v3, v1]) == [v3] and counter.seen == [v3]
    counter.seen.clear()
    # a forged loser next to a genuine winner: only the winner matters
    assert t.merge([replace(v2, version=3, uid=1, sig=bytes(SIG_LEN)),
                    victim_record(4)]) == [victim_record(4)]
    assert counter.seen == [victim_record(4)]


def test_node_facing_mesh_keeps_gossiping_signed_records() -> None:
    a, b = mesh(US), mesh(NBR, 11)
    sa, sb = signer(US), signer(NBR)
    msg = a.set_links([LinkInfo(sb.peer_id, "198.18.0.2:6783", True, True)])
    assert msg is not None and verify_record(decode_records(msg)[0])
    assert b.receive(sa.peer_id, 1000, sa.public, msg)[1] == "ok"
    for chunk in b.full_state():
        assert a.receive(sb.peer_id, 11, sb.public, chunk)[1] == "ok"
    assert a.topology.peers() == b.topology.peers() == {sa.peer_id, sb.peer_id}


FIELDS = st.sampled_from(["peer", "nickname", "uid", "version", "conn", "key", "sig"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=FIELDS, data=st.data())
def test_any_change_to_a_signed_record_is_refused(field: str, data: st.DataObject) -> None:
    genuine = victim_record(3, (conn(pid(NBR)), conn(pid(INSIDER))))
    bump = data.draw(st.integers(1, 5), label="bump")
    r = replace(genuine, version=genuine.version + bump)  # so it would change the view
    if field == "peer":
        r = replace(r, peer=pid(data.draw(st.sampled_from([4, 5, 6]), label="id")))
    elif field == "nickname":
        r = replace(r, nickname=data.draw(st.text(max_size=8).filter(lambda s: s != "victim")))
    elif field == "uid":
        r = replace(r, uid=data.draw(st.integers(1, 1 << 63).filter(lambda u: u != 22)))
    elif field == "conn":
        i = data.draw(st.integers(0, 1), label="which")
        c = r.conns[i]
        c = data.draw(st.sampled_from([replace(c, addr=c.addr + "0"),
                                       replace(c, outbound=not c.outbound),
                                       replace(c, established=not c.established)]))
        r = replace(r, conns=tuple(c if j == i else x for j, x in enumerate(r.conns)))
    elif field == "key":
        r = replace(r, key=signer(data.draw(st.integers(3, 9), label="key")).public)
    else:
        sig = bytearray(r.sig)
        sig[data.draw(st.integers(0, SIG_LEN - 1), label="byte")] ^= 1 << data.draw(
            st.integers(0, 7), label="bit")
        r = replace(r, sig=bytes(sig))
    if field != "sig":
        r = replace(r, sig=genuine.sig)  # the genuine signature, over other content
    m = mesh()
    assert from_insider(m, r) == (None, "gossip_bad_signature")
    assert m.topology.peers() == {pid(US)}


def test_unsigned_records_do_not_decode() -> None:
    unsigned = PeerRecord(pid(VICTIM), "victim", 22, 3, ())
    wire = [FORMAT, [unsigned.to_wire()]]
    m = mesh()
    ins = signer(INSIDER)
    assert m.receive(ins.peer_id, 33, ins.public, msgpack.packb(wire, use_bin_type=True)) == (
        None, "gossip_undecodable")
    with pytest.raises(ValueError, match="not signed"):  # and we never send one
        encode_records([unsigned])

