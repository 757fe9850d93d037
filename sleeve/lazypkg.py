"""Import a package's submodules without running the package's ``__init__`` (RSS, issue 23).

Why: some packages' ``__init__`` imports far more than the router uses. ``import
pyroute2`` pulls NDB, IPDB, conntrack, ethtool, sqlite3, unittest and multiprocessing
(11.7 MB of RSS per router) where the router only uses ``IPRoute`` (5.5 MB); ``from
aiohttp import web`` runs aiohttp's ``__init__``, which imports the whole HTTP client
(connector, client, cookie jar...: 4.3 MB of the 13.7 MB the local API costs, measured
as ``VmRSS`` before and after the import, after the rest of the router) where the
router only serves. At 50 routers on one host that is the difference between meeting
the 60 MB target and not.

How: before the first import, the package is put in ``sys.modules`` as a package module
whose ``__init__`` has not run (its ``__path__`` is set, so submodules such as
``pyroute2.iproute.linux`` or ``aiohttp.web`` import normally). Anyone who later asks
the package itself for a name (``from pyroute2 import NetNS``: the CNI plugin, tests in
the same process; ``from aiohttp import ClientSession``: the Docker plugin, tests) gets
it: the first such lookup runs the real ``__init__`` in that module object, so nothing
outside the router sees a difference. ``__version__`` (aiohttp's submodules import it
from the package) is read from the installed distribution's metadata.
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
    """A package before its ``__init__`` ran: submodules import, other names load it."""

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
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") \
                from None


def defer_package(name: str, *, version: bool = False) -> None:
    """Make ``name``'s submodules importable without its ``__init__`` (no-op if imported).
    ``version``: set ``__version__`` from the installed distribution first."""
    with _lock:
        if name in sys.modules:
            return  # already imported (whole, or deferred)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ImportError(f"{name} is not installed")
        mod = importlib.util.module_from_spec(spec)
        if version:
            from importlib.metadata import version as dist_version

            mod.__dict__["__version__"] = dist_version(name)
        mod.__class__ = _DeferredPackage
        sys.modules[name] = mod
