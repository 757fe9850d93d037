"""Underlay socket options: buffers past rmem_max for root."""

from __future__ import annotations

import os
import pathlib
import socket

import pytest

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


class _Recorder:
    """A Receiver that keeps each datagram with the local address it arrived on."""

    def __init__(self, u: object) -> None:
        self.u = u
        self.got: list[tuple[bytes, tuple[object, ...], bytes | None]] = []

    def on_datagram(self, data: bytes, addr: tuple[object, ...]) -> None:
        self.got.append((data, addr, self.u.rx_src))  # type: ignore[attr-defined]

    def on_run(self, data: bytes, seg: int, addr: tuple[object, ...]) -> int:
        for off in range(0, len(data), seg):
            self.on_datagram(data[off:off + seg], addr)
        return -(-len(data) // seg)

    def after_batch(self) -> None:
        pass


@pytest.mark.parametrize("offload", [False, True])
def test_replies_leave_from_the_address_the_peer_sent_to(offload: bool) -> None:
    """Bound to 0.0.0.0, a datagram that came to 127.0.0.2 is answered from 127.0.0.2.

    The route to 127.0.0.1 picks 127.0.0.1 as the source, so without the pktinfo a
    reply (one sendto, or a GSO run) would leave from there.
    """
    import types

    from sleeve.forward.underlay import Underlay
    from sleeve.proto.stats import Counters

    u = Underlay(Counters(), Counters(), offload=offload)
    sock = u.open(socket.AF_INET, "0.0.0.0", 0)
    port = sock.getsockname()[1]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.settimeout(2.0)
            ours = b"\x01\x01" + bytes(40)
            peer.sendto(ours, ("127.0.0.2", port))
            rx = _Recorder(u)
            for _ in range(20):  # until the datagram is there (loopback: at once)
                u.on_readable(sock, rx)
                if rx.got:
                    break
            assert [(d, a) for d, a, _ in rx.got] == [(ours, peer.getsockname())]
            src = rx.got[0][2]
            assert src is not None and socket.inet_ntoa(src[4:8]) == "127.0.0.2"

            link = types.SimpleNamespace(endpoint=peer.getsockname(), stats=Counters(),
                                         rx_src=None, src_cmsg=[], gso_path=None, gso_ok=True)
            Underlay.set_source(link, src)  # type: ignore[arg-type]
            assert link.rx_src == src and not link.gso_ok
            assert u.sendto(link, sock, b"one")  # type: ignore[arg-type]
            data, frm = peer.recvfrom(100)
            assert (data, frm) == (b"one", ("127.0.0.2", port))
            if offload:  # a GSO run carries the source too
                u._send_gso(link, sock, [b"a" * 100] * 3 + [b"b" * 10], 100)  # type: ignore[arg-type]
                got = [peer.recvfrom(200) for _ in range(4)]
                assert got == [(b"a" * 100, ("127.0.0.2", port))] * 3 + [
                    (b"b" * 10, ("127.0.0.2", port))]
                assert link.stats["tx_gso_sends"] == 1

            Underlay.set_source(link, None)  # unknown: the route picks 127.0.0.1 again
            assert u.sendto(link, sock, b"two")  # type: ignore[arg-type]
            assert peer.recvfrom(100) == (b"two", ("127.0.0.1", port))
            # arrived on the address the route picks anyway: no cmsg, plain sendto
            Underlay.set_source(link, src[:4] + socket.inet_aton("127.0.0.1") * 2)  # type: ignore[arg-type]
            assert link.src_cmsg == [] and link.rx_src is not None
            assert u.sendto(link, sock, b"three")  # type: ignore[arg-type]
            assert peer.recvfrom(100) == (b"three", ("127.0.0.1", port))
    finally:
        u.close()


def test_a_plain_socket_does_not_inherit_another_sockets_pktinfo() -> None:
    """A socket bound to one address (no pktinfo) next to a wildcard one: its datagrams
    are handled with rx_src None, not the last pktinfo read on the other (review)."""
    from sleeve.forward.underlay import Underlay
    from sleeve.proto.stats import Counters

    u = Underlay(Counters(), Counters(), offload=False)
    sock = u.open(socket.AF_INET, "127.0.0.1", 0)
    try:
        assert sock not in u.pktinfo_on
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.sendto(b"\x01\x01" + bytes(40), sock.getsockname())
            u.rx_src = b"stale pktinfo from the other socket"
            rx = _Recorder(u)
            for _ in range(20):
                u.on_readable(sock, rx)
                if rx.got:
                    break
            assert len(rx.got) == 1 and rx.got[0][2] is None
    finally:
        u.close()


def test_a_lost_source_address_falls_back_to_the_route_and_is_counted() -> None:
    import types

    from sleeve.forward.underlay import Underlay
    from sleeve.proto.stats import Counters

    u = Underlay(Counters(), Counters(), offload=False)
    sock = u.open(socket.AF_INET, "0.0.0.0", 0)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.settimeout(2.0)
            link = types.SimpleNamespace(endpoint=peer.getsockname(), stats=Counters(),
                                         rx_src=None, src_cmsg=[], gso_path=None, gso_ok=False)
            # 198.18.255.254 is on no interface here (the lab range; never configured on
            # the host itself): the kernel refuses it as a source with EINVAL
            gone = bytes(4) + socket.inet_aton("198.18.255.254") * 2
            Underlay.set_source(link, gone)  # type: ignore[arg-type]
            assert not u.sendto(link, sock, b"x")  # type: ignore[arg-type]
            assert link.stats["source_address_lost"] == 1
            assert link.src_cmsg == [] and link.rx_src is None
            assert u.sendto(link, sock, b"y")  # type: ignore[arg-type]
            assert peer.recvfrom(100)[0] == b"y"
    finally:
        u.close()
