"""The local API's unix socket: where every state-changing request must come in.

Who may change the router is decided by the file system, which the kernel enforces at
``connect(2)``: on Linux connecting to a path-bound stream socket needs write permission
on the socket file (unix(7)). So::

    DIR     created 0700 root (0750 root:GROUP with --api-group); an existing DIR must
            be ours and writable by nobody else (else another user could swap the socket)
    SOCKET  0600 root (0660 root:GROUP with --api-group)

The permissions are set after ``bind`` and before ``listen``: a connect to a bound socket
that does not listen yet is refused, so there is no window in which the file is open to
others, and no process-wide umask to change under the event loop's other threads.

Why not SO_PEERCRED as the check: it gives the peer's uid and *primary* gid only, so a
member of --api-group through a supplementary group would need a group-database lookup
(NSS, blocking) per connection: more code that can be wrong, for what the kernel already
checked. The peer's uid and pid are logged with each state change instead (an audit
trail: ``peer_cred``).

The default directory (/run/sleeve) is sleeve's own: its mode and group follow the
options on every start. A directory the operator chose is never chmod-ed by us.
"""

from __future__ import annotations

import os
import pathlib
import socket
import stat
import struct
from dataclasses import dataclass
from typing import Any

MAX_PATH = 107  # sun_path is 108 bytes with the terminating NUL


@dataclass(frozen=True)
class ApiSocket:
    """Where the state-changing API listens: ``gid`` None is root only (0600)."""

    path: pathlib.Path
    gid: int | None = None
    manage_dir: bool = False  # the directory is sleeve's own (the default /run/sleeve)


def check_socket_path(text: str, what: str = "--api-socket") -> pathlib.Path:
    """An absolute path that fits a sockaddr_un; ValueError (one line) otherwise."""
    p = pathlib.Path(text)
    if not p.is_absolute() or p.name in ("", ".", ".."):
        raise ValueError(f"{what} needs an absolute file path, like /run/sleeve/sleeve.sock: "
                         f"{text!r}")
    if len(os.fsencode(text)) > MAX_PATH:
        raise ValueError(f"{what} is longer than {MAX_PATH} bytes (a unix socket limit): "
                         f"{text[:60]!r}...")
    return p


def _prepare_dir(d: pathlib.Path, gid: int | None, manage: bool) -> None:
    mode = 0o700 if gid is None else 0o750
    if not d.exists():
        d.mkdir(mode=0o700, parents=True)
        manage = True  # ours: we made it
    st = d.stat()
    if st.st_uid != os.geteuid():
        raise OSError(f"{d} belongs to uid {st.st_uid}, not to us: the API socket needs a "
                      f"directory only we can change")
    if manage:
        os.chmod(d, mode)
        os.chown(d, -1, os.getegid() if gid is None else gid)
        return
    if st.st_mode & 0o022:
        raise OSError(f"{d} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                      f"give the API socket a directory of its own")
    if gid is not None and not (st.st_mode & 0o001 or (st.st_gid == gid and st.st_mode & 0o010)):
        raise OSError(f"--api-group members cannot reach {d} (mode "
                      f"{stat.S_IMODE(st.st_mode):04o}): chgrp it and chmod g+x, or pick a "
                      f"new directory")


def clear_stale(path: pathlib.Path, who: str) -> None:
    """Remove a socket at ``path`` that nobody answers (left by a killed process); refuse
    (OSError, one line) a live one, naming ``who`` serves there, or a file that is not one."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        if probe.connect_ex(str(path)) == 0:
            raise OSError(f"{path}: another {who} is listening there")
    path.unlink()


def bind_api_socket(where: ApiSocket) -> tuple[socket.socket, int]:
    """A listening, non-blocking unix socket at ``where.path``: 0600, or 0660 for its group.

    Returns the socket and the file's inode (to remove only our own file at the end).
    A stale socket from a killed router is replaced; a live one, or anything that is
    not a socket, is refused (OSError with a one-line reason)."""
    path, gid = where.path, where.gid
    _prepare_dir(path.parent, gid, where.manage_dir)
    clear_stale(path, "router")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # not listening yet: every connect is refused until the mode below is in place
        os.chown(path, -1, os.getegid() if gid is None else gid)
        os.chmod(path, 0o600 if gid is None else 0o660)
        ino = path.lstat().st_ino
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, ino


def remove_socket(path: pathlib.Path, ino: int) -> None:
    """Unlink ``path`` if it is still the socket we made (a newer router may own it)."""
    try:
        if path.lstat().st_ino == ino:
            path.unlink()
    except OSError:
        pass


def peer_cred(sock: Any) -> tuple[int, int] | None:
    """(pid, uid) of the process at the other end of a unix socket, for the log."""
    try:
        if sock is None or sock.family != socket.AF_UNIX:
            return None
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    except (OSError, AttributeError):
        return None
    return int(pid), int(uid)
