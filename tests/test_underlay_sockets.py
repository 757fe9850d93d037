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


def test_the_socket_filter_drops_junk_in_the_kernel_and_counts_it() -> None:
    from sleeve.forward.underlay import Underlay
    from sleeve.proto.stats import Counters

    u = Underlay(Counters(), Counters(), offload=False)
    r = u.open(socket.AF_INET, "127.0.0.1", 0)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            ours = b"\x01\x01" + bytes(30)  # type 1, version 1, header + tag long
            for d in (ours, ours[:31], b"\x02\x01" + bytes(40), b"\x01\x02" + bytes(40),
                      ours + b"more"):
                s.sendto(d, r.getsockname())
        got = []
        for _ in range(2):
            r.settimeout(1.0)
            got.append(r.recv(2000))
        r.setblocking(False)
        try:
            got.append(r.recv(2000))
        except BlockingIOError:
            pass
        assert got == [ours, ours + b"more"]
        assert u.kernel_drops() == 3
    finally:
        u.close()
