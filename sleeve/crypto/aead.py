"""Data-plane packet sealing: ChaCha20-Poly1305 (IETF) with nonces chosen internally.

The API deliberately has no nonce parameter: :class:`Sealer` owns a monotonically
increasing 64-bit counter, hands it to the caller's header builder (the counter travels in
the clear header so the receiver knows which nonce to use), and never reuses a value.

Wire layout produced by :meth:`Sealer.seal`::

    encrypt=True  : header | ChaCha20(plaintext) | tag      AD = header
    encrypt=False : header | plaintext           | tag      AD = header | plaintext

The ``encrypt=False`` mode exists only for the operator's explicit ``--no-encryption``:
the payload is readable on the wire but still authenticated, because the tag is the
AEAD encryption of the empty message over ``header | plaintext``.

Nonce = 4 zero bytes | counter as 8-byte little-endian (same encoding as Noise's ChaChaPoly).
Replay protection is *not* done here; see ``sleeve.proto.replay``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Final

import nacl.bindings as _sodium
import nacl.exceptions as _nacl_exc

from sleeve.crypto.noise import HASHLEN, DecryptError, RekeyRequired

__all__ = [
    "COUNTER_LIMIT",
    "KEYLEN",
    "TAGLEN",
    "DecryptError",
    "Opener",
    "RekeyRequired",
    "Sealer",
    "derive_data_keys",
]

KEYLEN: Final = 32
TAGLEN: Final = 16
# Stop well short of 2**64-1 (reserved by Noise-style rekeying) so a session is torn
# down and re-handshaken long before any nonce could wrap.
_COUNTER_MARGIN: Final = 2**16
COUNTER_LIMIT: Final = 2**64 - 1 - _COUNTER_MARGIN

_LABEL_I2R: Final = b"sleeve data i2r"
_LABEL_R2I: Final = b"sleeve data r2i"


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")


def _check_key(key: bytes) -> bytes:
    if len(key) != KEYLEN:
        raise ValueError(f"data-plane key must be {KEYLEN} bytes")
    return bytes(key)


class Sealer:
    """Seals outgoing packets for one direction of one session."""

    __slots__ = ("_counter", "_encrypt", "_key")

    def __init__(self, key: bytes, encrypt: bool = True) -> None:
        self._key = _check_key(key)
        self._encrypt = encrypt
        self._counter = 0

    def __repr__(self) -> str:  # never show the key
        return f"Sealer(encrypt={self._encrypt}, counter={self._counter})"

    @property
    def counter(self) -> int:
        """The counter the next :meth:`seal` will use (for stats / rekey scheduling)."""
        return self._counter

    def seal(self, build_header: Callable[[int], bytes], plaintext: bytes) -> bytes:
        """Return ``header | body | tag`` where ``header = build_header(counter)``.

        The counter is consumed before ``build_header`` runs, so even if the callback or
        the encryption raises, that counter value is never handed out again.
        """
        counter = self._counter
        if counter >= COUNTER_LIMIT:
            raise RekeyRequired("data-plane counter exhausted; rekey required")
        self._counter = counter + 1
        header = build_header(counter)
        nonce = _nonce(counter)
        if self._encrypt:
            sealed = _sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
                plaintext, header, nonce, self._key
            )
            return header + sealed
        tag = _sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
            b"", header + plaintext, nonce, self._key
        )
        return header + plaintext + tag


class Opener:
    """Opens incoming packets for one direction of one session (no replay checking)."""

    __slots__ = ("_encrypt", "_key")

    def __init__(self, key: bytes, encrypt: bool = True) -> None:
        self._key = _check_key(key)
        self._encrypt = encrypt

    def __repr__(self) -> str:  # never show the key
        return f"Opener(encrypt={self._encrypt})"

    def open(self, counter: int, header: bytes, body: bytes) -> bytes:
        """Verify (and decrypt) ``body`` = everything after ``header``; return plaintext.

        Raises :class:`DecryptError` for any failure, including a counter the sender
        could never have produced, so callers need exactly one drop path.
        """
        if not 0 <= counter < COUNTER_LIMIT:
            raise DecryptError("counter out of range")
        if len(body) < TAGLEN:
            raise DecryptError("packet shorter than the AEAD tag")
        nonce = _nonce(counter)
        try:
            if self._encrypt:
                return bytes(
                    _sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
                        body, header, nonce, self._key
                    )
                )
            plaintext = body[:-TAGLEN]
            _sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
                body[-TAGLEN:], header + plaintext, nonce, self._key
            )
            return bytes(plaintext)
        except _nacl_exc.CryptoError:
            raise DecryptError("AEAD authentication failed") from None


def derive_data_keys(
    cs_i2r_key: bytes, cs_r2i_key: bytes, handshake_hash: bytes
) -> tuple[bytes, bytes]:
    """Derive (i2r, r2i) 32-byte data-plane keys from the Noise split output.

    The split keys also protect the TCP control transport; deriving separate keys with
    keyed BLAKE2b (key = split key, message = direction label | handshake hash) means the
    UDP data plane and the control channel never share a key/nonce space.  Mixing in the
    handshake hash binds the keys to this exact handshake transcript.
    """
    if len(cs_i2r_key) != KEYLEN or len(cs_r2i_key) != KEYLEN:
        raise ValueError(f"split keys must be {KEYLEN} bytes")
    if len(handshake_hash) != HASHLEN:
        raise ValueError(f"handshake hash must be {HASHLEN} bytes")
    i2r = hashlib.blake2b(_LABEL_I2R + handshake_hash, key=cs_i2r_key, digest_size=KEYLEN)
    r2i = hashlib.blake2b(_LABEL_R2I + handshake_hash, key=cs_r2i_key, digest_size=KEYLEN)
    return i2r.digest(), r2i.digest()
