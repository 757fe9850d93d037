"""Noise Protocol Framework (revision 34) handshakes for ``25519_ChaChaPoly_BLAKE2b``.

Built only from libsodium primitives exposed by ``nacl.bindings`` plus ``hashlib``'s
BLAKE2b, so that the whole construction is auditable in one file and checked against the
cacophony test vectors (``tests/vectors/``).

sleeve uses ``XXpsk3`` for its control connections::

    Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b        (prologue mixed into h first)

    initiator                                          responder
    ---------                                          ---------
    msg 1   -> e                                       (payload in clear, but hashed)
              e.pub
    msg 2   <- e, ee, s, es                            (responder static now encrypted)
              e.pub | ENC(s.pub) | ENC(payload)
    msg 3   -> s, se, psk                              (psk mixed last: a wrong psk
              ENC(s.pub) | ENC(payload)                 fails the payload tag here)
    split() -> (CipherState i->r, CipherState r->i)

Because PSKs are in use, every ``e`` token also runs ``MixKey(e.pub)``.  Ephemerals are
generated from the OS RNG; they are injectable only so that test vectors can be replayed.

Errors: every malformed, unauthenticated or out-of-turn message raises
:class:`HandshakeError` (AEAD failures raise the subclass :class:`DecryptError`).  No
``nacl`` exception escapes and no key material ever appears in a message.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Final

import nacl.bindings as _sodium
import nacl.exceptions as _nacl_exc
import nacl.utils as _nacl_utils

__all__ = [
    "DHLEN",
    "HASHLEN",
    "MAX_MESSAGE_LEN",
    "CipherState",
    "DecryptError",
    "HandshakeError",
    "HandshakeState",
    "KeyPair",
    "RekeyRequired",
    "SymmetricState",
    "supported_patterns",
]

DHLEN: Final = 32
HASHLEN: Final = 64
KEYLEN: Final = 32
TAGLEN: Final = 16
MAX_MESSAGE_LEN: Final = 65535  # Noise spec section 3: every message is at most 65535 bytes
# Nonce 2**64-1 is reserved by the spec (used by Rekey), so it is never used to encrypt.
MAX_NONCE: Final = 2**64 - 1
SUITE: Final = "25519_ChaChaPoly_BLAKE2b"


class HandshakeError(Exception):
    """A handshake message was malformed, unauthenticated, or arrived out of turn."""


class DecryptError(HandshakeError):
    """AEAD authentication failed (wrong key, tampered data, or wrong PSK)."""


class RekeyRequired(Exception):
    """A nonce counter is exhausted: the session must be re-handshaken (not a peer fault)."""


# --------------------------------------------------------------------------- primitives


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair.  ``private`` is excluded from repr so it never lands in logs."""

    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        return cls.from_private(_nacl_utils.random(DHLEN))

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        if len(private) != DHLEN:
            raise ValueError(f"X25519 private key must be {DHLEN} bytes")
        return cls(private=bytes(private), public=_sodium.crypto_scalarmult_base(private))


def _dh(kp: KeyPair, public: bytes) -> bytes:
    try:
        return bytes(_sodium.crypto_scalarmult(kp.private, public))
    except _nacl_exc.CryptoError:
        # libsodium rejects low-order points (all-zero shared secret); the spec allows
        # aborting here, and doing so stops a peer from forcing a known DH output.
        raise HandshakeError("invalid remote public key") from None


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    # hmac + hashlib.blake2b gives exactly Noise's HMAC-HASH (BLOCKLEN 128, HASHLEN 64).
    return hmac.digest(key, data, hashlib.blake2b)


def _hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    temp_key = _hmac(chaining_key, ikm)
    out1 = _hmac(temp_key, b"\x01")
    out2 = _hmac(temp_key, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, _hmac(temp_key, out2 + b"\x03")


def _nonce(n: int) -> bytes:
    # ChaChaPoly nonce encoding from the spec: 32 bits of zeros + 64-bit little-endian n.
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


# --------------------------------------------------------------------------- CipherState


class CipherState:
    """Key ``k`` plus nonce counter ``n``; without a key it passes data through unchanged."""

    __slots__ = ("_k", "_n")

    def __init__(self, key: bytes | None = None) -> None:
        self._k: bytes | None = None
        self._n = 0
        if key is not None:
            self.initialize_key(key)

    def initialize_key(self, key: bytes) -> None:
        if len(key) != KEYLEN:
            raise ValueError(f"cipher key must be {KEYLEN} bytes")
        self._k = bytes(key)
        self._n = 0

    def has_key(self) -> bool:
        return self._k is not None

    @property
    def key(self) -> bytes:
        """The raw key, so callers can derive independent keys (see ``aead.derive_data_keys``)."""
        if self._k is None:
            raise ValueError("CipherState has no key")
        return self._k

    @property
    def nonce(self) -> int:
        return self._n

    def _next_nonce(self) -> bytes:
        if self._n >= MAX_NONCE:
            raise RekeyRequired("nonce space exhausted; rekey required")
        nonce = _nonce(self._n)
        self._n += 1
        return nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._k is None:
            return plaintext
        return bytes(
            _sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
                plaintext, ad, self._next_nonce(), self._k
            )
        )

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._k is None:
            return ciphertext
        if self._n >= MAX_NONCE:
            raise RekeyRequired("nonce space exhausted; rekey required")
        if len(ciphertext) < TAGLEN:
            raise DecryptError("ciphertext shorter than the AEAD tag")
        try:
            plaintext = _sodium.crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext, ad, _nonce(self._n), self._k
            )
        except _nacl_exc.CryptoError:
            raise DecryptError("AEAD authentication failed") from None
        # Per the spec the nonce only advances on success, so a forged message cannot
        # desynchronise an otherwise healthy session.
        self._n += 1
        return bytes(plaintext)

    def rekey(self) -> None:
        """Noise ``Rekey()``: k = first 32 bytes of ENCRYPT(k, 2**64-1, "", zeros)."""
        if self._k is None:
            raise ValueError("CipherState has no key")
        self._k = bytes(
            _sodium.crypto_aead_chacha20poly1305_ietf_encrypt(
                bytes(KEYLEN), b"", _nonce(MAX_NONCE), self._k
            )
        )[:KEYLEN]


# --------------------------------------------------------------------------- SymmetricState


class SymmetricState:
    """Chaining key ``ck``, handshake hash ``h`` and the current handshake CipherState."""

    __slots__ = ("_ck", "_cs", "_h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self._h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self._h = _hash(protocol_name)
        self._ck = self._h
        self._cs = CipherState()

    @property
    def handshake_hash(self) -> bytes:
        return self._h

    @property
    def chaining_key(self) -> bytes:
        return self._ck

    def has_key(self) -> bool:
        return self._cs.has_key()

    def mix_key(self, ikm: bytes) -> None:
        self._ck, temp_k = _hkdf(self._ck, ikm, 2)
        self._cs.initialize_key(temp_k[:KEYLEN])

    def mix_hash(self, data: bytes) -> None:
        self._h = _hash(self._h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self._ck, temp_h, temp_k = _hkdf(self._ck, ikm, 3)
        self.mix_hash(temp_h)
        self._cs.initialize_key(temp_k[:KEYLEN])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self._cs.encrypt_with_ad(self._h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self._cs.decrypt_with_ad(self._h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        temp_k1, temp_k2 = _hkdf(self._ck, b"", 2)
        return CipherState(temp_k1[:KEYLEN]), CipherState(temp_k2[:KEYLEN])


# --------------------------------------------------------------------------- patterns

# Each pattern: (initiator pre-message, responder pre-message, message patterns).
# Message i is written by the initiator when i is even.  Tokens follow the spec exactly.
_Pattern = tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, ...], ...]]

_BASE_PATTERNS: Final[dict[str, _Pattern]] = {
    "NN": ((), (), (("e",), ("e", "ee"))),
    "NK": ((), ("s",), (("e", "es"), ("e", "ee"))),
    "NX": ((), (), (("e",), ("e", "ee", "s", "es"))),
    "XN": ((), (), (("e",), ("e", "ee"), ("s", "se"))),
    "XK": ((), ("s",), (("e", "es"), ("e", "ee"), ("s", "se"))),
    "XX": ((), (), (("e",), ("e", "ee", "s", "es"), ("s", "se"))),
    "KN": (("s",), (), (("e",), ("e", "ee", "se"))),
    "KK": (("s",), ("s",), (("e", "es", "ss"), ("e", "ee", "se"))),
    "KX": (("s",), (), (("e",), ("e", "ee", "se", "s", "es"))),
    "IN": ((), (), (("e", "s"), ("e", "ee", "se"))),
    "IK": ((), ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se"))),
    "IX": ((), (), (("e", "s"), ("e", "ee", "se", "s", "es"))),
}


def supported_patterns() -> tuple[str, ...]:
    """Base pattern names; each also accepts a single ``pskN`` modifier."""
    return tuple(_BASE_PATTERNS)


def _parse_pattern(name: str) -> _Pattern:
    """Resolve e.g. ``XXpsk3`` into its token lists (spec section 9.2 psk placement)."""
    base, sep, modifier = name.partition("psk")
    if base not in _BASE_PATTERNS:
        raise ValueError(f"unsupported handshake pattern {name!r}")
    pre_i, pre_r, messages = _BASE_PATTERNS[base]
    if not sep:
        return pre_i, pre_r, messages
    # One PSK is all sleeve needs; multiple modifiers would need a list of PSKs.
    if not (modifier.isascii() and modifier.isdigit()) or int(modifier) > len(messages):
        raise ValueError(f"unsupported handshake pattern {name!r}")
    index = int(modifier)
    msgs = [list(m) for m in messages]
    if index == 0:
        msgs[0].insert(0, "psk")
    else:
        msgs[index - 1].append("psk")
    return pre_i, pre_r, tuple(tuple(m) for m in msgs)


# --------------------------------------------------------------------------- HandshakeState


class HandshakeState:
    """One side of a Noise handshake.

    ``s`` is our static key, ``rs`` the peer's static public key when known in advance
    (pre-message patterns such as IK/XK/KK), ``psk`` the 32-byte pre-shared key for
    ``pskN`` patterns, and ``e`` an injected ephemeral (test vectors only).
    """

    def __init__(
        self,
        pattern: str,
        initiator: bool,
        prologue: bytes = b"",
        s: KeyPair | None = None,
        rs: bytes | None = None,
        psk: bytes | None = None,
        e: KeyPair | None = None,
    ) -> None:
        pre_i, pre_r, messages = _parse_pattern(pattern)
        self.protocol_name = f"Noise_{pattern}_{SUITE}"
        self._initiator = initiator
        self._messages = messages
        self._s = s
        self._e = e
        self._rs = rs
        self._re: bytes | None = None
        self._psk = psk
        self._psk_mode = "psk" in pattern
        self._index = 0
        self._failed = False
        self._validate_keys(pre_i, pre_r)

        self._ss = SymmetricState(self.protocol_name.encode("ascii"))
        self._ss.mix_hash(prologue)
        # Pre-messages: the initiator's keys are hashed first, then the responder's.
        for owner_is_initiator, tokens in ((True, pre_i), (False, pre_r)):
            for token in tokens:
                if token != "s":  # no supported pattern has a pre-message ephemeral
                    raise ValueError(f"unsupported pre-message token {token!r}")
                ours = owner_is_initiator == initiator
                key = self._s.public if ours and self._s else self._rs
                assert key is not None  # guaranteed by _validate_keys
                self._ss.mix_hash(key)

    def _validate_keys(self, pre_i: tuple[str, ...], pre_r: tuple[str, ...]) -> None:
        """Reject impossible configurations up front (a local error, so ValueError)."""
        mine = pre_i if self._initiator else pre_r
        theirs = pre_r if self._initiator else pre_i
        my_parity = 0 if self._initiator else 1
        sends_static = "s" in mine or any(
            "s" in msg for i, msg in enumerate(self._messages) if i % 2 == my_parity
        )
        # DH tokens that use our static key: initiator -> se/ss, responder -> es/ss.
        own_static_tokens = ("se", "ss") if self._initiator else ("es", "ss")
        needs_s = sends_static or any(t in m for m in self._messages for t in own_static_tokens)
        if needs_s and self._s is None:
            raise ValueError("pattern requires a local static key (s)")
        if "s" in theirs and self._rs is None:
            raise ValueError("pattern requires the remote static key (rs)")
        if self._rs is not None and len(self._rs) != DHLEN:
            raise ValueError(f"remote static key must be {DHLEN} bytes")
        if self._psk_mode and (self._psk is None or len(self._psk) != 32):
            raise ValueError("psk patterns require a 32-byte psk")

    # -- state -------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._index >= len(self._messages)

    @property
    def expects_write(self) -> bool:
        """True when the next step for this side is ``write_message``."""
        return not self.complete and (self._index % 2 == 0) == self._initiator

    @property
    def handshake_hash(self) -> bytes:
        """Final ``h``: a channel-binding value identical on both sides."""
        if not self.complete:
            raise HandshakeError("handshake not complete")
        return self._ss.handshake_hash

    @property
    def remote_static(self) -> bytes | None:
        return self._rs

    def split(self) -> tuple[CipherState, CipherState]:
        """(initiator->responder, responder->initiator) transport CipherStates."""
        if not self.complete or self._failed:
            raise HandshakeError("handshake not complete")
        return self._ss.split()

    def chaining_key(self) -> bytes:
        """The final chaining key ``ck``, the root of sleeve's post-handshake rekeying.

        Not part of the Noise API: ``crypto.rekey`` mixes fresh Diffie-Hellman outputs
        into it (as a further ``MixKey``), so later keys depend on this authenticated
        handshake. Never send or log it.
        """
        if not self.complete or self._failed:
            raise HandshakeError("handshake not complete")
        return self._ss.chaining_key


    def _check_turn(self, writing: bool) -> None:
        if self._failed:
            raise HandshakeError("handshake already failed")
        if self.complete:
            raise HandshakeError("handshake already complete")
        if self.expects_write != writing:
            raise HandshakeError("message out of turn")

    def _dh_token(self, token: str) -> bytes:
        # es = DH(initiator e, responder s); se = DH(initiator s, responder e).
        e, s, re, rs = self._e, self._s, self._re, self._rs
        if token == "ee":
            local, remote = e, re
        elif token == "ss":
            local, remote = s, rs
        elif (token == "es") == self._initiator:
            local, remote = e, rs
        else:
            local, remote = s, re
        if local is None or remote is None:
            raise HandshakeError("key required by pattern is missing")
        return _dh(local, remote)

    # -- messages ----------------------------------------------------------------------

    def write_message(self, payload: bytes) -> bytes:
        self._check_turn(writing=True)
        try:
            message = self._write(payload)
        except HandshakeError:
            # e.g. a low-order remote ephemeral: h/ck are half-updated, so stop here.
            self._failed = True
            raise
        self._index += 1
        return message

    def _write(self, payload: bytes) -> bytes:
        out: list[bytes] = []
        for token in self._messages[self._index]:
            if token == "e":
                if self._e is None:
                    self._e = KeyPair.generate()
                out.append(self._e.public)
                self._ss.mix_hash(self._e.public)
                if self._psk_mode:
                    self._ss.mix_key(self._e.public)
            elif token == "s":
                assert self._s is not None  # guaranteed by _validate_keys
                out.append(self._ss.encrypt_and_hash(self._s.public))
            elif token == "psk":
                assert self._psk is not None
                self._ss.mix_key_and_hash(self._psk)
            else:
                self._ss.mix_key(self._dh_token(token))
        out.append(self._ss.encrypt_and_hash(payload))
        message = b"".join(out)
        if len(message) > MAX_MESSAGE_LEN:
            self._failed = True  # h/ck already advanced, so the state is unusable
            raise ValueError("handshake payload too large")
        return message

    def read_message(self, message: bytes) -> bytes:
        self._check_turn(writing=False)
        try:
            payload = self._read(message)
        except HandshakeError:
            # h and ck may be half-updated; refuse to continue rather than risk misuse.
            self._failed = True
            raise
        self._index += 1
        return payload

    def _read(self, message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE_LEN:
            raise HandshakeError("handshake message too long")
        view = memoryview(message)
        pos = 0

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(view):
                raise HandshakeError("handshake message truncated")
            chunk = bytes(view[pos : pos + n])
            pos += n
            return chunk

        for token in self._messages[self._index]:
            if token == "e":
                self._re = take(DHLEN)
                self._ss.mix_hash(self._re)
                if self._psk_mode:
                    self._ss.mix_key(self._re)
            elif token == "s":
                n = DHLEN + TAGLEN if self._ss.has_key() else DHLEN
                self._rs = self._ss.decrypt_and_hash(take(n))
            elif token == "psk":
                assert self._psk is not None
                self._ss.mix_key_and_hash(self._psk)
            else:
                self._ss.mix_key(self._dh_token(token))
        rest = bytes(view[pos:])
        if self._ss.has_key() and len(rest) < TAGLEN:
            raise HandshakeError("handshake message truncated")
        return self._ss.decrypt_and_hash(rest)
