"""Name and address checks shared by the record table and the resolver (pure functions).

Names in the record table are *relative* to the DNS domain (``web``, ``db.prod``): the
domain is a property of the resolver that serves them (``sleeve.local.`` by default), so
``relative_name`` turns what a user typed (``web``, ``web.sleeve.local``, ``WEB.sleeve.local.``)
into the table's form. Case is kept as given (answers echo it) and compared lowercased.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_NAME_LEN: Final = 253  # RFC 1035 presentation length of a whole name, without the root dot
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class BadName(ValueError):
    """A name that is not a sequence of RFC 1123 labels; ``str(e)`` is one line for the user."""


def check_name(name: str, max_len: int = MAX_NAME_LEN) -> str:
    """``name`` without a trailing dot, if it is dot-separated RFC 1123 labels of at most
    ``max_len`` characters in all; raises ``BadName`` (one line saying why) otherwise."""
    if not isinstance(name, str):
        raise BadName("a name must be a string")
    n = name[:-1] if name.endswith(".") else name
    if not n:
        raise BadName("empty name")
    if len(n) > max_len:
        raise BadName(f"name longer than {max_len} characters: {n[:40]}...")
    for label in n.split("."):
        if not label:
            raise BadName(f"empty label in {n!r}")
        if not _LABEL.match(label):
            raise BadName(
                f"bad label {label[:63]!r} in {n[:100]!r}: use letters, digits and '-' "
                "(not first or last), at most 63 characters"
            )
    return n


def relative_name(name: str, domain: str, max_len: int = MAX_NAME_LEN) -> str:
    """The table form of ``name``: checked, with ``domain`` (e.g. ``sleeve.local.``) stripped
    when the name ends with it (case-insensitive). ``web.sleeve.local`` -> ``web``."""
    n = check_name(name, MAX_NAME_LEN)
    d = domain.rstrip(".").lower()
    low = n.lower()
    if d and low == d:
        raise BadName(f"{n!r} is the domain itself, not a name in it")
    if d and low.endswith("." + d):
        n = n[: -len(d) - 1]
    return check_name(n, max_len)


def parse_address(addr: str | bytes | IPAddress) -> IPAddress:
    """An IPv4 or IPv6 address from text, packed bytes (4 or 16) or an address object."""
    if isinstance(addr, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return addr
    try:
        return ipaddress.ip_address(addr)
    except ValueError as e:
        raise ValueError(f"not an IP address: {addr!r}") from e


def reverse_pointer_address(qname: str) -> IPAddress | None:
    """The address a PTR name (``4.3.2.1.in-addr.arpa.``/nibbles ``.ip6.arpa.``) stands for,
    or None when the name is not a complete reverse name."""
    n = qname.rstrip(".").lower()
    if n.endswith(".in-addr.arpa"):
        parts = n[: -len(".in-addr.arpa")].split(".")
        if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
            return None
        try:
            return ipaddress.IPv4Address(".".join(reversed(parts)))
        except ValueError:
            return None
    if n.endswith(".ip6.arpa"):
        nibbles = n[: -len(".ip6.arpa")].split(".")
        if len(nibbles) != 32 or not all(
            len(x) == 1 and x in "0123456789abcdef" for x in nibbles
        ):
            return None
        return ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16))
    return None
