"""pyroute2's ``IPRoute`` without the rest of pyroute2 (issue 23: RSS per router): the
package's ``__init__`` is deferred (``sleeve.lazypkg``, which says why and how)."""

from __future__ import annotations

from typing import Any

from sleeve.lazypkg import defer_package


def _defer_package() -> None:
    try:
        defer_package("pyroute2")
    except ImportError:
        raise ImportError("pyroute2 is not installed (netlink needs it)") from None


def iproute() -> Any:
    """A new ``pyroute2.IPRoute`` (use as a context manager, or close it)."""
    _defer_package()
    from pyroute2.iproute.linux import IPRoute

    return IPRoute()


def netlink_error() -> Any:
    """pyroute2's ``NetlinkError`` class (for ``except``; it carries ``.code``)."""
    _defer_package()
    from pyroute2.netlink.exceptions import NetlinkError

    return NetlinkError
