"""End-to-end authentication of who *originated* a relayed or broadcast data record.

Every hop opens and re-seals a datagram with its own link session, so the link tells a
receiver only which neighbour handed a record over. A relayed record (or one passed down
a broadcast tree) names its source peer in the clear inside that body; without the
source's own proof, any relay could write any source there. Two proofs, one per kind:

- **unicast** (a relayed record for one destination): a 16-byte keyed BLAKE2b tag under a
  key only the source and the destination can compute. Both peers' Ed25519 signing keys
  are in their signed topology records (the peer id is the hash of the key, so a record
  cannot carry another peer's key), hence X25519 of the two keys mapped to Curve25519
  (``Signer.agree``) is a static-static secret nobody else holds. The key is
  ``BLAKE2b(label | src | src_uid | dst | dst_uid, key=secret)``: one per direction and
  per *incarnation* of both ends (uid = random per process start, signed in the records),
  so a restarted peer gets fresh keys and its counter may start again at 0.
- **broadcast**: every receiver checks it, so a pairwise tag would need one per receiver;
  the source signs ``label | src | src_uid | counter | kind | payload`` with its Ed25519
  key instead (~20 us to sign, once per frame; ~60 us to verify per receiver). Broadcasts
  are ARP, ND, DHCP and unknown-unicast floods: a small share of traffic.

- **pieces of a relayed super-frame** (``forward.relayseg``, bulk TCP through a relay):
  the unicast proof with a faster MAC. Keyed BLAKE2b runs hashlib's reference C code,
  ~2.3 us per 1400-byte piece, more than the hop's own AEAD; a piece's tag is instead
  ChaCha20-Poly1305 (OpenSSL) sealing the empty message with the piece as associated
  data, nonce = 4 zero bytes | the record's counter (BE), ~0.85 us: an AEAD over no
  plaintext is a nonce-based MAC. Its key is ``BLAKE2b("sleeve-relay-piece-key-v1",
  key=<the direction's unicast key>)``, so no key serves two constructions, and a
  (key, nonce) pair never repeats: the counter is the sender's, one per record, never
  reused within an incarnation. The counter shares the destination's replay window with
  the other unicast records.

Both carry a 64-bit counter, covered by the proof, for the receiver's replay window. The
hop limit is not covered: relays must decrement it (a relay can only make a record die
sooner, which it could by dropping it anyway).

Why the signing key does double duty: the X25519 static key of a non-neighbour is not in
its topology record, while its Ed25519 key is, authenticated by the peer id. Using one
Ed25519 key pair for signatures and for X25519 is shown jointly secure by Thormarker,
"On using the same key pair for Ed25519 and an X25519 based KEM" (2021); the secret is
only ever fed to a KDF, never used raw.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from sleeve.crypto.keys import Signer, verify

__all__ = ["TAG_LEN", "PieceMac", "bcast_message", "relay_key", "relay_tag", "sign_bcast", "tag_ok",
           "verify_bcast"]

TAG_LEN: Final = 16
_KEY_LABEL: Final = b"sleeve-relay-key-v1"
_BCAST_LABEL: Final = b"sleeve-bcast-v1"
_PIECE_LABEL: Final = b"sleeve-relay-piece-key-v1"
_NONCE_PAD: Final = bytes(4)


def relay_key(signer: Signer, src: bytes, src_uid: int, dst: bytes, dst_uid: int,
              peer_sign_public: bytes) -> bytes:
    """The key of records from ``src`` to ``dst`` (either end may be ``signer``'s peer).

    Raises ValueError for an unusable peer key (see ``Signer.agree``).
    """
    secret = signer.agree(peer_sign_public)
    return hashlib.blake2b(_KEY_LABEL + src + src_uid.to_bytes(8, "big") + dst
                           + dst_uid.to_bytes(8, "big"), key=secret, digest_size=32).digest()


def relay_tag(key: bytes, counter: bytes, kind: int, payload: bytes | memoryview) -> bytes:
    """16-byte keyed BLAKE2b over counter (8 bytes), kind and payload."""
    h = hashlib.blake2b(counter, key=key, digest_size=TAG_LEN)
    h.update(kind.to_bytes(1, "big"))
    h.update(payload)
    return h.digest()


def tag_ok(key: bytes, counter: bytes, kind: int, payload: bytes | memoryview,
           tag: bytes | memoryview) -> bool:
    """Constant-time check of a ``relay_tag``."""
    return hmac.compare_digest(relay_tag(key, counter, kind, payload), bytes(tag))


def bcast_message(src: bytes, src_uid: int, counter: bytes, kind: int,
                  payload: bytes | memoryview) -> bytes:
    return (_BCAST_LABEL + src + src_uid.to_bytes(8, "big") + counter + kind.to_bytes(1, "big")
            + bytes(payload))


def sign_bcast(signer: Signer, uid: int, counter: bytes, kind: int,
               payload: bytes | memoryview) -> bytes:
    """The source's 64-byte signature over a broadcast record."""
    return signer.sign(bcast_message(signer.peer_id, uid, counter, kind, payload))


def verify_bcast(sign_public: bytes, src: bytes, src_uid: int, counter: bytes, kind: int,
                 payload: bytes | memoryview, sig: bytes | memoryview) -> bool:
    return verify(sign_public, bcast_message(src, src_uid, counter, kind, payload), bytes(sig))


class PieceMac:
    """Tags of relayed super-frame pieces under one direction's unicast key (see above)."""

    __slots__ = ("_aead",)

    def __init__(self, relay_key_: bytes) -> None:
        self._aead = ChaCha20Poly1305(hashlib.blake2b(_PIECE_LABEL, key=relay_key_,
                                                      digest_size=32).digest())

    def __repr__(self) -> str:  # never show the key
        return "PieceMac(...)"

    def tag(self, counter: bytes, payload: bytes | memoryview) -> bytes:
        """16-byte tag of ``payload`` under the 8-byte ``counter``."""
        return self._aead.encrypt(_NONCE_PAD + counter, b"", payload)

    def ok(self, counter: bytes, payload: bytes | memoryview, tag: bytes | memoryview) -> bool:
        try:
            self._aead.decrypt(_NONCE_PAD + counter, tag, payload)  # a view will do
        except InvalidTag:
            return False
        return True
