"""Socket helpers of the underlay: buffers, the kernel's junk filter, route lookups.

Split from ``forward.underlay`` (which re-exports them); no protocol logic.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct

from sleeve.proto import datagram as dg

log = logging.getLogger("sleeve")

SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # <asm-generic/socket.h>; not in Python's socket
SO_ATTACH_FILTER = 26
IP_MTU, IPV6_MTU = 14, 24  # <linux/in.h>, <linux/in6.h>: a connected socket's route MTU
# The cheap stateless check: a classic BPF socket filter drops, in the kernel, every
# datagram that cannot be ours: shorter than a header and a tag, or not type 1 version 1
# (proto.datagram). Junk then costs no system call, no wake-up and no Python at all;
# what it drops is counted by the kernel (SK_MEMINFO_DROPS, shown as
# ``udp_kernel_drops``). A socket filter sees the UDP header first: payload at 8.
_JUNK_FILTER = b"".join(struct.pack("HBBI", *insn) for insn in (
    (0x80, 0, 0, 0),  # A = length (UDP header + payload)
    (0x35, 0, 3, 8 + dg.HEADER_LEN + dg.TAG_LEN),  # A >= 40 ? next : drop
    (0x28, 0, 0, 8),  # A = the payload's first 16 bits: type, version
    (0x15, 0, 1, dg.TYPE_DATA << 8 | dg.VERSION),  # A == 0x0101 ? accept : drop
    (0x06, 0, 0, 0xFFFFFFFF),  # accept the whole datagram
    (0x06, 0, 0, 0),  # drop
))


def route_mtu(endpoint: tuple[str, int], v6: bool) -> int | None:
    """The MTU of the route to ``endpoint`` (None when there is none, or no such family)."""
    family, level, opt = ((socket.AF_INET6, socket.IPPROTO_IPV6, IPV6_MTU) if v6
                          else (socket.AF_INET, socket.IPPROTO_IP, IP_MTU))
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(endpoint)
            return int(s.getsockopt(level, opt))
    except OSError:
        return None


def route_source(endpoint: tuple[str, int], v6: bool) -> bytes | None:
    """The source address (packed) the route to ``endpoint`` picks; None without a route."""
    family = socket.AF_INET6 if v6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(endpoint)  # a route lookup; nothing is sent
            return socket.inet_pton(family, s.getsockname()[0])
    except OSError:
        return None


def set_buffers(s: socket.socket, size: int) -> None:
    """Receive and send buffers of ``size`` bytes, past rmem_max/wmem_max where we may.

    Without CAP_NET_ADMIN the kernel silently caps SO_RCVBUF at net.core.rmem_max (often
    208 KiB), where bursts overflow and are lost; the FORCE variants ignore that cap
    for root. Unprivileged, the capped size is what we get.
    """
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:  # EPERM: not root (or no CAP_NET_ADMIN)
            s.setsockopt(socket.SOL_SOCKET, plain, size)


def attach_junk_filter(s: socket.socket) -> None:
    """Attach ``_JUNK_FILTER`` to ``s`` (the kernel copies the program at once)."""
    prog = ctypes.create_string_buffer(_JUNK_FILTER, len(_JUNK_FILTER))
    fprog = struct.pack("HL", len(_JUNK_FILTER) // 8, ctypes.addressof(prog))
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as e:  # no socket filters (unusual): Python checks every datagram
        log.info("no socket filter for junk datagrams: %s", e.strerror)
