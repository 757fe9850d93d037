"""Behavioural tests for sleeve.crypto: handshake failures, KDF, key files, data-plane AEAD."""

from __future__ import annotations

import base64
import os
import pathlib
import stat

import nacl.pwhash.argon2id as argon2id
import pytest

from sleeve.crypto import aead, kdf, keys, noise
from sleeve.crypto.aead import COUNTER_LIMIT, Opener, Sealer, derive_data_keys
from sleeve.crypto.noise import (
    CipherState,
    DecryptError,
    HandshakeError,
    HandshakeState,
    KeyPair,
    RekeyRequired,
)

PSK = bytes(range(32))

# ----------------------------------------------------------------------------- helpers


def _xxpsk3_pair(
    psk_i: bytes = PSK, psk_r: bytes = PSK
) -> tuple[HandshakeState, HandshakeState, KeyPair, KeyPair]:
    si, sr = KeyPair.generate(), KeyPair.generate()
    init = HandshakeState("XXpsk3", True, prologue=b"sleeve", s=si, psk=psk_i)
    resp = HandshakeState("XXpsk3", False, prologue=b"sleeve", s=sr, psk=psk_r)
    return init, resp, si, sr


def _run(init: HandshakeState, resp: HandshakeState) -> None:
    writer, reader = init, resp
    n = 0
    while not init.complete:
        payload = f"payload {n}".encode()
        assert reader.read_message(writer.write_message(payload)) == payload
        writer, reader = reader, writer
        n += 1
    assert resp.complete


def _xxpsk3_messages() -> list[bytes]:
    init, resp, _, _ = _xxpsk3_pair()
    # Same payloads as the tamper test so message lengths match.
    m1 = init.write_message(b"x")
    resp.read_message(m1)
    m2 = resp.write_message(b"x")
    init.read_message(m2)
    m3 = init.write_message(b"x")
    resp.read_message(m3)
    return [m1, m2, m3]


# ----------------------------------------------------------------------------- handshake


def test_xxpsk3_roundtrip_and_split() -> None:
    init, resp, si, sr = _xxpsk3_pair()
    _run(init, resp)
    assert init.remote_static == sr.public
    assert resp.remote_static == si.public
    assert init.handshake_hash == resp.handshake_hash
    i2r, r2i = init.split()
    r_i2r, r_r2i = resp.split()
    assert i2r.key == r_i2r.key and r2i.key == r_r2i.key and i2r.key != r2i.key
    assert r_i2r.decrypt_with_ad(b"ad", i2r.encrypt_with_ad(b"ad", b"hi")) == b"hi"
    assert r2i.decrypt_with_ad(b"", r_r2i.encrypt_with_ad(b"", b"yo")) == b"yo"


def _all_patterns() -> list[str]:
    names: list[str] = []
    for base in noise.supported_patterns():
        names.append(base)
        n_msgs = 3 if base in ("XN", "XK", "XX") else 2
        names.extend(f"{base}psk{i}" for i in range(n_msgs + 1))
    return names


@pytest.mark.parametrize("pattern", _all_patterns())
def test_every_pattern_agrees_with_itself(pattern: str) -> None:
    # The vectors cover 10 patterns; this checks the rest at least interoperate.
    si, sr = KeyPair.generate(), KeyPair.generate()
    psk = PSK if "psk" in pattern else None
    init = HandshakeState(pattern, True, s=si, rs=sr.public, psk=psk)
    resp = HandshakeState(pattern, False, s=sr, rs=si.public, psk=psk)
    _run(init, resp)
    assert init.handshake_hash == resp.handshake_hash
    assert init.split()[0].key == resp.split()[0].key


@pytest.mark.parametrize("index", [0, 1, 2])
def test_bit_flip_in_any_byte_is_rejected(index: int) -> None:
    messages = _xxpsk3_messages()
    for pos in range(len(messages[index])):
        init, resp, _, _ = _xxpsk3_pair()
        # Replay honestly up to the message under test, then flip one bit in it.
        sides = [(init, resp), (resp, init), (init, resp)]
        for i in range(index):
            w, r = sides[i]
            r.read_message(w.write_message(b"x"))
        w, r = sides[index]
        msg = bytearray(w.write_message(b"x"))
        assert len(msg) == len(messages[index])
        msg[pos] ^= 0x01 << (pos % 8)
        with pytest.raises(HandshakeError):
            r.read_message(bytes(msg))
        # A failed reader must stay failed instead of continuing on a corrupted state.
        with pytest.raises(HandshakeError):
            r.write_message(b"")


def test_truncated_and_extended_messages_rejected() -> None:
    for mutate in (lambda m: m[:-1], lambda m: m[:10], lambda m: b"", lambda m: m + b"\x00"):
        init, resp, _, _ = _xxpsk3_pair()
        with pytest.raises(HandshakeError):
            resp.read_message(mutate(init.write_message(b"hello")))


def test_oversized_message_rejected() -> None:
    _, resp, _, _ = _xxpsk3_pair()
    with pytest.raises(HandshakeError):
        resp.read_message(bytes(noise.MAX_MESSAGE_LEN + 1))


def test_wrong_psk_fails_at_message_3_on_responder() -> None:
    init, resp, _, _ = _xxpsk3_pair(psk_i=PSK, psk_r=bytes(32))
    resp.read_message(init.write_message(b""))  # msg 1 does not depend on the psk
    init.read_message(resp.write_message(b""))  # nor does msg 2 (psk3 is mixed last)
    m3 = init.write_message(b"")
    with pytest.raises(DecryptError):
        resp.read_message(m3)
    assert not resp.complete


def test_wrong_turn() -> None:
    init, _, _, _ = _xxpsk3_pair()
    with pytest.raises(HandshakeError):
        init.read_message(bytes(48))  # initiator must write first
    init2, resp2, _, _ = _xxpsk3_pair()
    with pytest.raises(HandshakeError):
        resp2.write_message(b"")  # responder must read first
    m1 = init2.write_message(b"")
    with pytest.raises(HandshakeError):
        init2.write_message(b"")  # writing twice in a row
    resp2.read_message(m1)
    with pytest.raises(HandshakeError):
        resp2.read_message(m1)  # reading twice in a row


def test_after_completion_and_before() -> None:
    init, resp, _, _ = _xxpsk3_pair()
    with pytest.raises(HandshakeError):
        init.split()
    with pytest.raises(HandshakeError):
        _ = init.handshake_hash
    _run(init, resp)
    with pytest.raises(HandshakeError):
        init.write_message(b"")
    with pytest.raises(HandshakeError):
        resp.read_message(b"")


def test_low_order_ephemeral_is_handshake_error_not_nacl() -> None:
    resp = HandshakeState("NN", False)
    resp.read_message(bytes(32))  # all-zero point as the initiator's ephemeral
    with pytest.raises(HandshakeError) as info:
        resp.write_message(b"")
    assert type(info.value).__module__ == "sleeve.crypto.noise"


def test_missing_keys_are_config_errors() -> None:
    with pytest.raises(ValueError):
        HandshakeState("XX", True)  # no static
    with pytest.raises(ValueError):
        HandshakeState("IK", True, s=KeyPair.generate())  # no rs
    with pytest.raises(ValueError):
        HandshakeState("XXpsk3", True, s=KeyPair.generate())  # no psk
    with pytest.raises(ValueError):
        HandshakeState("ZZ", True)
    with pytest.raises(ValueError):
        HandshakeState("NNpsk9", True, psk=PSK)


def test_errors_and_repr_never_contain_key_material() -> None:
    kp = KeyPair.generate()
    assert kp.private.hex() not in repr(kp)
    init, resp, si, sr = _xxpsk3_pair(psk_r=bytes(32))
    resp.read_message(init.write_message(b""))
    init.read_message(resp.write_message(b""))
    with pytest.raises(HandshakeError) as info:
        resp.read_message(init.write_message(b""))
    text = str(info.value) + repr(info.value)
    for secret in (PSK, si.private, sr.private):
        assert secret.hex() not in text


def test_keypair_from_private() -> None:
    kp = KeyPair.generate()
    assert KeyPair.from_private(kp.private) == kp
    with pytest.raises(ValueError):
        KeyPair.from_private(b"short")


# ----------------------------------------------------------------------------- CipherState


def test_cipherstate_nonce_limit_and_failed_decrypt_keeps_nonce() -> None:
    tx, rx = CipherState(PSK), CipherState(PSK)
    ct = tx.encrypt_with_ad(b"", b"a")
    with pytest.raises(DecryptError):
        rx.decrypt_with_ad(b"", ct[:-1] + bytes([ct[-1] ^ 1]))
    assert rx.nonce == 0
    assert rx.decrypt_with_ad(b"", ct) == b"a"
    tx._n = noise.MAX_NONCE - 1
    tx.encrypt_with_ad(b"", b"last")  # nonce 2**64-2 is the last usable one
    with pytest.raises(RekeyRequired):
        tx.encrypt_with_ad(b"", b"too far")


def test_cipherstate_rekey_stays_in_sync() -> None:
    tx, rx = CipherState(PSK), CipherState(PSK)
    tx.rekey()
    rx.rekey()
    assert tx.key == rx.key != PSK
    assert rx.decrypt_with_ad(b"", tx.encrypt_with_ad(b"", b"z")) == b"z"


def test_cipherstate_without_key_passes_through() -> None:
    cs = CipherState()
    assert cs.encrypt_with_ad(b"ad", b"clear") == b"clear"
    with pytest.raises(ValueError):
        _ = cs.key


# ----------------------------------------------------------------------------- kdf


def test_kdf_deterministic_and_pinned() -> None:
    a = kdf.psk_from_password(b"correct horse")
    assert a == kdf.psk_from_password(b"correct horse")
    assert len(a) == 32
    # Pinned: any change here breaks interop between nodes of different versions.
    assert a.hex() == "1964569fb1ec61eeb56d014bafe7ebc2b0daa9669cc9a69367db3844451edd89"
    assert kdf.psk_from_password(b"correct horsf") != a


def test_kdf_parameters() -> None:
    assert len(kdf.PSK_SALT) == argon2id.SALTBYTES
    assert kdf.PSK_OPSLIMIT == argon2id.OPSLIMIT_INTERACTIVE
    assert kdf.PSK_MEMLIMIT == argon2id.MEMLIMIT_INTERACTIVE


def test_kdf_empty_password() -> None:
    with pytest.raises(ValueError, match="empty"):
        kdf.psk_from_password(b"")


def test_random_secret() -> None:
    s1, s2 = kdf.random_secret(), kdf.random_secret()
    assert s1 != s2
    assert len(s1) == 43 and "=" not in s1
    assert len(base64.urlsafe_b64decode(s1 + "=")) == 32


# ----------------------------------------------------------------------------- keys


def test_static_key_created_and_persisted(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "state" / "sleeve"
    kp = keys.load_or_create_static_key(state)
    path = state / keys.STATIC_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) & 0o077 == 0
    assert path.read_bytes() == kp.private
    assert keys.load_or_create_static_key(state) == kp
    assert os.listdir(state) == [keys.STATIC_KEY_FILE]  # no temp files left behind


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_static_key_bad_size(tmp_path: pathlib.Path, size: int) -> None:
    (tmp_path / keys.STATIC_KEY_FILE).write_bytes(b"k" * size)
    with pytest.raises(ValueError, match="32"):
        keys.load_or_create_static_key(tmp_path)


def test_peer_id() -> None:
    signer = keys.Signer(bytes(32))
    pid = keys.peer_id_of(signer.public)
    assert len(pid) == 8 and pid == keys.peer_id_of(signer.public) == signer.peer_id
    assert pid != keys.Signer(bytes(31) + b"\x01").peer_id
    text = keys.format_peer_id(pid)
    assert text == ":".join(f"{b:02x}" for b in pid) and len(text) == 23
    assert keys.format_peer_id(bytes([0x3A, 0x9F])) == "3a:9f"
    with pytest.raises(ValueError):
        keys.peer_id_of(b"short")


def test_signing_key_derives_deterministically_from_the_static_key() -> None:
    kp = KeyPair.generate()
    s1, s2 = keys.Signer.from_static(kp), keys.Signer.from_static(KeyPair.from_private(kp.private))
    assert s1.public == s2.public and s1.peer_id == s2.peer_id
    assert s1.public != kp.public  # a different key, not the X25519 one reinterpreted
    other = keys.Signer.from_static(KeyPair.generate())
    assert other.peer_id != s1.peer_id
    # the private key is nowhere in the repr
    assert kp.private.hex() not in repr(s1) and keys.format_peer_id(s1.peer_id) in repr(s1)
    with pytest.raises(ValueError):
        keys.Signer(b"short seed")


def test_signatures_verify_only_for_the_signed_message_and_key() -> None:
    s, other = keys.Signer(bytes(32)), keys.Signer(b"\x01" * 32)
    sig = s.sign(b"record")
    assert len(sig) == keys.SIGNATURE_LEN and sig == s.sign(b"record")  # deterministic
    assert keys.verify(s.public, b"record", sig)
    assert not keys.verify(s.public, b"recorD", sig)
    assert not keys.verify(other.public, b"record", sig)
    bad = bytearray(sig)
    bad[10] ^= 1
    assert not keys.verify(s.public, b"record", bytes(bad))
    # garbage of any shape is a False, never an exception
    for key, sg in ((b"", sig), (b"k" * 31, sig), (s.public, sig[:63]), (s.public, b""),
                    (bytes(32), sig), (b"\xff" * 32, b"\xff" * 64)):
        assert not keys.verify(key, b"record", sg)


def test_static_certificate_binds_the_signing_key_to_one_static_key() -> None:
    kp, mallory = KeyPair.generate(), KeyPair.generate()
    s = keys.Signer.from_static(kp)
    cert = s.certify(kp.public)
    assert cert == s.certify(kp.public)  # cached, and deterministic anyway
    assert keys.verify_static_cert(s.public, kp.public, cert)
    # someone else's static key, someone else's signing key, or a mere signature: no
    assert not keys.verify_static_cert(s.public, mallory.public, cert)
    assert not keys.verify_static_cert(keys.Signer.from_static(mallory).public, kp.public, cert)
    assert not keys.verify_static_cert(s.public, kp.public, s.sign(kp.public))
    assert not keys.verify_static_cert(s.public, b"short", cert)
    with pytest.raises(ValueError):
        s.certify(b"short")


# ----------------------------------------------------------------------------- aead

KEY = bytes(range(100, 132))


def _hdr(counter: int) -> bytes:
    return b"HDR" + counter.to_bytes(8, "big")


@pytest.mark.parametrize("encrypt", [True, False])
def test_seal_open_roundtrip(encrypt: bool) -> None:
    sealer, opener = Sealer(KEY, encrypt), Opener(KEY, encrypt)
    for i, payload in enumerate([b"", b"x", b"frame" * 300]):
        packet = sealer.seal(_hdr, payload)
        header, body = packet[:11], packet[11:]
        assert header == _hdr(i)
        assert len(body) == len(payload) + aead.TAGLEN
        assert (payload in body) == (not encrypt or payload == b"")
        assert opener.open(i, header, body) == payload


def flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x80]) + data[i + 1 :]


@pytest.mark.parametrize("encrypt", [True, False])
def test_tamper_detected(encrypt: bool) -> None:
    sealer, opener = Sealer(KEY, encrypt), Opener(KEY, encrypt)
    packet = sealer.seal(_hdr, b"some ethernet frame")
    header, body = packet[:11], packet[11:]
    with pytest.raises(DecryptError):
        opener.open(0, flip(header, 0), body)  # header
    with pytest.raises(DecryptError):
        opener.open(0, header, flip(body, 0))  # body
    with pytest.raises(DecryptError):
        opener.open(0, header, flip(body, len(body) - 1))  # tag
    with pytest.raises(DecryptError):
        opener.open(1, header, body)  # wrong counter / nonce
    with pytest.raises(DecryptError):
        opener.open(0, header, body[:10])  # shorter than a tag
    with pytest.raises(DecryptError):
        Opener(bytes(32), encrypt).open(0, header, body)  # wrong key
    with pytest.raises(DecryptError):
        Opener(KEY, not encrypt).open(0, header, body)  # mode mismatch
    assert opener.open(0, header, body) == b"some ethernet frame"


def test_counter_increments_and_never_repeats() -> None:
    sealer = Sealer(KEY)
    seen: list[int] = []

    def record(counter: int) -> bytes:
        seen.append(counter)
        return b""

    for _ in range(2000):
        sealer.seal(record, b"p")
    assert seen == list(range(2000))
    assert sealer.counter == 2000

    def boom(counter: int) -> bytes:
        raise RuntimeError("header builder failed")

    with pytest.raises(RuntimeError):
        sealer.seal(boom, b"p")
    # The failed call still burned its counter: a retry must not reuse it.
    assert sealer.seal(lambda c: c.to_bytes(8, "little"), b"p")[:8] == (2001).to_bytes(8, "little")


def test_counter_exhaustion_requires_rekey() -> None:
    sealer, opener = Sealer(KEY), Opener(KEY)
    sealer._counter = COUNTER_LIMIT - 1
    packet = sealer.seal(_hdr, b"last")
    assert opener.open(COUNTER_LIMIT - 1, packet[:11], packet[11:]) == b"last"
    with pytest.raises(RekeyRequired):
        sealer.seal(_hdr, b"one too many")
    with pytest.raises(RekeyRequired):
        sealer.seal(_hdr, b"still exhausted")
    with pytest.raises(DecryptError):
        opener.open(COUNTER_LIMIT, b"", bytes(16))
    with pytest.raises(DecryptError):
        opener.open(-1, b"", bytes(16))


def test_bad_key_size() -> None:
    with pytest.raises(ValueError):
        Sealer(b"short")
    with pytest.raises(ValueError):
        Opener(b"short")
    assert KEY.hex() not in repr(Sealer(KEY)) + repr(Opener(KEY))


def test_derive_data_keys_end_to_end() -> None:
    init, resp, _, _ = _xxpsk3_pair()
    _run(init, resp)
    i_i2r, i_r2i = init.split()
    r_i2r, r_r2i = resp.split()
    h = init.handshake_hash
    ik = derive_data_keys(i_i2r.key, i_r2i.key, h)
    rk = derive_data_keys(r_i2r.key, r_r2i.key, resp.handshake_hash)
    assert ik == rk
    d_i2r, d_r2i = ik
    assert len(d_i2r) == len(d_r2i) == 32
    assert len({d_i2r, d_r2i, i_i2r.key, i_r2i.key}) == 4  # never reuse control keys
    assert derive_data_keys(i_i2r.key, i_r2i.key, bytes(64)) != ik  # bound to the transcript
    packet = Sealer(d_i2r).seal(_hdr, b"frame")
    assert Opener(rk[0]).open(0, packet[:11], packet[11:]) == b"frame"
    with pytest.raises(DecryptError):
        Opener(rk[1]).open(0, packet[:11], packet[11:])
    with pytest.raises(ValueError):
        derive_data_keys(b"x", i_r2i.key, h)
    with pytest.raises(ValueError):
        derive_data_keys(i_i2r.key, i_r2i.key, b"short")


def test_stable_tap_mac_is_unicast_local_and_per_peer() -> None:
    from sleeve.crypto.keys import stable_mac

    a, b = stable_mac(b"\x01" * 8), stable_mac(b"\x02" * 8)
    assert a == stable_mac(b"\x01" * 8) and a != b and len(a) == 6
    assert all(m[0] & 1 == 0 and m[0] & 2 == 2 for m in (a, b))


@pytest.mark.parametrize("size", [0, 1, 100, 1400, 9000, 65000])
def test_data_aead_is_libsodiums_ietf_chacha20poly1305_both_ways(size: int) -> None:
    """The data plane's AEAD (cryptography's ChaCha20Poly1305, issue 23) is the same
    construction as libsodium's IETF ChaCha20-Poly1305, the binding sleeve used before:
    a datagram sealed by either opens with the other, so routers of both kinds interoperate.
    Nonce: 4 zero bytes | counter as 8-byte little-endian; AD: the header (encrypted mode)
    or header | plaintext (authenticated only, the tag over an empty message)."""
    import nacl.bindings as sodium

    key = os.urandom(32)
    body = os.urandom(size)
    header = b"\x07" * 16
    for counter in (0, 1, 2**32 + 5, COUNTER_LIMIT - 1):
        nonce = b"\0\0\0\0" + counter.to_bytes(8, "little")
        theirs = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(body, header, nonce, key)
        s = Sealer(key)
        s._counter = counter  # only to line up with libsodium's nonce
        ours = s.seal(lambda c: header, body)
        assert ours == header + theirs
        assert Opener(key).open(counter, header, theirs) == body
        assert sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
            ours[16:], header, nonce, key) == body
        # --no-encryption: readable on the wire, still authenticated
        plain = Sealer(key, encrypt=False)
        plain._counter = counter
        clear = plain.seal(lambda c: header, body)
        tag = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(b"", header + body, nonce, key)
        assert clear == header + body + tag
        assert Opener(key, encrypt=False).open(counter, header, body + tag) == body
        with pytest.raises(DecryptError):
            Opener(key).open(counter, header, theirs[:-1] + bytes([theirs[-1] ^ 1]))
        with pytest.raises(DecryptError):
            Opener(key, encrypt=False).open(counter, header, body + tag[:-1]
                                            + bytes([tag[-1] ^ 1]))
