"""Fuzz the TCP control channel (``ControlChannel.feed``), Hello decoding and Noise reads.

A handshake transcript between two real channels is built once per process from fixed
keys (with and without encryption), with snapshots of both sides at every stage; each
input picks a mode and a snapshot, deep-copies it and feeds it bytes::

    input := mode[1] | flags[1] | chunk_seed[1] | payload ...
    flags bit 0: 1 = --no-encryption transcript; bits 1-7: which snapshot / message

Modes (``mode % 7``):

0 RAW           payload fed, in chunks, to one of the 7 snapshots (responder fresh, after
                the preamble, after msg1, open; initiator started, after msg2, open).
1 SEALED        an open side receives a frame that its peer really sealed, holding the
                payload as plaintext: reaches msgpack decoding past the AEAD.
2 HELLO_MSG3    the responder receives a genuine msg3 whose payload (the initiator's
                Hello, with its signing key and certificate) is the fuzz payload.
3 HELLO_SEALED  the initiator receives a genuinely sealed Hello made of the payload.
4 CRAFTED_MSG1  a correctly MACed msg1 with an arbitrary ephemeral key (payload[:32]),
                e.g. a low-order point: only an attacker-chosen ``e`` reaches a DH.
5 MITM          one message of the honest transcript with byte edits (xor/truncate)
                and appended bytes; a tampered message must have no effect at all.
6 NOISE         ``HandshakeState.read_message`` on the raw payload at message 1, 2, 3.

Contract checked: ``feed`` raises only ``ControlError`` (with a known reason) and
``read_message`` only ``HandshakeError``; what is accepted is exactly what a peer holding
the keys sent, and the identity established is the one the peer's static key certifies.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from fuzz.common import chunks, deterministic_ephemerals, fixed_keypair, fuzz_main
from sleeve.crypto import noise
from sleeve.crypto.keys import Signer
from sleeve.proto import control as ctl
from sleeve.proto.control import ControlChannel, ControlError, Established, Hello

PSK = bytes(range(100, 132))  # a fixed PSK: Argon2id derivation is irrelevant to parsing
STATIC_I = fixed_keypair(b"sleeve fuzz initiator")
STATIC_R = fixed_keypair(b"sleeve fuzz responder")
SIGNER_I, SIGNER_R = Signer.from_static(STATIC_I), Signer.from_static(STATIC_R)
HELLO_I = Hello("initiator", 0x1111, 17, 6783, "192.0.2.2:40000")
HELLO_R = Hello("responder", 0x2222, 23, 6783, "192.0.2.1:6783")
APP_MSG: dict[str, Any] = {"t": "ping", "n": 1, "blob": b"\x00\x01"}

# Every reason ControlChannel may give; a new one means the contract changed (or a bug).
REASONS = frozenset({
    "frame_size", "bad_magic", "version", "bad_mode", "encryption_mismatch", "rejected",
    "protocol", "decrypt", "handshake", "auth_failed", "bad_message", "bad_hello",
    "bad_identity",
})
MODES = 7
RECEIVERS = ("r_fresh", "r_wait_msg1", "r_wait_msg3", "r_open",
             "i_started", "i_wait_hello", "i_open")


@dataclass(frozen=True)
class Transcript:
    """Snapshots and wire bytes of one honest handshake plus one message each way."""

    snaps: dict[str, ControlChannel]
    wire: tuple[bytes, ...]  # messages 0-5, see MITM_STEPS
    hs_i_after_msg2: noise.HandshakeState  # to write a msg3 with a chosen payload
    hs_r_msg1: noise.HandshakeState  # expects msg 1 (NOISE mode)
    hs_i_msg2: noise.HandshakeState  # expects msg 2
    hs_r_msg3: noise.HandshakeState  # expects msg 3
    tx_i_open: noise.CipherState  # the initiator's next sealing state (to the responder)
    tx_r_hello: noise.CipherState  # the responder's state before sealing its Hello
    tx_r_open: noise.CipherState  # the responder's next sealing state (to the initiator)


# (message index in Transcript.wire, receiving snapshot, what the honest message causes)
MITM_STEPS = (
    (0, "r_fresh", "reply"),  # preamble + msg1 -> msg2
    (1, "i_started", "reply"),  # msg2 -> msg3
    (2, "r_wait_msg3", "established"),  # msg3 (+ initiator Hello) -> sealed Hello
    (3, "i_wait_hello", "established"),  # sealed responder Hello
    (4, "r_open", "message"),  # initiator -> responder application message
    (5, "i_open", "message"),  # responder -> initiator application message
)


def _feed(ch: ControlChannel, data: bytes, seed: int
          ) -> tuple[bytes, list[dict[str, Any]], Established | None]:
    """Feed ``data`` in pieces; return everything the channel produced."""
    out = bytearray()
    msgs: list[dict[str, Any]] = []
    est: Established | None = None
    for piece in chunks(data, seed):
        o, m, e = ch.feed(piece)
        out += o
        msgs += m
        if e is not None:
            assert est is None, "established twice"
            est = e
    return bytes(out), msgs, est


def _hs(ch: ControlChannel) -> noise.HandshakeState:
    hs = ch._hs  # a harness may look inside: it needs the live Noise state
    assert hs is not None
    return hs


def _tx(ch: ControlChannel) -> noise.CipherState:
    tx = ch._tx
    assert tx is not None
    return tx


def _build(encrypted: bool) -> Transcript:
    psk = PSK if encrypted else None
    with deterministic_ephemerals(b"transcript %d" % encrypted):
        ini = ControlChannel(initiator=True, static=STATIC_I, psk=psk, hello=HELLO_I)
        resp = ControlChannel(initiator=False, static=STATIC_R, psk=psk, hello=HELLO_R)
        snaps = {"r_fresh": copy.deepcopy(resp)}
        m0 = ini.start()
        snaps["i_started"] = copy.deepcopy(ini)
        hs_i_msg2 = copy.deepcopy(_hs(ini))
        assert resp.feed(m0[: ctl.PREAMBLE_LEN]) == (b"", [], None)
        snaps["r_wait_msg1"] = copy.deepcopy(resp)
        hs_r_msg1 = copy.deepcopy(_hs(resp))
        m1, _, _ = resp.feed(m0[ctl.PREAMBLE_LEN :])
        snaps["r_wait_msg3"] = copy.deepcopy(resp)
        hs_r_msg3 = copy.deepcopy(_hs(resp))
        hs_i_after_msg2 = copy.deepcopy(_hs(ini))
        hs_i_after_msg2.read_message(m1[ctl.FRAME_HDR.size :])
        m2, _, _ = ini.feed(m1)
        snaps["i_wait_hello"] = copy.deepcopy(ini)
        m3, _, est_r = resp.feed(m2)
        assert est_r is not None
        _, _, est_i = ini.feed(m3)
        assert est_i is not None
    # The responder sealed its Hello with r->i nonce 0; a fresh r->i state redoes that.
    tx_r_hello = _hs(resp).split()[1]
    tx_i_open, tx_r_open = copy.deepcopy(_tx(ini)), copy.deepcopy(_tx(resp))
    snaps["r_open"], snaps["i_open"] = copy.deepcopy(resp), copy.deepcopy(ini)
    m4 = ini.seal(APP_MSG)
    m5 = resp.seal(APP_MSG)
    return Transcript(snaps, (m0, m1, m2, m3, m4, m5), hs_i_after_msg2, hs_r_msg1, hs_i_msg2,
                      hs_r_msg3, tx_i_open, tx_r_hello, tx_r_open)


TRANSCRIPTS = {True: _build(True), False: _build(False)}


def _check_error(e: ControlError) -> None:
    assert e.reason in REASONS, f"unknown ControlError reason {e.reason!r}"
    assert isinstance(e.detail, str)


def _check_established(est: Established, receiver_is_initiator: bool) -> None:
    """The peer is who holds the other fixed static key; the keys are per direction."""
    peer = STATIC_R if receiver_is_initiator else STATIC_I
    signer = SIGNER_R if receiver_is_initiator else SIGNER_I
    assert est.remote_static == peer.public
    assert est.remote_key == signer.public and est.remote_id == signer.peer_id
    assert len(est.data_send) == len(est.data_recv) == 32
    assert est.data_send != est.data_recv
    assert isinstance(est.hello, Hello)


def _mode_raw(t: Transcript, sel: int, seed: int, payload: bytes) -> None:
    name = RECEIVERS[sel % len(RECEIVERS)]
    ch = copy.deepcopy(t.snaps[name])
    try:
        _out, msgs, est = _feed(ch, payload, seed)
    except ControlError as e:
        _check_error(e)
        return
    # Honest transcript pieces may be spliced in by the fuzzer (the keys are fixed), so
    # success is possible; it must then be a coherent one.
    if est is not None:
        _check_established(est, ch.initiator)
    assert all(isinstance(m, dict) and isinstance(m.get("t"), str) for m in msgs)


def _expected_message(payload: bytes) -> dict[str, Any] | ControlError:
    try:
        return ctl.unpack_message(payload)
    except ControlError as e:
        return e


def _mode_sealed(t: Transcript, sel: int, seed: int, payload: bytes) -> None:
    to_initiator = bool(sel & 1)
    ch = copy.deepcopy(t.snaps["i_open" if to_initiator else "r_open"])
    tx = copy.deepcopy(t.tx_r_open if to_initiator else t.tx_i_open)
    wire = ctl.frame(ctl.T_SEALED, tx.encrypt_with_ad(b"", payload))
    want = _expected_message(payload)
    try:
        out, msgs, est = _feed(ch, wire, seed)
    except ControlError as e:
        _check_error(e)
        if len(wire) - 4 > ctl.MAX_FRAME:
            assert e.reason == "frame_size"
            return
        assert isinstance(want, ControlError), f"sealed message rejected: {e.reason}"
        assert e.reason == want.reason
        return
    assert not isinstance(want, ControlError), "undecodable message accepted"
    assert out == b"" and est is None
    # repr: NaN floats make == useless, and both sides decoded the same bytes in order
    assert repr(msgs) == repr([want])


def _expected_hello(payload: bytes, sender: noise.KeyPair) -> Hello | ControlError:
    try:
        return ctl.read_hello(ctl.unpack_message(payload), sender.public)[0]
    except ControlError as e:
        return e


def _mode_hello_msg3(t: Transcript, sel: int, seed: int, payload: bytes) -> None:
    del sel
    hs = copy.deepcopy(t.hs_i_after_msg2)
    try:
        msg3 = hs.write_message(payload)
    except ValueError:
        return  # larger than a Noise message may be: nothing to send
    ch = copy.deepcopy(t.snaps["r_wait_msg3"])
    want = _expected_hello(payload, STATIC_I)
    try:
        out, msgs, est = _feed(ch, ctl.frame(ctl.T_HANDSHAKE, msg3), seed)
    except ControlError as e:
        _check_error(e)
        assert isinstance(want, ControlError), f"valid hello rejected: {e.reason}"
        assert e.reason == want.reason
        return
    assert not isinstance(want, ControlError), "invalid hello accepted"
    assert est is not None and est.hello == want and not msgs
    _check_established(est, False)
    assert out[4] == ctl.T_SEALED  # our own Hello goes back sealed


def _mode_hello_sealed(t: Transcript, sel: int, seed: int, payload: bytes) -> None:
    del sel
    tx = copy.deepcopy(t.tx_r_hello)
    wire = ctl.frame(ctl.T_SEALED, tx.encrypt_with_ad(b"", payload))
    ch = copy.deepcopy(t.snaps["i_wait_hello"])
    want = _expected_hello(payload, STATIC_R)
    try:
        out, msgs, est = _feed(ch, wire, seed)
    except ControlError as e:
        _check_error(e)
        if len(wire) - 4 > ctl.MAX_HANDSHAKE_FRAME:  # not open yet: Noise-sized frames only
            assert e.reason == "frame_size"
            return
        assert isinstance(want, ControlError), f"valid hello rejected: {e.reason}"
        assert e.reason == want.reason
        return
    assert not isinstance(want, ControlError), "invalid hello accepted"
    assert est is not None and est.hello == want and not msgs and out == b""
    _check_established(est, True)


def _crafted_msg1(encrypted: bool, e_pub: bytes, payload: bytes) -> bytes:
    """What an initiator whose ephemeral public key is ``e_pub`` sends as msg 1."""
    ss = noise.SymmetricState(b"Noise_" + ctl.PATTERN.encode() + b"_" + noise.SUITE.encode())
    ss.mix_hash(ctl.PROLOGUE_LABEL + ctl.preamble(encrypted))
    ss.mix_hash(e_pub)
    ss.mix_key(e_pub)  # psk modifier: e is also mixed into the key
    return e_pub + ss.encrypt_and_hash(payload)


def _mode_crafted_msg1(t: Transcript, encrypted: bool, seed: int, payload: bytes) -> None:
    e_pub = payload[:32].ljust(32, b"\x00")
    msg1 = _crafted_msg1(encrypted, e_pub, payload[32:])
    ch = copy.deepcopy(t.snaps["r_wait_msg1"])
    try:
        with deterministic_ephemerals(b"crafted msg1"):
            out, msgs, est = _feed(ch, ctl.frame(ctl.T_HANDSHAKE, msg1), seed)
    except ControlError as e:
        _check_error(e)
        # a MACed msg1 can only fail on the DH with its key (low order) or on its size
        assert e.reason in ("handshake", "frame_size"), e.reason
        return
    assert ch.state is ctl.State.WAIT_MSG3 and est is None and not msgs
    assert out[4] == ctl.T_HANDSHAKE


def _apply_edits(msg: bytes, edits: bytes) -> bytes:
    """Edits are 3-byte items: position (BE 16, modulo the length), xor; xor 0 truncates."""
    out = bytearray(msg)
    for i in range(0, len(edits) - 2, 3):
        if not out:
            break
        pos = int.from_bytes(edits[i : i + 2], "big") % len(out)
        if edits[i + 2] == 0:
            del out[pos:]
        else:
            out[pos] ^= edits[i + 2]
    return bytes(out)


def _mode_mitm(t: Transcript, sel: int, seed: int, payload: bytes) -> None:
    index, name, effect = MITM_STEPS[sel % len(MITM_STEPS)]
    honest = t.wire[index]
    n_edits = payload[0] % 8 if payload else 0
    stream = _apply_edits(honest, payload[1 : 1 + 3 * n_edits]) + payload[1 + 3 * n_edits :]
    ch = copy.deepcopy(t.snaps[name])
    if not stream.startswith(honest):
        # Tampered (truncation plus re-appending the same bytes is not tampering): the
        # receiver may wait or fail, but must act on nothing.
        try:
            out, msgs, est = _feed(ch, stream, seed)
        except ControlError as e:
            _check_error(e)
            return
        assert not out and not msgs and est is None, f"tampered message {index} acted upon"
        return
    # The honest message first, so its effect is observable before the extra bytes
    # (which may well fail the connection) are fed.
    out, msgs, est = _feed(ch, honest, seed)
    if effect == "reply":
        assert out and not msgs and est is None, "honest handshake message got no reply"
    elif effect == "established":
        assert est is not None, "honest handshake did not establish"
        _check_established(est, ch.initiator)
        assert est.hello == (HELLO_R if ch.initiator else HELLO_I)
    else:
        assert repr(msgs) == repr([APP_MSG]), msgs
    try:
        _feed(ch, stream[len(honest) :], seed)
    except ControlError as e:
        _check_error(e)


def _mode_noise(t: Transcript, sel: int, payload: bytes) -> None:
    hs = copy.deepcopy((t.hs_r_msg1, t.hs_i_msg2, t.hs_r_msg3)[sel % 3])
    try:
        hs.read_message(payload)
    except noise.HandshakeError:
        # a failed reader must stay failed (no continuing on half-updated h/ck)
        try:
            hs.write_message(b"")
        except noise.HandshakeError:
            return
        raise AssertionError("handshake state usable after a failed read") from None
    # Only a message genuinely written for this state can be read (the honest one,
    # which the fuzzer can splice in from the corpus); a success advances the turn.
    assert hs.expects_write or hs.complete


def test_one_input(data: bytes) -> None:
    if len(data) < 3:
        return
    mode, flags, seed = data[0] % MODES, data[1], data[2]
    payload = data[3:]
    encrypted = not flags & 1
    sel = flags >> 1
    t = TRANSCRIPTS[encrypted]
    if mode == 0:
        _mode_raw(t, sel, seed, payload)
    elif mode == 1:
        _mode_sealed(t, sel, seed, payload)
    elif mode == 2:
        _mode_hello_msg3(t, sel, seed, payload)
    elif mode == 3:
        _mode_hello_sealed(t, sel, seed, payload)
    elif mode == 4:
        _mode_crafted_msg1(t, encrypted, seed, payload)
    elif mode == 5:
        _mode_mitm(t, sel, seed, payload)
    else:
        _mode_noise(t, sel, payload)


if __name__ == "__main__":
    fuzz_main(test_one_input)
