"""TAP port: a kernel Ethernet device the router owns (the default mode).

Created with python-pytun (IFF_TAP | IFF_NO_PI, so a read is exactly one
Ethernet frame without a packet-information prefix). The fd is switched to
non-blocking so ``read_batch`` can drain until EAGAIN. Addresses are added
through pyroute2 (netlink), never by running ``ip``.

With ``offload`` the device is opened with ``IFF_VNET_HDR`` and told (TUNSETOFFLOAD)
that we take partial checksums and TCP segmentation: the kernel then hands us TCP
super-frames of up to 64 KiB, each read led by a virtio-net header, instead of one
read per MSS-sized segment, and takes super-frames back in one write. Per-frame
system calls are the router's largest cost, so this is the main throughput lever.
Little-endian hosts only (the header's byte order is the host's for a legacy TAP
and we carry it on the wire as little-endian); elsewhere, or if the kernel refuses
the offloads, the port falls back to plain frames.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import sys
import threading

from sleeve.capture.base import BATCH, PortError, write_segmented
from sleeve.proto.vnet import HDR_LEN, MAX_FRAME, ZERO_HDR

READ_SIZE = MAX_FRAME + HDR_LEN

# <linux/if_tun.h>
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

log = logging.getLogger("sleeve.tap")


class TapPort:
    def __init__(self, name: str, mtu: int, cidr: str | None = None,
                 mac: bytes | None = None, offload: bool = False) -> None:
        try:
            import pytun
        except ImportError as e:  # pragma: no cover - a packaging error, not a runtime one
            raise PortError(f"python-pytun is not installed: {e}") from e
        if not os.path.exists("/dev/net/tun"):
            raise PortError("/dev/net/tun is missing: load the tun module or run with --attach")
        self.vnet = offload and sys.byteorder == "little"
        flags = pytun.IFF_TAP | pytun.IFF_NO_PI | (pytun.IFF_VNET_HDR if self.vnet else 0)
        try:
            self._dev = pytun.TunTapDevice(name=name, flags=flags)
        except pytun.Error as e:
            raise PortError(f"cannot create TAP device {name!r}: {e} (are you root?)") from e
        self.name: str = self._dev.name
        self.tx_dropped = 0
        if self.vnet:
            try:
                fcntl.ioctl(self._dev.fileno(), TUNSETOFFLOAD,
                            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
            except OSError as e:
                # Headers stay on (the fd was opened with them) but are all zero: the
                # node then sees plain frames and loses nothing but the speed-up.
                log.info("TAP offloads refused by the kernel (%s): plain frames", e.strerror)
        try:
            if mac is not None:
                # A MAC that survives restarts: neighbours' ARP caches stay right when the
                # router is restarted, instead of pointing at a device that is gone.
                self._dev.hwaddr = mac
            self._dev.mtu = mtu
            self.mtu = mtu
            os.set_blocking(self._dev.fileno(), False)
            if cidr is not None:
                _add_address(self.name, cidr)
            self._dev.up()
        except Exception:
            self._dev.close()
            raise
        self.hwaddr: bytes = self._dev.hwaddr

    def fileno(self) -> int:
        return int(self._dev.fileno())

    def set_mtu(self, mtu: int) -> None:
        self._dev.mtu = mtu
        self.mtu = mtu

    def read_batch(self, max_frames: int = BATCH) -> list[bytes]:
        fd = self._dev.fileno()
        out: list[bytes] = []
        for _ in range(max_frames):
            try:
                out.append(os.read(fd, READ_SIZE))
            except BlockingIOError:
                break
        return out

    def write(self, frame: bytes | memoryview) -> None:
        if self.vnet:
            self.write_vnet(ZERO_HDR, frame)  # "nothing offloaded": the kernel checks it all
            return
        try:
            os.write(self._dev.fileno(), frame)
        except OSError as e:
            # EAGAIN: the device queue is full; EIO: the device is down. Either way
            # dropping here is what a switch port does; the caller's counters show it.
            if e.errno not in (errno.EAGAIN, errno.EIO, errno.EINVAL):
                raise
            self.tx_dropped += 1

    def write_vnet(self, hdr: bytes | memoryview, frame: bytes | memoryview) -> None:
        if not self.vnet:
            write_segmented(self, hdr, frame)
            return
        try:
            os.writev(self._dev.fileno(), (hdr, frame))
        except OSError as e:
            # EINVAL also covers a header the kernel refuses (vnet.check runs first).
            if e.errno not in (errno.EAGAIN, errno.EIO, errno.EINVAL):
                raise
            self.tx_dropped += 1

    def close(self) -> None:
        # Closing a non-persistent TAP removes the device from the kernel.
        self._dev.close()


def _add_address(ifname: str, cidr: str) -> None:
    iface = ipaddress.ip_interface(cidr)
    # pyroute2 >= 0.9 runs its own asyncio loop internally, which cannot nest inside the
    # router's running loop: do the netlink call on a short-lived thread.
    err: list[BaseException] = []
    t = threading.Thread(target=_netlink_add, args=(ifname, iface, err), daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        raise PortError(f"netlink did not answer while configuring {ifname}")
    if err:
        raise PortError(f"cannot add {cidr} to {ifname}: {err[0]}")


def _netlink_add(ifname: str, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
                 err: list[BaseException]) -> None:
    try:
        _netlink_add_sync(ifname, iface)
    except BaseException as e:  # reported to the caller's thread
        err.append(e)


def _netlink_add_sync(ifname: str, iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
                      ) -> None:
    from sleeve.iproute import iproute

    with iproute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            raise PortError(f"interface {ifname} vanished while configuring it")
        ipr.addr(
            "add",
            index=idx[0],
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
        )
