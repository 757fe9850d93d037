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

Binding (issue 23): the data plane's AEAD is the ``cryptography`` package's
``ChaCha20Poly1305`` (OpenSSL's implementation), the same IETF construction byte for byte
as libsodium's ``crypto_aead_chacha20poly1305_ietf_*``, so old and new routers
interoperate (tests/test_crypto.py seals with one and opens with the other, both ways).
Measured on this project's VMs (``bench/test_micro.py -k aead``): the bare call on a
1400-byte body takes about 1.45 us where libsodium through PyNaCl's cffi module with a
preallocated buffer (issue 9's binding, itself cheaper than ``nacl.bindings``) takes
2.1 us; a 100-byte one 0.9-1.0 vs 1.0-1.05 us. OpenSSL's assembly is faster on these
CPUs, and one call returns the result without a copy out of a scratch buffer. The key is
checked at construction; nonces are built here, never passed in. Everything else (Noise,
BLAKE2b, X25519, Argon2id) stays on libsodium (PyNaCl).

Key rotation (:class:`KeyChain`) is a one-way hash chain per direction, so both ends derive
the same keys with no message exchange and a key in use now says nothing about earlier ones::

    C_0 = the data key from the handshake          K_0 = C_0
    C_e = BLAKE2b(key=C_{e-1}, "sleeve rekey"     | e as 8-byte BE)      e >= 1
    K_e = BLAKE2b(key=C_e,     "sleeve epoch key" | e as 8-byte BE)      e >= 1

``K_e`` seals epoch ``e``'s datagrams; the chain key ``C_e`` never touches a packet. Keeping
them apart matters in Python, where an AEAD key is an immutable ``bytes`` (and a copy lives
inside the ``cryptography`` binding's cipher object) that cannot be wiped: a stale copy of
an old ``K_e`` left in freed memory opens that one epoch only, whereas a stale chain key
would open every later epoch. Chain keys
live in ``bytearray``s that are overwritten as soon as the chain moves on. ``K_0 = C_0``
keeps epoch 0 byte-identical to the datagrams sleeve sent before rotation existed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from sleeve.crypto.noise import HASHLEN, DecryptError, RekeyRequired

__all__ = [
    "COUNTER_LIMIT",
    "KEYLEN",
    "TAGLEN",
    "DecryptError",
    "KeyChain",
    "Opener",
    "RekeyRequired",
    "Sealer",
    "derive_data_keys",
    "wipe",
]

KEYLEN: Final = 32
TAGLEN: Final = 16
# Stop well short of 2**64-1 (reserved by Noise-style rekeying) so a session is torn
# down and re-handshaken long before any nonce could wrap.
_COUNTER_MARGIN: Final = 2**16
COUNTER_LIMIT: Final = 2**64 - 1 - _COUNTER_MARGIN

_LABEL_I2R: Final = b"sleeve data i2r"
_LABEL_R2I: Final = b"sleeve data r2i"
_LABEL_REKEY: Final = b"sleeve rekey"
_LABEL_EPOCH_KEY: Final = b"sleeve epoch key"


_NONCE_PAD: Final = b"\x00\x00\x00\x00"


def _nonce(counter: int) -> bytes:
    return _NONCE_PAD + counter.to_bytes(8, "little")


def _check_key(key: bytes) -> bytes:
    if len(key) != KEYLEN:
        raise ValueError(f"data-plane key must be {KEYLEN} bytes")
    return bytes(key)


class Sealer:
    """Seals outgoing packets for one direction of one session (one key epoch).

    ``limit`` caps how many packets this key seals (default: the whole safe counter
    space); :meth:`seal` raises :class:`RekeyRequired` once it is reached, so a caller
    that rotates keys (``DataSession``) sets it to its rekey-after-messages and rotates
    on the exception, long before :data:`COUNTER_LIMIT`.
    """

    __slots__ = ("_aead", "_counter", "_encrypt", "_limit")

    def __init__(self, key: bytes, encrypt: bool = True, limit: int = COUNTER_LIMIT) -> None:
        if not 1 <= limit <= COUNTER_LIMIT:
            raise ValueError(f"sealer limit must be 1..{COUNTER_LIMIT}")
        self._aead = ChaCha20Poly1305(_check_key(key))
        self._encrypt = encrypt
        self._counter = 0
        self._limit = limit

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
        if counter >= self._limit:
            raise RekeyRequired("data-plane counter exhausted; rekey required")
        self._counter = counter + 1
        header = build_header(counter)
        nonce = _NONCE_PAD + counter.to_bytes(8, "little")  # _nonce(), inlined: hot path
        if self._encrypt:
            return header + self._aead.encrypt(nonce, plaintext, header)
        ad = header + plaintext
        return ad + self._aead.encrypt(nonce, b"", ad)  # the tag alone


class Opener:
    """Opens incoming packets for one direction of one session (no replay checking)."""

    __slots__ = ("_aead", "_encrypt")

    def __init__(self, key: bytes, encrypt: bool = True) -> None:
        self._aead = ChaCha20Poly1305(_check_key(key))
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
        nonce = _NONCE_PAD + counter.to_bytes(8, "little")  # _nonce(), inlined: hot path
        if self._encrypt:
            try:
                return self._aead.decrypt(nonce, body, header)
            except InvalidTag:
                raise DecryptError("AEAD authentication failed") from None
        plaintext = bytes(body[:-TAGLEN])
        try:
            self._aead.decrypt(nonce, body[-TAGLEN:], bytes(header) + plaintext)
        except InvalidTag:
            raise DecryptError("AEAD authentication failed") from None
        return plaintext


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


# ------------------------------------------------------------------------- key rotation


def wipe(buf: bytearray) -> None:
    """Overwrite ``buf`` with zeros in place (same length: no reallocation)."""
    buf[:] = bytes(len(buf))


class KeyChain:
    """One direction's chain of epoch keys (see the module docstring for the formulas).

    What wiping achieves, and what it does not: the chain key is held in one
    ``bytearray`` that is overwritten in place when the chain advances and by
    :meth:`wipe`, so a later disclosure of this process's live memory (a core dump, swap,
    a debugger) finds no chain key of a past epoch, hence no way back *or forward* from
    it. It cannot erase copies Python made along the way: ``hashlib`` returns each
    digest as an immutable ``bytes`` that is freed but not cleared, the message keys
    ``K_e`` are ``bytes`` (and copied into the binding's cipher object) and are only
    dropped, and the epoch-0 key
    belongs to the caller. Those leftovers expose at most their own epoch (``K_e``) or
    are transient; none of this defends against an attacker who can read memory *now*.
    """

    __slots__ = ("_chain", "_epoch")

    def __init__(self, key: bytes | bytearray, epoch: int = 0) -> None:
        if len(key) != KEYLEN:
            raise ValueError(f"data-plane key must be {KEYLEN} bytes")
        self._chain = bytearray(key)
        self._epoch = epoch

    def __repr__(self) -> str:  # never show the key
        return f"KeyChain(epoch={self._epoch})"

    @property
    def epoch(self) -> int:
        return self._epoch

    def key(self) -> bytes:
        """``K_epoch``: the AEAD key of this epoch."""
        if self._epoch == 0:
            return bytes(self._chain)  # K_0 = C_0: epoch 0 is the pre-rotation wire format
        return hashlib.blake2b(_LABEL_EPOCH_KEY + self._epoch.to_bytes(8, "big"),
                               key=self._chain, digest_size=KEYLEN).digest()

    def _next_chain(self) -> bytes:
        return hashlib.blake2b(_LABEL_REKEY + (self._epoch + 1).to_bytes(8, "big"),
                               key=self._chain, digest_size=KEYLEN).digest()

    def next(self) -> KeyChain:
        """A new chain one epoch ahead; this one is left as it is."""
        return KeyChain(self._next_chain(), self._epoch + 1)

    def advance(self) -> None:
        """Move to the next epoch, overwriting the current chain key in place."""
        self._chain[:] = self._next_chain()
        self._epoch += 1

    def wipe(self) -> None:
        """Zero the chain key; the chain is unusable afterwards (keys are all zero-derived)."""
        wipe(self._chain)
