"""sleeve.lazypkg: a deferred package's real ``__init__`` runs once, whole, on first use.

Review of issue 23: threads that ask for a name while another thread's load runs wait
for the whole module (no ImportError/AttributeError from a half-run ``__init__``); a
failing ``__init__`` leaves the deferred package as it was and a later lookup loads it;
an ``__init__`` that loads another deferred package does not deadlock; ``__all__`` and
``dir()`` load the package like any other name.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sleeve.lazypkg import defer_package

SLOW_INIT = """
import sys, time
time.sleep(0.3)
try:  # the __init__ looking up one of its own names before it is set
    sys.modules[__name__].VALUE
except AttributeError:
    pass
from . import sub
VALUE = sub.X + 1
__all__ = ["VALUE"]
"""


@pytest.fixture
def pkgs(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path for throwaway packages; removed (and their modules) after."""
    sys.path.insert(0, str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in set(sys.modules) - before:
        del sys.modules[name]


def make(root: Path, name: str, init: str) -> Any:
    d = root / name
    d.mkdir()
    (d / "__init__.py").write_text(init)
    (d / "sub.py").write_text("X = 41\n")
    defer_package(name)
    return sys.modules[name]


def test_threads_on_first_use_all_get_the_whole_module(pkgs: Path) -> None:
    started = threading.Event()
    sys.modules["lazy_signal"] = types.SimpleNamespace(started=started)  # type: ignore[assignment]
    mod = make(pkgs, "lazy_slow", SLOW_INIT.replace(
        "time.sleep(0.3)", "import lazy_signal\nlazy_signal.started.set()\ntime.sleep(0.3)"))
    got: list[object] = []

    def use() -> None:
        try:
            got.append(mod.VALUE)
        except Exception as e:  # the failure is what the test reports
            got.append(e)

    first = threading.Thread(target=use, daemon=True)
    first.start()
    assert started.wait(10)
    # the first thread's load is running its __init__: the others ask meanwhile
    ts = [first] + [threading.Thread(target=use, daemon=True) for _ in range(5)]
    for t in ts[1:]:
        t.start()
    for t in ts:
        t.join(10)
    assert got == [42] * 6


def test_a_failing_init_is_rolled_back_and_loaded_by_a_later_lookup(pkgs: Path) -> None:
    flag = pkgs / "fail"
    flag.write_text("1")
    init = f"import pathlib\nHALF = 1\nif pathlib.Path({str(flag)!r}).exists():\n" \
           "    raise RuntimeError('first load fails')\nVALUE = 7\n"
    mod = make(pkgs, "lazy_fail", init)
    with pytest.raises(RuntimeError, match="first load fails"):
        _ = mod.VALUE
    assert "HALF" not in mod.__dict__  # nothing of the failed run is left
    flag.unlink()
    assert mod.VALUE == 7 and mod.HALF == 1


def test_an_init_that_loads_another_deferred_package_does_not_deadlock(pkgs: Path) -> None:
    make(pkgs, "lazy_inner", "VALUE = 5\n")
    outer = make(pkgs, "lazy_outer", "import lazy_inner\nVALUE = lazy_inner.VALUE + 1\n")
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(outer.VALUE), daemon=True)
    t.start()
    t.join(10)
    assert got == [6], "the load of lazy_outer hung (a non-reentrant lock)"


def test_all_and_dir_load_the_package(pkgs: Path) -> None:
    make(pkgs, "lazy_star", SLOW_INIT.replace("time.sleep(0.3)", ""))
    ns: dict[str, object] = {}
    exec("from lazy_star import *", ns)
    assert ns.get("VALUE") == 42 and "sub" not in ns
    mod = make(pkgs, "lazy_dir", SLOW_INIT.replace("time.sleep(0.3)", ""))
    assert "VALUE" in dir(mod)
