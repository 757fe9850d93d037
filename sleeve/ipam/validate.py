"""Input checks at the IPAM API edge, and ``Allocation``, the handle an API call returns.

Every check raises ``IpamError`` (a ``ValueError``) whose text is one line for the user.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MAX_ID = 64
IPv4Net = ipaddress.IPv4Network


class IpamError(ValueError):
    """Bad input or a failed allocation; ``str()`` is one line for the user."""


def parse_range(cidr: str, underlay: Sequence[IPv4Net] = ()) -> IPv4Net:
    """``--ipalloc-range``: an IPv4 CIDR of at least 4 addresses not overlapping the underlay."""
    try:
        net = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as e:
        raise IpamError(f"allocation range {cidr!r} is not an IPv4 CIDR: {e}") from None
    if net.num_addresses < 4:
        raise IpamError(f"allocation range {net} is too small (need /30 or larger)")
    for u in underlay:
        if net.overlaps(u):
            raise IpamError(f"allocation range {net} overlaps the underlay network {u}")
    return net


def parse_subnet(cidr: str, rng: IPv4Net) -> IPv4Net:
    try:
        net = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as e:
        raise IpamError(f"subnet {cidr!r} is not an IPv4 CIDR: {e}") from None
    if not net.subnet_of(rng):
        raise IpamError(f"subnet {net} is outside the allocation range {rng}")
    return net


def check_id(owner_id: str) -> str:
    if not owner_id:
        raise IpamError("empty ID")
    if len(owner_id) > MAX_ID:
        raise IpamError(f"ID longer than {MAX_ID} characters")
    if not (owner_id.isascii() and owner_id.isprintable()) or any(c.isspace() for c in owner_id):
        raise IpamError("ID must be printable ASCII without spaces")
    return owner_id


def bounds(net: IPv4Net) -> tuple[int, int]:
    """The addresses of ``net`` we hand out: all but network and broadcast (from /30 up)."""
    lo, hi = int(net.network_address), int(net.broadcast_address) + 1
    return (lo + 1, hi - 1) if net.prefixlen <= 30 else (lo, hi)


@dataclass(eq=False)
class Allocation:
    """One request for an address; ``done`` once ``address`` or ``error`` is set."""

    owner_id: str
    subnet: IPv4Net
    address: ipaddress.IPv4Interface | None = None
    error: IpamError | None = None
    waiting: str = ""  # why it is still pending (for status and logs)
    _callbacks: list[Callable[[Allocation], None]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.address is not None or self.error is not None

    def add_done_callback(self, fn: Callable[[Allocation], None]) -> None:
        if self.done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def _finish(self) -> None:
        cbs, self._callbacks = self._callbacks, []
        for fn in cbs:
            fn(self)
