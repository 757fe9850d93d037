"""Underlay socket options: buffers past rmem_max for root."""

from __future__ import annotations

import os
import pathlib
import socket

from sleeve.forward.underlay import set_buffers


def test_buffers_are_forced_past_rmem_max_for_root() -> None:
    cap = int(pathlib.Path("/proc/sys/net/core/rmem_max").read_text())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        set_buffers(s, 2 * cap)
        got = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if os.geteuid() == 0:
        assert got == 4 * cap  # the kernel doubles what it is asked for (bookkeeping)
    else:
        assert got <= 2 * cap  # capped, and no error
