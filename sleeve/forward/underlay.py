"""The underlay: our UDP sockets, how datagrams leave and how they are read.

Sending: ``send`` seals one body into one datagram; ``send_many`` seals several and
sends each run of equal-size datagrams in one ``sendmsg`` with UDP GSO once the link's
path has proven it carries GSO runs (``gso_proof``), else one ``sendto`` each.
Receiving: readiness on a socket drains up to ``BATCH`` datagrams into a ``Receiver``
(the data plane's ingress), with UDP GRO runs handed over whole; after every batch the
receiver's ``after_batch`` runs (flush relayed records, read the port's answers).

Replies leave from the address the peer sent to: on a socket bound to a wildcard
address each read also returns the local address the datagram arrived on (IP_PKTINFO,
IPV6_RECVPKTINFO), kept in ``rx_src`` while the receiver handles it; once a datagram
of a link authenticates, ingress hands that address to ``set_source``, and where the
route would pick another source every send on the link (one datagram or a GSO run)
carries it as the source (a pktinfo cmsg).
A multi-homed host otherwise answers from whatever address its route picks, which a
peer's stateful firewall or NAT (expecting replies from the address it sent to) drops.

Junk never reaches Python: a socket filter drops, in the kernel, datagrams too short or
not type 1 version 1 (the header's first two bytes), counted by the kernel. No other
protocol logic lives here: no record parsing, no routing. A failed send is counted
on the link with its errno and never raises; EMSGSIZE tells the link's PMTU prober.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from sleeve.capture.base import BATCH
from sleeve.forward.sockopts import attach_junk_filter, route_mtu, route_source, set_buffers
from sleeve.links.link import Link
from sleeve.proto.pmtu import COMPLETE as PMTU_COMPLETE
from sleeve.proto.pmtu import Probe, probe_record
from sleeve.proto.stats import Counters

log = logging.getLogger("sleeve")

UDP_BUFFER = 4 << 20  # the anchors show loss happens where the receiver's UDP buffer overflows
SO_MEMINFO, SK_MEMINFO_DROPS, SK_MEMINFO_VARS = 55, 8, 9
IP_MTU_DISCOVER, IP_PMTUDISC_DO = 10, 2  # <linux/in.h>; Python 3.11's socket lacks them
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO = 23, 2  # <linux/in6.h>
# UDP segmentation offloads (<linux/udp.h>; Python 3.11's socket lacks the names). GSO: one
# sendmsg carries a run of equal-size datagrams (the last may be shorter), split by the
# kernel (or the NIC) as late as possible. GRO: one recvmsg returns a run of datagrams of
# the same flow and size, with the size in a cmsg.
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
GSO_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS before Linux 6.9 (128 since)
GSO_MAX_BYTES = 65000  # all segments' UDP payload together: an IP packet is at most 64 KiB
GRO_READ = 65535  # largest coalesced payload the kernel hands over in one read
GRO_CMSG_SPACE = socket.CMSG_SPACE(4)  # the gso_size int
# A GSO run crosses every hop inside this kernel (veth, bridge, a router namespace) as one
# super-packet, so a middlebox there judges it by its total length: a firewall dropping
# "UDP longer than N" (a PMTU black hole) drops the whole run although each datagram fits.
# So a link uses GSO only once a full-size run of PMTU probes got an ack over its current
# path (endpoint and path MTU); until then, and after either changes, one send per datagram.
ROUTE_CHECK = 60.0  # how often a link's route MTU is read again (routes and PMTUs change)
# Jumbo frames top out near 9216 on common hardware; bigger route MTUs (loopback, some
# virtual devices) would only make every datagram, reassembly and buffer bigger.
ROUTE_MTU_MAX = 9216
GSO_PROOF_ID = 0x80000000  # probe ids with the top bit: never the PMTU prober's (from 1 up)
GSO_PROOF_RETRY = 2.0  # first retry of an unanswered proof; doubles up to the max
GSO_PROOF_RETRY_MAX = 60.0
_BYTEORDER = sys.byteorder  # cmsg ints (UDP_SEGMENT u16, UDP_GRO int) are native
# The local address a datagram arrived on (<linux/in.h>, <linux/ipv6.h>; Python 3.11 has
# only the IPv6 names). Received: struct in_pktinfo {int ifindex; in_addr spec_dst;
# in_addr addr} (12 bytes) or struct in6_pktinfo {in6_addr addr; int ifindex} (20 bytes);
# sent back as the same struct, which sets the datagram's source address.
IP_PKTINFO = 8
IPV6_RECVPKTINFO, IPV6_PKTINFO = 49, 50
PKTINFO_CMSG_SPACE = socket.CMSG_SPACE(20)
_NO_SOURCE = (errno.EINVAL, errno.ENETUNREACH, errno.EADDRNOTAVAIL)
RECV_CMSG_SPACE = GRO_CMSG_SPACE + PKTINFO_CMSG_SPACE


class Receiver(Protocol):
    """Where the underlay hands what it reads (``forward.ingress.Ingress``)."""

    def on_datagram(self, data: bytes, addr: tuple[Any, ...]) -> None: ...

    def on_run(self, data: bytes, seg: int, addr: tuple[Any, ...]) -> int: ...

    def after_batch(self) -> None: ...


class Underlay:
    def __init__(self, drops: Counters, stats: Counters, offload: bool) -> None:
        self.drops = drops
        self.stats = stats
        self.offload = offload  # UDP GSO/GRO (off with --no-offload)
        self.udp: socket.socket | None = None  # IPv4
        self.udp6: socket.socket | None = None  # IPv6
        # A socket whose kernel refused a GSO send gets one sendto per datagram from then on.
        self.gso_off: set[socket.socket] = set()
        self.gro_on: set[socket.socket] = set()
        # Sockets bound to a wildcard address: their reads return the local address too.
        self.pktinfo_on: set[socket.socket] = set()
        # The local address (pktinfo as received) the datagram being handed to the
        # receiver arrived on; None on a socket bound to one address.
        self.rx_src: bytes | None = None
        # Extra sockets (traversal.spray): a punching link's spray sockets, and the one a
        # punched link keeps (``pinned``: its datagrams leave from it). ``rx_extra`` is the
        # extra socket being read (None: one of ours above), for ingress to ``pin``.
        self.spray: dict[socket.socket, Link] = {}
        self.pinned: dict[Link, socket.socket] = {}
        self.rx_extra: socket.socket | None = None
        self.extra: set[socket.socket] = set()  # both kinds: what on_readable checks
        # the node's loop reads an extra socket from watch() until unwatch()
        self.watch: Callable[[socket.socket], None] = lambda s: None
        self.unwatch: Callable[[socket.socket], None] = lambda s: None

    def open(self, family: int, addr: str, port: int) -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            set_buffers(s, UDP_BUFFER)
            attach_junk_filter(s)
            # DF on every datagram: the path MTU is found by probing, and a datagram the
            # kernel knows is too big fails with EMSGSIZE instead of being fragmented.
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # v4 has its own
                s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
            else:
                s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            s.bind((addr, port))
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"cannot bind UDP port {port} on {addr}: {e.strerror}") \
                from None
        s.setblocking(False)
        if addr in ("0.0.0.0", "::"):  # a multi-homed host answers from the right address
            try:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
                else:
                    s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
                self.pktinfo_on.add(s)
            except OSError as e:  # not Linux-like: replies from the route's source
                log.info("no packet info on UDP reads: %s", e.strerror)
        if self.offload:
            try:
                s.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro_on.add(s)
            except OSError as e:  # a kernel before 5.0: one datagram per read
                log.info("no UDP GRO on this kernel: %s", e.strerror)
        else:
            self.gso_off.add(s)
        if family == socket.AF_INET6:
            self.udp6 = s
        else:
            self.udp = s
        return s

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.udp, self.udp6) if s is not None]

    def kernel_drops(self) -> int:
        """Datagrams our sockets' kernel side dropped: the junk filter, or a full buffer."""
        n = 0
        for s in self.sockets():
            try:
                info = s.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * SK_MEMINFO_VARS)
            except OSError:
                continue
            n += struct.unpack_from("I", info, 4 * SK_MEMINFO_DROPS)[0]
        return n

    # ------------------------------------------------------------------ sending
    def send(self, link: Link, body: bytes) -> None:
        """Seal one body and send it as one datagram (PMTU probes always come here)."""
        sock = self.link_socket(link)
        if sock is not None:
            self.sendto(link, sock, link.session.seal(body))

    def link_socket(self, link: Link) -> socket.socket | None:
        # Per datagram: a link that heard its peer (every established one) pays one
        # attribute test, plus a dict lookup only while some link holds a spray socket.
        if link.endpoint_learnt:
            if self.pinned:
                pinned = self.pinned.get(link)
                if pinned is not None:
                    return pinned  # punched through on a spray socket: the NAT mapping is its
        elif link.virtual:
            # Still punching: a datagram reaching the peer's NAT before the peer's own
            # mapping exists would spoil the punch. Only the traversal part sends then.
            link.stats.inc("drop_punching")
            return None
        elif link.holding_guess(time.monotonic()):
            link.stats.inc("drop_guess_hold")  # the dialler's datagram comes first
            return None
        sock = self.udp6 if link.v6 else self.udp
        if sock is None:
            link.stats.inc("drop_no_socket_for_family")  # e.g. an IPv6 peer, IPv4-only here
        return sock

    def sendto(self, link: Link, sock: socket.socket, data: bytes) -> bool:
        try:
            if link.src_cmsg:
                sock.sendmsg([data], link.src_cmsg, 0, link.endpoint)
            else:
                sock.sendto(data, link.endpoint)
        except BlockingIOError:
            link.stats.inc("drop_tx_busy")
            return False
        except OSError as e:
            self._send_error(link, e, len(data))
            return False
        link.stats.inc("tx_packets")
        link.stats.inc("tx_bytes", len(data))
        return True

    def send_ttl(self, link: Link, ep: tuple[str, int], data: bytes, ttl: int | None,
                 sock: socket.socket | None = None) -> None:
        """One datagram to ``ep`` with a hop limit (hole punching), counted on the link;
        from ``sock`` (a spray socket) or our socket for the family."""
        host = ep[0]
        if not is_ip_literal(host):
            # e.g. ("relay", port) when the mediator never saw the peer's UDP: sendto
            # would resolve the name, blocking the loop
            link.stats.inc("drop_punch_no_address")
            return
        if sock is None:
            sock = self.udp6 if ":" in host else self.udp
        if sock is None:
            return
        try:
            if ttl is None:
                sock.sendto(data, ep)
            else:
                level, opt = ((socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT) if ":" in host
                              else (socket.IPPROTO_IP, socket.IP_TTL))
                sock.sendmsg([data], [(level, opt, struct.pack("i", ttl))], 0, ep)
            link.stats.inc("punch_packets")
        except OSError as e:
            link.stats.inc(f"drop_tx_{errno.errorcode.get(e.errno or 0, 'err').lower()}")

    def _send_error(self, link: Link, e: OSError, size: int, n: int = 1) -> None:
        # EPERM (firewall), unreachable, EMSGSIZE: count, never raise out of the loop.
        if e.errno == errno.EMSGSIZE:  # the kernel knows a smaller path MTU
            link.pmtu.on_emsgsize(size, time.monotonic())
        elif e.errno in _NO_SOURCE and link.src_cmsg:
            # Our source address is gone from this host (IPv4 says ENETUNREACH, IPv6
            # EINVAL): let the route pick one until the peer's next datagram tells us
            # where it reaches us now.
            link.src_cmsg = []
            link.rx_src = None
            link.stats.inc("source_address_lost")
        link.stats.inc(f"drop_tx_{errno.errorcode.get(e.errno or 0, 'err').lower()}", n)

    def send_many(self, link: Link, bodies: list[bytes]) -> None:
        """Seal several bodies; each run of equal-size datagrams goes in one GSO send.

        A run may end with one shorter datagram (the kernel allows a short last segment).
        Without GSO (refused before, or --no-offload) it is one sendto per datagram.
        """
        sock = self.link_socket(link)
        if sock is None:
            return
        seal = link.session.seal
        datas = [seal(b) for b in bodies]
        if not link.gso_ok or sock in self.gso_off:
            for data in datas:
                self.sendto(link, sock, data)
            return
        n = len(datas)
        i = 0
        while i < n:
            size = len(datas[i])
            limit = min(n, i + min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size))
            j = i + 1
            while j < limit and len(datas[j]) == size:
                j += 1
            if j < limit and len(datas[j]) < size:
                j += 1  # a shorter last segment
            if j - i == 1:
                self.sendto(link, sock, datas[i])
            else:
                self._send_gso(link, sock, datas[i:j], size)
            i = j

    def _send_gso(self, link: Link, sock: socket.socket, segs: list[bytes], size: int,
                  fallback: bool = True) -> None:
        try:
            # The segments go as an iovec: the kernel gathers them, no join here.
            sent = sock.sendmsg(
                segs, [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, _BYTEORDER)), *link.src_cmsg],
                0, link.endpoint)
        except BlockingIOError:
            link.stats.inc("drop_tx_busy", len(segs))
            return
        except OSError as e:
            if not fallback or e.errno not in (errno.EIO, errno.EINVAL):
                self._send_error(link, e, size, len(segs))
                return
            # EIO: no checksum offload on the route's device; EINVAL: no UDP_SEGMENT, or a
            # segment over the route's MTU. Send them one by one: if that works, it was
            # GSO the kernel refused, and this socket stops trying; an EMSGSIZE from it
            # lowers the path MTU as usual.
            first = self.sendto(link, sock, segs[0])
            if first and sock not in self.gso_off:
                self.gso_off.add(sock)
                log.info("UDP GSO refused (%s): one datagram per send from now on",
                         e.strerror)
            for data in segs[1:]:
                self.sendto(link, sock, data)
            return
        link.stats.inc("tx_packets", len(segs))
        link.stats.inc("tx_bytes", sent)
        link.stats.inc("tx_gso_sends")

    def gso_proof(self, link: Link, now: float) -> None:
        """Prove (again) that a GSO run reaches the peer over the link's current path."""
        if not self.offload or link.over_tcp or not link.usable:
            return
        path = (link.endpoint, link.pmtu.current)
        if path != link.gso_path:  # new path (or none proven yet): stop GSO until proven
            link.gso_ok = False
            link.gso_path = path
            link.gso_next_proof = now
            link.gso_retry = GSO_PROOF_RETRY
        if link.gso_ok or now < link.gso_next_proof or link.pmtu.state != PMTU_COMPLETE:
            return
        sock = self.link_socket(link)
        if sock is None or sock in self.gso_off:
            return
        size = path[1]
        link.gso_proof_id = GSO_PROOF_ID | (link.gso_proof_id + 1) & 0x7FFFFFFF
        rec = probe_record(Probe(link.gso_proof_id, size))
        seal = link.session.seal
        n = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size)
        self._send_gso(link, sock, [seal(rec) for _ in range(n)], size, fallback=False)
        link.stats.inc("gso_proofs")
        link.gso_next_proof = now + link.gso_retry
        link.gso_retry = min(GSO_PROOF_RETRY_MAX, link.gso_retry * 2)

    @staticmethod
    def on_gso_ack(link: Link, probe_id: int, size: int) -> None:
        """A proof run's ack came back: GSO works over this path."""
        if (probe_id == link.gso_proof_id and link.gso_path is not None
                and size == link.gso_path[1] and not link.gso_ok):
            link.gso_ok = True  # a whole GSO run crossed this path: use it
            link.stats.inc("gso_proven")

    @staticmethod
    def set_source(link: Link, src: bytes | None) -> None:
        """Send ``link``'s datagrams from the local address of ``src`` (pktinfo as read).

        Called by ingress when an authenticated datagram arrived on another local
        address than the one before (``link.rx_src``), and again with every route
        check. Where the route to the endpoint picks that address anyway (a host with
        one address: nearly always) no cmsg is needed and sends stay plain ``sendto``;
        None, or an address that cannot be a source (IPv6 multicast), leaves the
        choice to the route.
        """
        link.rx_src = src
        cmsg: list[tuple[int, int, bytes]] = []
        # in_pktinfo: spec_dst is our address; in6_pktinfo: addr
        v6 = src is not None and len(src) == 20
        ours = None
        if src is not None and len(src) in (12, 20):
            ours = src[:16] if v6 else src[4:8]
        if ours is not None and ours[0] != 0xFF and ours != route_source(link.endpoint, v6):
            if v6:  # the interface matters only for a link-local address
                scoped = ours[0] == 0xFE and ours[1] & 0xC0 == 0x80
                cmsg = [(socket.IPPROTO_IPV6, IPV6_PKTINFO,
                         ours + (src[16:] if scoped and src else bytes(4)))]
            else:
                cmsg = [(socket.IPPROTO_IP, IP_PKTINFO, bytes(4) + ours + bytes(4))]
        if cmsg != link.src_cmsg:
            link.src_cmsg = cmsg
            link.gso_path = None  # another source may take another path: prove GSO again
            link.gso_ok = False

    # ------------------------------------------------------------------ path limit
    def path_limit(self, link: Link, now: float) -> None:
        """Give ``link``'s PMTU search the MTU of the route to its endpoint as its limit.

        Read with IP_MTU on a UDP socket connected to the endpoint: a route lookup in
        the kernel, no datagram sent, nothing to wait for, so it runs on the loop. It
        is the device MTU, or a smaller PMTU the kernel learnt for that destination
        (which our DF datagrams could not exceed anyway). Once per ``ROUTE_CHECK``
        per link, and soon after the endpoint moves (ingress resets the deadline).
        """
        if now < link.next_route_check:
            return
        link.next_route_check = now + ROUTE_CHECK
        mtu = route_mtu(link.endpoint, link.v6)
        if mtu is not None:
            link.set_route_mtu(min(mtu, ROUTE_MTU_MAX), now)
        if link.rx_src is not None:  # routes and addresses change: is the cmsg needed?
            self.set_source(link, link.rx_src)

    # ------------------------------------------------------------------ receiving
    def on_readable(self, sock: socket.socket, rx: Receiver) -> None:
        if sock in self.gro_on or sock in self.pktinfo_on:
            self.rx_extra = None
            self._on_readable_msg(sock, rx)
            return
        self.rx_src = None  # a plain socket's datagrams must not inherit another's pktinfo
        self.rx_extra = sock if sock in self.extra else None
        recv = sock.recvfrom
        try:
            for _ in range(BATCH):
                try:
                    data, addr = recv(65535)
                except BlockingIOError:
                    return
                except OSError:
                    self.drops.inc("udp_recv_error")  # e.g. ICMP port unreachable reported late
                    continue
                try:
                    rx.on_datagram(data, addr)
                except Exception:  # a bug must not kill the loop; count and log
                    self.drops.inc("internal_error")
                    log.exception("internal error handling a datagram")
        finally:
            rx.after_batch()

    def _on_readable_msg(self, sock: socket.socket, rx: Receiver) -> None:
        """Like ``on_readable``, with the reads' cmsgs: GRO runs and the local address.

        A read may hold a run of coalesced datagrams (UDP_GRO's segment size), all sent
        to the same local address (pktinfo, kept in ``rx_src`` while they are handled).
        The batch bound counts datagrams, not reads; the read that crosses it is finished.
        """
        recv = sock.recvmsg
        on_datagram = rx.on_datagram
        n = 0
        try:
            while n < BATCH:
                try:
                    data, anc, flags, addr = recv(GRO_READ, RECV_CMSG_SPACE)
                except BlockingIOError:
                    return
                except OSError:
                    self.drops.inc("udp_recv_error")  # e.g. ICMP port unreachable reported late
                    n += 1
                    continue
                if flags & socket.MSG_TRUNC:
                    self.drops.inc("udp_truncated")
                    n += 1
                    continue
                seg = 0
                src = None
                for level, typ, cdata in anc:
                    if level == SOL_UDP and typ == UDP_GRO and len(cdata) >= 4:
                        seg = int.from_bytes(cdata[:4], _BYTEORDER)
                    elif typ in (IP_PKTINFO, IPV6_PKTINFO):  # levels IP, IPV6
                        src = cdata
                self.rx_src = src
                size = len(data)
                try:
                    if 0 < seg < size:
                        self.stats.inc("rx_gro_reads")
                        n += rx.on_run(data, seg, addr)
                    else:
                        n += 1
                        on_datagram(data, addr)
                except Exception:  # a bug must not kill the loop; count and log
                    n += 1
                    self.drops.inc("internal_error")
                    log.exception("internal error handling a datagram")
        finally:
            rx.after_batch()

    # ------------------------------------------------------------------ extra sockets
    def open_spray(self, link: Link, n: int) -> int:
        """Open ``n`` extra IPv4 sockets (random local ports) for ``link``'s spray; the
        loop reads them. Returns how many opened (fewer when the system refuses fds)."""
        opened = 0
        for _ in range(n):
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            except OSError as e:  # out of fds: spray with what we have
                self.stats.inc("spray_socket_errors")
                log.info("spray: cannot open socket %d of %d: %s", opened + 1, n, e.strerror)
                break
            try:
                attach_junk_filter(s)
                s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
                s.bind(("0.0.0.0", 0))
                s.setblocking(False)
                self.watch(s)
            except OSError as e:  # out of fds or ports: spray with what we have
                s.close()
                self.stats.inc("spray_socket_errors")
                log.info("spray: cannot open socket %d of %d: %s", opened + 1, n, e.strerror)
                break
            self.spray[s] = link
            self.extra.add(s)
            opened += 1
        return opened

    def spray_sockets(self, link: Link) -> list[socket.socket]:
        return [s for s, lk in self.spray.items() if lk is link]

    def pin(self, link: Link) -> None:
        """An authenticated datagram of ``link`` arrived on the extra socket being read:
        if it is one of the link's spray sockets, the link keeps it (the NAT mapping the
        probe found is that socket's) and the other spray sockets close."""
        sock = self.rx_extra
        if sock is None or self.pinned.get(link) is sock:
            return
        if self.spray.get(sock) is not link:
            self.drops.inc("spray_wrong_socket")  # another link's socket: do not move
            return
        del self.spray[sock]
        try:  # it carries the link's traffic now: the main sockets' buffers
            set_buffers(sock, UDP_BUFFER)
        except OSError:
            pass
        old = self.pinned.pop(link, None)
        if old is not None:
            self._close_extra(old)
        self.pinned[link] = sock
        link.stats.inc("spray_pinned")
        self.close_spray(link)

    def close_spray(self, link: Link) -> None:
        """Close ``link``'s spray sockets (not the one it keeps)."""
        for s in self.spray_sockets(link):
            del self.spray[s]
            self._close_extra(s)

    def release(self, link: Link) -> None:
        """``link`` is gone: its spray sockets and the one it kept close."""
        self.close_spray(link)
        sock = self.pinned.pop(link, None)
        if sock is not None:
            self._close_extra(sock)

    def _close_extra(self, s: socket.socket) -> None:
        self.extra.discard(s)
        try:
            self.unwatch(s)
        finally:
            s.close()

    def close_extras(self) -> None:
        """Close every extra socket (the router is stopping)."""
        for s in [*self.spray, *self.pinned.values()]:
            self._close_extra(s)
        self.spray.clear()
        self.pinned.clear()

    def close(self) -> None:
        self.close_extras()
        for s in self.sockets():
            s.close()
        self.udp = self.udp6 = None
        self.gso_off.clear()
        self.gro_on.clear()
        self.pktinfo_on.clear()


def is_ip_literal(host: str) -> bool:
    """An IPv4/IPv6 address, never a name (a name would be resolved, blocking)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
