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

# Reentrant: a package's __init__ may look up its own names (or load another deferred
# package) while its load holds the lock. Held around the load so that a thread asking
# for a name while another thread's load is running waits for the whole module.
_lock = threading.RLock()
_LOADED = "_sleeve_loaded"
_LOADING = "_sleeve_loading"


class _DeferredPackage(types.ModuleType):
    """A package before its ``__init__`` ran: submodules import, other names load it."""

    def __getattr__(self, name: str) -> Any:
        # dunders (tools probe __wrapped__, __test__...) do not load the package, except
        # __all__ (``from pkg import *``): it is the package's to say
        if name.startswith("__") and name != "__all__":
            raise AttributeError(name)
        full = f"{self.__name__}.{name}"
        if full in sys.modules:
            return sys.modules[full]
        d = self.__dict__
        if not d.get(_LOADED):
            # a submodule (``from pyroute2 import config``) imports without the package
            if name != "__all__" and importlib.util.find_spec(full) is not None:
                return importlib.import_module(full)
            self._sleeve_load()
        try:
            return d[name]
        except KeyError:
            pass
        hook = d.get("__getattr__")  # the package's own module __getattr__ (PEP 562)
        if d.get(_LOADED) and callable(hook):
            return hook(name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        self._sleeve_load()
        return list(super().__dir__())

    def _sleeve_load(self) -> None:
        """Run the real ``__init__`` in this module object, once; marked loaded only
        when it succeeded. A failing ``__init__`` leaves the deferred module as it was
        (a later lookup tries again) and raises its error."""
        d = self.__dict__
        with _lock:
            if d.get(_LOADED) or d.get(_LOADING):
                return  # loaded meanwhile, or this thread's __init__ asking for a name
            spec = self.__spec__
            assert spec is not None and spec.loader is not None
            before = dict(d)
            d[_LOADING] = True
            try:
                spec.loader.exec_module(self)
            except BaseException:
                d.clear()
                d.update(before)
                raise
            del d[_LOADING]
            d[_LOADED] = True


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
