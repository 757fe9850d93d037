"""Replay the cacophony Noise test vectors (25519_ChaChaPoly_BLAKE2b) through sleeve.crypto."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from sleeve.crypto.noise import CipherState, HandshakeState, KeyPair

VECTOR_FILE = pathlib.Path(__file__).parent / "vectors" / "noise-25519-chachapoly-blake2b.json"
PREFIX = "Noise_"
SUFFIX = "_25519_ChaChaPoly_BLAKE2b"
REQUIRED = {
    "Noise_NN_25519_ChaChaPoly_BLAKE2b",
    "Noise_XX_25519_ChaChaPoly_BLAKE2b",
    "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b",
}


def _load() -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads(VECTOR_FILE.read_text())["vectors"]
    supported = []
    for v in vectors:
        name = v["protocol_name"]
        if not (name.startswith(PREFIX) and name.endswith(SUFFIX)):
            continue
        # One psk per side is what our HandshakeState supports.
        if len(v.get("init_psks", [])) > 1:
            continue
        supported.append(v)
    return supported


VECTORS = _load()


def test_vector_coverage() -> None:
    names = {v["protocol_name"] for v in VECTORS}
    assert len(VECTORS) >= 3
    assert names >= REQUIRED
    # Every vector in the file is expected to be supported; catch silent skips.
    all_names = {v["protocol_name"] for v in json.loads(VECTOR_FILE.read_text())["vectors"]}
    assert names == all_names


def _kp(hexkey: str | None) -> KeyPair | None:
    return None if hexkey is None else KeyPair.from_private(bytes.fromhex(hexkey))


def _opt(hexval: str | None) -> bytes | None:
    return None if hexval is None else bytes.fromhex(hexval)


def _side(v: dict[str, Any], who: str) -> HandshakeState:
    pattern = v["protocol_name"][len(PREFIX) : -len(SUFFIX)]
    psks = v.get(f"{who}_psks")
    return HandshakeState(
        pattern,
        initiator=(who == "init"),
        prologue=bytes.fromhex(v[f"{who}_prologue"]),
        s=_kp(v.get(f"{who}_static")),
        rs=_opt(v.get(f"{who}_remote_static")),
        psk=bytes.fromhex(psks[0]) if psks else None,
        e=_kp(v.get(f"{who}_ephemeral")),
    )


@pytest.mark.parametrize("vector", VECTORS, ids=[v["protocol_name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    init = _side(vector, "init")
    resp = _side(vector, "resp")
    transport: tuple[CipherState, CipherState, CipherState, CipherState] | None = None
    for i, msg in enumerate(vector["messages"]):
        payload = bytes.fromhex(msg["payload"])
        expected = bytes.fromhex(msg["ciphertext"])
        initiator_writes = i % 2 == 0
        if transport is None:
            writer, reader = (init, resp) if initiator_writes else (resp, init)
            ct = writer.write_message(payload)
            assert ct == expected, f"message {i}"
            assert reader.read_message(ct) == payload
            if init.complete:
                assert resp.complete
                assert init.handshake_hash == resp.handshake_hash
                assert init.handshake_hash.hex() == vector["handshake_hash"]
                i_send, i_recv = init.split()
                r_recv, r_send = resp.split()
                transport = (i_send, i_recv, r_send, r_recv)
        else:
            i_send, i_recv, r_send, r_recv = transport
            send, recv = (i_send, r_recv) if initiator_writes else (r_send, i_recv)
            ct = send.encrypt_with_ad(b"", payload)
            assert ct == expected, f"transport message {i}"
            assert recv.decrypt_with_ad(b"", ct) == payload
    assert transport is not None, "handshake never completed"
