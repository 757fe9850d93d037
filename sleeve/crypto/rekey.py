"""Fresh Diffie-Hellman for an open link: the key schedule of one rekey exchange.

After the XXpsk3 handshake each control connection keeps two secrets: the handshake's
final chaining key ``ck_0`` and its hash ``h_0``. Every rekey exchange ``g = 1, 2, ...``
carries two fresh X25519 ephemerals over the (authenticated, encrypted) control channel,
one from the side that starts it (``e_s``) and one from the side that answers (``e_a``),
and both sides compute, as one more Noise ``MixKey`` with a fresh DH::

    ikm_g                 = DH(e_s, e_a) | "sleeve rekey" | g as 8-byte BE
    ck_g, T_i2r, T_r2i    = HKDF(ck_{g-1}, ikm_g, 3)          (Noise's HKDF, HMAC-BLAKE2b)
    h_g                   = BLAKE2b(h_{g-1} | "sleeve rekey" | g | e_s.pub | e_a.pub)

    control keys          = T_i2r[:32], T_r2i[:32]
    data keys (i2r, r2i)  = aead.derive_data_keys(T_i2r[:32], T_r2i[:32], h_g)

``i2r`` names the direction of the *connection* (dialler to listener), whoever started
the exchange, so both sides agree without negotiating roles. The control keys replace the
channel's Noise transport keys (nonces restart at 0); the data keys become the root of
the next data-key epoch (``proto.session``), derived exactly as after the handshake.

Why both inputs: the DH output alone is unauthenticated (the ephemerals are not signed);
mixing it into ``ck`` ties the new keys to the authenticated handshake and to every
exchange since, and the ephemerals themselves travel sealed under the current control
keys. The DH gives what a hash chain cannot: an attacker who learns today's keys (or
``ck``) but misses one exchange's ephemeral secret learns nothing after that exchange.

Wiping: ``ck`` lives in a ``bytearray`` overwritten in place at every exchange and by
:meth:`KeySchedule.wipe`; an ephemeral's secret lives in a ``bytearray`` zeroed as soon as
its exchange completes or is abandoned. What Python copies on the way (``bytes``
handed to libsodium and hashlib, the control keys inside ``CipherState``) is freed but
not cleared; see ``aead.KeyChain`` for the same limits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Final

import nacl.bindings as _sodium
import nacl.exceptions as _nacl_exc
import nacl.utils as _nacl_utils

from sleeve.crypto.aead import derive_data_keys, wipe
from sleeve.crypto.noise import DHLEN, HASHLEN, KEYLEN, HandshakeError, _hkdf

__all__ = ["Ephemeral", "GenerationKeys", "KeySchedule"]

_LABEL: Final = b"sleeve rekey"


class Ephemeral:
    """One exchange's X25519 key pair; the secret is zeroed by :meth:`wipe`."""

    __slots__ = ("_secret", "public")

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = bytearray(secret if secret is not None else _nacl_utils.random(DHLEN))
        if len(self._secret) != DHLEN:
            raise ValueError(f"X25519 secret must be {DHLEN} bytes")
        self.public: bytes = _sodium.crypto_scalarmult_base(bytes(self._secret))

    def __repr__(self) -> str:  # never show the secret
        return "Ephemeral()"

    def dh(self, peer_public: bytes) -> bytes:
        """X25519 with the peer's ephemeral; HandshakeError for a bad or low-order key."""
        if type(peer_public) is not bytes or len(peer_public) != DHLEN:
            raise HandshakeError("rekey ephemeral must be 32 bytes")
        if not any(self._secret):
            raise HandshakeError("ephemeral already wiped")
        try:
            return bytes(_sodium.crypto_scalarmult(bytes(self._secret), peer_public))
        except _nacl_exc.CryptoError:
            raise HandshakeError("invalid rekey ephemeral (low-order point)") from None

    def wipe(self) -> None:
        wipe(self._secret)


@dataclass(frozen=True, slots=True)
class GenerationKeys:
    """The keys of one generation, named by the connection's direction."""

    generation: int
    control_i2r: bytes = field(repr=False)
    control_r2i: bytes = field(repr=False)
    data_i2r: bytes = field(repr=False)
    data_r2i: bytes = field(repr=False)


class KeySchedule:
    """``ck`` and ``h`` of one connection, advanced by each completed exchange."""

    __slots__ = ("_ck", "_h", "generation")

    def __init__(self, chaining_key: bytes, handshake_hash: bytes) -> None:
        if len(chaining_key) != HASHLEN or len(handshake_hash) != HASHLEN:
            raise ValueError(f"chaining key and hash must be {HASHLEN} bytes")
        self._ck = bytearray(chaining_key)
        self._h = bytes(handshake_hash)
        self.generation = 0

    def __repr__(self) -> str:  # never show ck
        return f"KeySchedule(generation={self.generation})"

    def next(self, dh: bytes, starter_public: bytes, answerer_public: bytes) -> GenerationKeys:
        """Mix one exchange in (see the module docstring); ``ck`` is overwritten in place."""
        if not any(self._ck):
            raise HandshakeError("key schedule already wiped")
        g = self.generation + 1
        tag = _LABEL + g.to_bytes(8, "big")
        ck, t_i2r, t_r2i = _hkdf(bytes(self._ck), dh + tag, 3)
        self._ck[:] = ck
        self._h = hashlib.blake2b(self._h + tag + starter_public + answerer_public).digest()
        self.generation = g
        c_i2r, c_r2i = t_i2r[:KEYLEN], t_r2i[:KEYLEN]
        d_i2r, d_r2i = derive_data_keys(c_i2r, c_r2i, self._h)
        return GenerationKeys(g, c_i2r, c_r2i, d_i2r, d_r2i)

    def wipe(self) -> None:
        wipe(self._ck)
