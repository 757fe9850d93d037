"""Raw packet-socket port ("pcap mode"): attach to an existing interface.

For a bridge that already has containers on it: the router opens an
AF_PACKET socket bound to one bridge port (typically one end of a veth pair
whose other end sits in the bridge), in promiscuous mode. Frames the router
itself injects would be seen again as outgoing; PACKET_IGNORE_OUTGOING (and
the sll_pkttype check as a fallback for older kernels) drop them, which is
what Weave's pcap "inbound" filter did.

The attached interface's peers must not hand us GSO/TSO super-frames or
frames with partial checksums: disable tx/tso/gso offloads on the veths
plugged into that bridge (``ethtool -K IF tx off tso off gso off``), as Weave
did for its bridge.
"""

from __future__ import annotations

import errno
import socket
import struct

from sleeve.capture.base import BATCH, PortError, write_segmented

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_OUTGOING = 4
PACKET_IGNORE_OUTGOING = 23
READ_SIZE = 65535 + 14


class AfPacketPort:
    def __init__(self, ifname: str) -> None:
        try:
            idx = socket.if_nametoindex(ifname)
        except OSError as e:
            raise PortError(f"no such interface to attach to: {ifname}") from e
        try:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError as e:
            raise PortError("raw packet sockets need root (CAP_NET_RAW)") from e
        try:
            s.bind((ifname, ETH_P_ALL))
            mreq = struct.pack("iHH8s", idx, PACKET_MR_PROMISC, 0, b"")
            s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            try:
                s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                pass  # kernel < 4.20: the pkttype check below does the job
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        self._s = s
        self.name = ifname
        self.mtu = _read_mtu(ifname)
        self.tx_dropped = 0
        self.vnet = False

    def fileno(self) -> int:
        return self._s.fileno()

    def read_batch(self, max_frames: int = BATCH) -> list[bytes]:
        out: list[bytes] = []
        recv = self._s.recvfrom
        # Our own frames seen again (kernels without PACKET_IGNORE_OUTGOING) do not count
        # towards ``max_frames``: a read of one (egress's lone frame) must not come back
        # empty while a frame waits behind one. Bounded all the same.
        for _ in range(max_frames + BATCH):
            try:
                data, addr = recv(READ_SIZE)
            except BlockingIOError:
                break
            if addr[2] == PACKET_OUTGOING:
                continue
            out.append(data)
            if len(out) >= max_frames:
                break
        return out

    def write(self, frame: bytes | memoryview) -> None:
        try:
            self._s.send(frame)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EMSGSIZE, errno.ENETDOWN):
                raise
            self.tx_dropped += 1

    def write_vnet(self, hdr: bytes | memoryview, frame: bytes | memoryview) -> None:
        write_segmented(self, hdr, frame)

    def close(self) -> None:
        self._s.close()


def _read_mtu(ifname: str) -> int:
    try:
        with open(f"/sys/class/net/{ifname}/mtu") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1500
