"""Persistent static X25519 identity, the Ed25519 signing key derived from it, the peer id.

One secret per node, ``state_dir/static.key``: its X25519 static private key, which the
Noise handshake proves possession of. From it a second key is derived deterministically,
an Ed25519 *signing key* (seed = keyed BLAKE2b-256, key = the static private key, message
``b"sleeve signing key"``); a PRF output, so the two keys are independent in every way
that matters while there is still only one secret to store.

The peer id names the signing key: ``BLAKE2b-256(b"sleeve-peer-id-ed25519" | ed_pub)[:8]``.
Whatever carries a peer id can therefore be checked against a key:

- gossip records carry the owner's Ed25519 public key and a signature by it
  (``proto.topology``): nobody else can write a record under that peer id;
- the handshake authenticates the X25519 static key, and the Hello that follows carries
  the Ed25519 public key and a *certificate*, a signature by it over
  ``b"sleeve-static-cert-v1" | x25519_pub`` (``proto.control``): the id of a direct
  neighbour is bound to the key it proved in the handshake. A peer cannot reuse someone
  else's certificate, since it names a static key it cannot prove.

A name cannot be claimed without both keys (or a 2^64 second preimage of the id).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
from typing import Final

import nacl.bindings as _sodium
import nacl.exceptions as _nacl_exc

from sleeve.crypto.noise import DHLEN, KeyPair

__all__ = [
    "PEER_ID_LEN",
    "SIGNATURE_LEN",
    "SIGN_KEY_LEN",
    "STATIC_KEY_FILE",
    "Signer",
    "format_peer_id",
    "load_or_create_static_key",
    "peer_id_of",
    "verify",
    "verify_static_cert",
]

STATIC_KEY_FILE: Final = "static.key"
PEER_ID_LEN: Final = 8
SIGN_KEY_LEN: Final = 32  # Ed25519 public key
SIGNATURE_LEN: Final = 64  # Ed25519 signature
_PEER_ID_LABEL: Final = b"sleeve-peer-id-ed25519"
_SIGN_SEED_LABEL: Final = b"sleeve signing key"
_CERT_LABEL: Final = b"sleeve-static-cert-v1"


def _read_key(path: pathlib.Path) -> KeyPair:
    with path.open("rb") as f:
        data = f.read(DHLEN + 1)  # one extra byte detects an over-long file cheaply
    if len(data) != DHLEN:
        raise ValueError(
            f"{path}: static key file must contain exactly {DHLEN} raw bytes "
            f"(found {'more' if len(data) > DHLEN else len(data)}); "
            "remove it to generate a new identity"
        )
    return KeyPair.from_private(data)


def _fsync_dir(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_or_create_static_key(state_dir: pathlib.Path) -> KeyPair:
    """Load ``state_dir/static.key``, creating it (mode 0600) on first start.

    The new key is written to a private temp file (O_CREAT|O_EXCL, 0600 from the start so
    it is never briefly world-readable), fsynced, then published atomically.  Publishing
    uses ``link`` rather than ``rename`` when possible so that two processes racing on a
    fresh state dir both end up with the same key instead of one silently clobbering it.
    """
    state_dir = pathlib.Path(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = state_dir / STATIC_KEY_FILE
    if path.exists():
        return _read_key(path)

    kp = KeyPair.generate()
    tmp = state_dir / f".{STATIC_KEY_FILE}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            view = memoryview(kp.private)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            # Another process won the race; its key is the identity now.
            return _read_key(path)
        except OSError:
            # Filesystem without hard links: fall back to an atomic rename.
            os.rename(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(state_dir)
    return kp


def peer_id_of(sign_public: bytes) -> bytes:
    """The peer id of an Ed25519 public key: BLAKE2b-256(label | key)[:8].

    (Not of the X25519 static key: that one is bound to the id by a certificate.)
    """
    if len(sign_public) != SIGN_KEY_LEN:
        raise ValueError(f"signing public key must be {SIGN_KEY_LEN} bytes")
    return hashlib.blake2b(_PEER_ID_LABEL + sign_public, digest_size=32).digest()[:PEER_ID_LEN]


class Signer:
    """An Ed25519 signing key: the node's identity in gossip, named by ``peer_id``.

    ``Signer.from_static`` derives the node's one from its static X25519 key; tests and
    benchmarks may build one from any 32-byte seed. The private key never leaves the
    object (not in repr, no accessor).
    """

    __slots__ = ("_cert", "_key", "peer_id", "public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != _sodium.crypto_sign_SEEDBYTES:
            raise ValueError(f"signing key seed must be {_sodium.crypto_sign_SEEDBYTES} bytes")
        pk, sk = _sodium.crypto_sign_seed_keypair(bytes(seed))
        self._key: bytes = sk
        self.public: bytes = pk
        self.peer_id: bytes = peer_id_of(pk)
        self._cert: tuple[bytes, bytes] | None = None  # (static public, certificate)

    @classmethod
    def from_static(cls, static: KeyPair) -> Signer:
        """The signing key that belongs to a static X25519 key (deterministic)."""
        return cls(hashlib.blake2b(_SIGN_SEED_LABEL, key=static.private, digest_size=32)
                   .digest())

    def sign(self, message: bytes) -> bytes:
        """A detached Ed25519 signature (deterministic: same message, same bytes)."""
        return bytes(_sodium.crypto_sign(message, self._key)[:SIGNATURE_LEN])

    def certify(self, static_public: bytes) -> bytes:
        """The certificate binding ``static_public`` (X25519) to this key (cached)."""
        if len(static_public) != DHLEN:
            raise ValueError(f"static public key must be {DHLEN} bytes")
        if self._cert is None or self._cert[0] != static_public:
            self._cert = (bytes(static_public), self.sign(_CERT_LABEL + static_public))
        return self._cert[1]

    def agree(self, peer_sign_public: bytes) -> bytes:
        """The X25519 shared secret of this key and another peer's Ed25519 public key.

        Both keys are mapped to Curve25519 (the birational map libsodium provides, as age
        and minisign-style tools do for Ed25519 keys), so any two peers that know each
        other's *signing* keys -- carried, and proven by the peer id, in every topology
        record -- share a secret without an exchange (``crypto.origin`` derives the keys
        that authenticate relayed records from it). Raises ValueError for a key that is
        not a valid point or gives an all-zero secret (small order).
        """
        if len(peer_sign_public) != SIGN_KEY_LEN:
            raise ValueError(f"signing public key must be {SIGN_KEY_LEN} bytes")
        try:
            theirs = _sodium.crypto_sign_ed25519_pk_to_curve25519(bytes(peer_sign_public))
            ours = _sodium.crypto_sign_ed25519_sk_to_curve25519(self._key)
            return bytes(_sodium.crypto_scalarmult(ours, theirs))
        except (_nacl_exc.CryptoError, ValueError, TypeError):
            raise ValueError("peer signing key is not usable for key agreement") from None

    def __repr__(self) -> str:
        return f"Signer({format_peer_id(self.peer_id)})"


def verify(sign_public: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` by the key.

    libsodium rejects non-canonical signatures and small-order keys, so a signature
    cannot be altered into another valid one for the same message. Never raises.
    """
    if len(sign_public) != SIGN_KEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        _sodium.crypto_sign_open(signature + message, sign_public)
    except (_nacl_exc.CryptoError, ValueError, TypeError):  # BadSignatureError is one
        return False
    return True


def verify_static_cert(sign_public: bytes, static_public: bytes, cert: bytes) -> bool:
    """Whether ``cert`` is ``sign_public``'s certificate for the X25519 ``static_public``."""
    return len(static_public) == DHLEN and verify(sign_public, _CERT_LABEL + static_public,
                                                  cert)


def format_peer_id(pid: bytes) -> str:
    """Lowercase hex pairs joined by ':' (e.g. ``3a:9f:...``)."""
    return ":".join(f"{b:02x}" for b in pid)


def stable_mac(pid: bytes) -> bytes:
    """The TAP's MAC, derived from the peer id: unicast, locally administered, stable."""
    m = bytearray(hashlib.blake2b(b"sleeve-tap-mac" + pid, digest_size=6).digest())
    m[0] = (m[0] & 0xFE) | 0x02
    return bytes(m)
