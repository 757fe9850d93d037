"""The heartbeat socket: a raw packet socket on the router's own VXLAN device.

Sending: a frame written here goes straight into the VXLAN device's transmit path
(not through the bridge), so the VXLAN FDB entry for the peer's heartbeat MAC
decides where it goes, exactly as for data frames.

Receiving: the VXLAN device is a bridge port, and the bridge's rx handler consumes
every frame it gets. Sockets bound to one ethertype are served *after* rx handlers,
so they would never see a heartbeat; only ``ETH_P_ALL`` taps run before them. So the
socket is bound with ``ETH_P_ALL`` and a classic BPF filter keeps only our ethertype
in the kernel (other frames cost one 4-instruction filter run, no copy);
``PACKET_IGNORE_OUTGOING`` (with the packet-type check as a fallback) skips our own
transmissions.

Non-blocking; :meth:`HeartbeatSocket.recv_batch` is bounded. Errors on send are
counted, never raised.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from typing import Final

from sleeve.fastdp.heartbeat import ETHERTYPE

ETH_P_ALL: Final = 0x0003
SOL_PACKET: Final = 263
PACKET_OUTGOING: Final = 4
PACKET_IGNORE_OUTGOING: Final = 23
SO_ATTACH_FILTER: Final = 26
RCVBUF: Final = 1 << 20
READ_SIZE: Final = 65535 + 14
BATCH: Final = 64

# tcpdump -dd 'ether proto 0x88b5': ldh [12]; jeq #0x88b5 jt 0 jf 1; ret #262144; ret #0
_FILTER: Final = [(0x28, 0, 0, 12), (0x15, 0, 1, ETHERTYPE), (0x06, 0, 0, 0x40000),
                  (0x06, 0, 0, 0)]


class HeartbeatSocketError(OSError):
    """The socket could not be opened (no such device, not root)."""


def _attach_filter(s: socket.socket) -> None:
    prog = b"".join(struct.pack("HBBI", *ins) for ins in _FILTER)
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("HL", len(_FILTER), ctypes.addressof(buf))
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies buf now


class HeartbeatSocket:
    def __init__(self, vxlan_ifname: str) -> None:
        try:
            socket.if_nametoindex(vxlan_ifname)
        except OSError as e:
            raise HeartbeatSocketError(f"no such device {vxlan_ifname!r}") from e
        try:
            # Protocol 0 until bound: nothing is queued before the filter is in place.
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError as e:
            raise HeartbeatSocketError("raw packet sockets need root (CAP_NET_RAW)") from e
        try:
            _attach_filter(s)
            try:
                s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                pass  # kernel < 4.20: the pkttype check in recv_batch does it
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            s.bind((vxlan_ifname, ETH_P_ALL))
            s.setblocking(False)
        except OSError as e:
            s.close()
            raise HeartbeatSocketError(f"cannot open heartbeat socket on {vxlan_ifname}: {e}"
                                       ) from e
        self._s = s
        self.ifname = vxlan_ifname
        self.sent = 0
        self.send_errors = 0
        self.last_send_error: str | None = None
        self.received = 0

    def fileno(self) -> int:
        return self._s.fileno()

    def send(self, dst_mac: bytes, src_mac: bytes, payload: bytes) -> bool:
        """Send one heartbeat frame; False (and counted) if the kernel refused it.

        The payload is sent as is: build it at the size to prove
        (``HeartbeatSession`` makes it exactly the overlay MTU).
        """
        frame = dst_mac + src_mac + struct.pack("!H", ETHERTYPE) + payload
        try:
            self._s.sendto(frame, (self.ifname, ETHERTYPE))
        except OSError as e:
            # EMSGSIZE: the VXLAN device's MTU is below the heartbeat; ENETDOWN: device
            # down; ENOBUFS/EAGAIN: queue full. All of them mean "no proof this time".
            self.send_errors += 1
            self.last_send_error = errno.errorcode.get(e.errno or 0, str(e))
            return False
        self.sent += 1
        return True

    def recv_batch(self, max_frames: int = BATCH) -> list[tuple[bytes, bytes]]:
        """Up to ``max_frames`` received heartbeats as ``(src_mac, payload)``; never blocks."""
        out: list[tuple[bytes, bytes]] = []
        for _ in range(max_frames):
            try:
                frame, addr = self._s.recvfrom(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # e.g. ENETDOWN while the device goes away: nothing to read
            if addr[2] == PACKET_OUTGOING or len(frame) < 14:
                continue
            if frame[12:14] != b"\x88\xb5":
                continue
            self.received += 1
            out.append((frame[6:12], frame[14:]))
        return out

    def close(self) -> None:
        self._s.close()
