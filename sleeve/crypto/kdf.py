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
    "PSK_TEXT_PREFIX",
    "format_psk",
    "parse_psk",
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


# ``sleeve psk`` writes the derived key as this prefix + unpadded URL-safe base64. The prefix
# is why a ``sleeve keygen`` secret (also 43 base64 characters) given to --psk-file by mistake
# is refused instead of silently becoming a different network key than the password's.
PSK_TEXT_PREFIX: Final = "sleeve-psk-v1:"


def format_psk(psk: bytes) -> str:
    """The text of a PSK file: what ``--psk-file`` reads back with :func:`parse_psk`."""
    if len(psk) != PSK_LEN:
        raise ValueError(f"a PSK is {PSK_LEN} bytes, not {len(psk)}")
    return PSK_TEXT_PREFIX + base64.urlsafe_b64encode(psk).rstrip(b"=").decode("ascii")


def parse_psk(text: str) -> bytes:
    """The 32-byte PSK from a PSK file's text; ValueError (never showing the text) if it is
    not one. Why a file of the derived key exists at all: Argon2id costs every router start
    ~0.06 s of CPU and 64 MiB alone, several seconds when 50 start on 2 cores (issue 23);
    deriving once (``sleeve psk``) gives the same key, so the routers interoperate with
    those given the password, and the file grants exactly what the password grants; it shows
    the password only to offline guessing, one Argon2id per guess (the salt is fixed)."""
    text = text.strip()
    if not text.startswith(PSK_TEXT_PREFIX):
        raise ValueError(f"not a sleeve PSK (it starts with {PSK_TEXT_PREFIX!r}; make one with "
                         "`sleeve psk`)")
    body = text[len(PSK_TEXT_PREFIX):]
    try:
        psk = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except ValueError:
        raise ValueError("the PSK is not valid base64") from None
    if len(psk) != PSK_LEN or format_psk(psk) != text:
        raise ValueError(f"the PSK is not {PSK_LEN} bytes of canonical base64")
    return psk


def random_secret() -> str:
    """32 random bytes as unpadded URL-safe base64 (43 chars), for ``sleeve keygen``."""
    return base64.urlsafe_b64encode(_nacl_utils.random(32)).rstrip(b"=").decode("ascii")
