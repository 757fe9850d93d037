"""Password-derived network PSK and random secret generation.

Every node of one sleeve network must derive the *same* 32-byte PSK from the shared
password (it is the ``psk`` of the XXpsk3 handshake), so the Argon2id parameters and salt
below are fixed forever for ``v1``; changing any of them is a wire-incompatible change.

Why a fixed salt is acceptable: a salt exists to stop one precomputation from attacking
many independent password hashes.  Here there is exactly one derived value per network
and it must be reproducible on every node without coordination, so a per-node random
salt is impossible; the constant only domain-separates sleeve's derivation from any other
Argon2id use of the same password.  Strength therefore rests on the password itself:
use ``sleeve keygen`` (:func:`random_secret`) rather than a human-chosen phrase.
"""

from __future__ import annotations

import base64
from typing import Final

import nacl.exceptions as _nacl_exc
import nacl.pwhash.argon2id as _argon2id
import nacl.utils as _nacl_utils

__all__ = [
    "PSK_LEN",
    "PSK_MEMLIMIT",
    "PSK_OPSLIMIT",
    "PSK_SALT",
    "psk_from_password",
    "random_secret",
]

PSK_LEN: Final = 32
# libsodium's "interactive" Argon2id profile, written as literals so a library upgrade can
# never silently change every node's PSK.  ~0.1-0.3 s and 64 MiB: keeps startup < 1 s.
PSK_OPSLIMIT: Final = 2
PSK_MEMLIMIT: Final = 64 * 1024 * 1024
# Exactly argon2id.SALTBYTES (16) long; see the module docstring for why it is constant.
PSK_SALT: Final = b"sleeve-psk-v1\x00\x00\x00"


def psk_from_password(password: bytes) -> bytes:
    """Derive the 32-byte network PSK from the shared password (Argon2id, fixed params)."""
    if not password:
        raise ValueError("password must not be empty (an empty password gives no security)")
    try:
        return bytes(
            _argon2id.kdf(PSK_LEN, password, PSK_SALT, opslimit=PSK_OPSLIMIT, memlimit=PSK_MEMLIMIT)
        )
    except _nacl_exc.CryptoError as exc:
        # Typically an allocation failure for the 64 MiB work area; never echo the password.
        raise RuntimeError(f"argon2id key derivation failed: {type(exc).__name__}") from None


def random_secret() -> str:
    """32 random bytes as unpadded URL-safe base64 (43 chars), for ``sleeve keygen``."""
    return base64.urlsafe_b64encode(_nacl_utils.random(32)).rstrip(b"=").decode("ascii")
