"""pyroute2's ``IPRoute`` without the rest of pyroute2 (issue 23: RSS per router).

Why: ``import pyroute2`` runs the package's ``__init__``, which imports NDB, IPDB,
conntrack, ethtool, sqlite3, unittest and multiprocessing -- 11.7 MB of RSS per router
(measured: ``VmRSS`` before and after the import, after asyncio) -- while the router
only ever uses ``IPRoute`` and ``NetlinkError`` (5.5 MB). At 50 routers on one host
that is the difference between meeting the 60 MB target and not.

How: before the first import, ``pyroute2`` is put in ``sys.modules`` as a package module
whose ``__init__`` has not run (its ``__path__`` is set, so submodules such as
``pyroute2.iproute.linux`` import normally). Anyone who later asks the package itself
for a name (``from pyroute2 import NetNS``: the CNI plugin, tests in the same process)
gets it: the first such lookup runs the real ``__init__`` in that module object, so
nothing outside the router sees a difference.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from typing import Any

_lock = threading.Lock()


class _DeferredPackage(types.ModuleType):
    """``pyroute2`` before its ``__init__`` ran: submodules import, other names load it."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        full = f"{self.__name__}.{name}"
        if full in sys.modules:
            return sys.modules[full]
        if not self.__dict__.get("_sleeve_loaded"):
            # a submodule (``from pyroute2 import config``) imports without the package
            if importlib.util.find_spec(full) is not None:
                return importlib.import_module(full)
            with _lock:
                if not self.__dict__.get("_sleeve_loaded"):
                    self.__dict__["_sleeve_loaded"] = True
                    spec = self.__spec__
                    assert spec is not None and spec.loader is not None
                    spec.loader.exec_module(self)  # the real __init__, in this module object
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}") from None


def _defer_package() -> None:
    with _lock:
        if "pyroute2" in sys.modules:
            return  # already imported (whole, or deferred)
        spec = importlib.util.find_spec("pyroute2")
        if spec is None or spec.loader is None:
            raise ImportError("pyroute2 is not installed (netlink needs it)")
        mod = importlib.util.module_from_spec(spec)
        mod.__class__ = _DeferredPackage
        sys.modules["pyroute2"] = mod


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
