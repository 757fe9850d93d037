"""Persistent static X25519 identity and the peer id derived from it.

The node's name on the overlay is a function of its static public key, so a peer cannot
claim a name without holding the matching private key (the Noise handshake proves it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
from typing import Final

from sleeve.crypto.noise import DHLEN, KeyPair

__all__ = [
    "PEER_ID_LEN",
    "STATIC_KEY_FILE",
    "format_peer_id",
    "load_or_create_static_key",
    "peer_id",
]

STATIC_KEY_FILE: Final = "static.key"
PEER_ID_LEN: Final = 8
_PEER_ID_LABEL: Final = b"sleeve-peer-id"


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


def peer_id(public: bytes) -> bytes:
    """First 8 bytes of BLAKE2b-256(b"sleeve-peer-id" | public)."""
    if len(public) != DHLEN:
        raise ValueError(f"static public key must be {DHLEN} bytes")
    return hashlib.blake2b(_PEER_ID_LABEL + public, digest_size=32).digest()[:PEER_ID_LEN]


def format_peer_id(pid: bytes) -> str:
    """Lowercase hex pairs joined by ':' (e.g. ``3a:9f:...``)."""
    return ":".join(f"{b:02x}" for b in pid)


def stable_mac(pid: bytes) -> bytes:
    """The TAP's MAC, derived from the peer id: unicast, locally administered, stable."""
    m = bytearray(hashlib.blake2b(b"sleeve-tap-mac" + pid, digest_size=6).digest())
    m[0] = (m[0] & 0xFE) | 0x02
    return bytes(m)
