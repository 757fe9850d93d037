"""Packet filters a lab host puts on itself: blocks (drop to/from a peer) and random
loss (test tooling, never imported by the router). A mixin of ``netns.Host``; split out
of netns.py to keep that module within its size.
"""

from __future__ import annotations

import subprocess
from typing import TYPE_CHECKING, Final

from sleeve.lab.guard import check_ifname, check_ip, nft_ident

_PROTOS: Final = ("udp", "tcp", "icmp")


class Filters:
    """nftables blocks and loss on one namespace; the host supplies ``nft`` and state."""

    name: str
    _blocks: set[str]
    _block_seq: int
    _loss: set[str]

    if TYPE_CHECKING:  # netns.Host's own
        def nft(self, ruleset: str) -> None: ...

        def run(self, *argv: str, check: bool = True, timeout: float = 30,
                input: bytes | None = None) -> subprocess.CompletedProcess[str]: ...

    def block(self, peer_ip: str, proto: str | None = None, port: int | None = None) -> str:
        """Drop traffic to/from ``peer_ip`` (input, output, forward); optionally only ``proto``
        (udp/tcp/icmp) and/or ``port`` (matched as source or destination port; a port alone
        means tcp+udp). Returns a handle for :meth:`unblock`. Table ``inet slv_block``."""
        peer = check_ip(peer_ip)
        if proto is not None and proto not in _PROTOS:
            raise ValueError(f"proto must be one of {_PROTOS}")
        if port is not None and not (0 < port < 65536 and proto != "icmp"):
            raise ValueError(f"bad port {port} for proto {proto}")
        matches: list[str] = []
        if port is not None:
            l4 = f"meta l4proto {proto}" if proto else "meta l4proto { tcp, udp }"
            matches = [f"{l4} th sport {port}", f"{l4} th dport {port}"]
        elif proto is not None:
            matches = [f"meta l4proto {proto}"]
        else:
            matches = [""]
        self._block_seq += 1
        handle = f"blk{self._block_seq}"
        lines = ["add table inet slv_block"]
        for chain, hook, dirs in (
            ("in", "input", ("saddr",)),
            ("out", "output", ("daddr",)),
            ("fwd", "forward", ("saddr", "daddr")),
        ):
            lines.append(
                f"add chain inet slv_block {handle}_{chain} "
                f"{{ type filter hook {hook} priority -5; policy accept; }}"
            )
            for d in dirs:
                for m in matches:
                    lines.append(f"add rule inet slv_block {handle}_{chain} ip {d} {peer} {m} drop")
        self.nft("\n".join(lines) + "\n")
        self._blocks.add(handle)
        return handle

    def unblock(self, handle: str) -> None:
        """Remove a block made by :meth:`block` (KeyError for an unknown handle)."""
        if handle not in self._blocks:
            raise KeyError(f"unknown block handle {handle!r} on {self.name}")
        script = "".join(
            f"flush chain inet slv_block {handle}_{c}\ndelete chain inet slv_block {handle}_{c}\n"
            for c in ("in", "out", "fwd")
        )
        self.nft(script)
        self._blocks.discard(handle)

    def unblock_all(self) -> None:
        """Remove every block on this host (deletes table ``inet slv_block``)."""
        self.run("nft", "delete", "table", "inet", "slv_block", check=False)
        self._blocks.clear()

    def loss(self, ifname: str, percent: int) -> None:
        """Randomly drop ``percent``% of packets on ingress and (separately) egress of ``ifname``
        (``numgen random mod 100 < percent drop``; ARP too). Replaces an earlier setting;
        0 clears. Uses table ``netdev slv_loss`` (inet tables cannot hook device egress)."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss percent must be 0..100, not {percent}")
        check_ifname(ifname)
        self.clear_loss(ifname)
        if percent == 0:
            return
        ident = nft_ident(ifname)
        lines = ["add table netdev slv_loss"]
        for chain, hook in (("in", "ingress"), ("out", "egress")):
            lines.append(
                f"add chain netdev slv_loss {ident}_{chain} {{ type filter hook {hook} "
                f'device "{ifname}" priority -300; policy accept; }}'
            )
            # nft rejects "< 100" (the value must fit the 0..99 range): 100 % is a plain drop.
            match = "" if percent == 100 else f"numgen random mod 100 < {percent} "
            lines.append(f"add rule netdev slv_loss {ident}_{chain} {match}drop")
        self.nft("\n".join(lines) + "\n")
        self._loss.add(ifname)

    def clear_loss(self, ifname: str) -> None:
        """Stop dropping packets on ``ifname`` (no-op if :meth:`loss` was not set)."""
        if ifname not in self._loss:
            return
        ident = nft_ident(ifname)
        self.nft(
            "".join(
                f"flush chain netdev slv_loss {ident}_{c}\n"
                f"delete chain netdev slv_loss {ident}_{c}\n"
                for c in ("in", "out")
            )
        )
        self._loss.discard(ifname)
