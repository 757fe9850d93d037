"""Prints, after pytest-benchmark's own table, ns per operation and the ratio to the
baseline measured in the same run (see README.md).

Also the ``e2e`` marker of the lab benchmarks (bench/test_e2e_bench.py) and their options:
they run only when selected with ``-m e2e`` (a plain ``pytest bench/`` deselects them, so
it stays the quick micro-benchmark run), in the interleaved order of ``bench.series``.

Each benchmark in this folder sets ``extra_info`` = {"label", "ops", "baseline"}:
``ops`` is how many operations one timed call performs (the per-op figure is the
median of a call divided by it) and ``baseline`` the label of the benchmark it is
compared with. Ratios use the fastest round (min), which is the least disturbed by
other processes on a shared machine; the median is printed next to it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

E2E_DEFAULTS = {"subjects": "sleeve,fastd", "tests": "tcp1,tcp1r,udp64,udp512,ping",
                "repeats": "3", "seconds": "5"}


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("sleeve e2e", "end-to-end lab benchmarks (-m e2e, root)")
    for name, default in E2E_DEFAULTS.items():
        g.addoption(f"--e2e-{name}", default=default, help=f"default {default}")
    g.addoption("--e2e-out", default=None,
                help="also write the series report (series-<stamp>.md/.json) here")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end lab benchmark (root, minutes; "
                            "run with -m e2e under flock /tmp/sleeve-lab.lock)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A plain `pytest bench/` is the micro-benchmarks: the lab runs take minutes and
    # root, so they are deselected (not skipped) unless the marker expression names them.
    if "e2e" in (config.getoption("markexpr") or ""):
        return
    drop = [i for i in items if i.get_closest_marker("e2e") is not None]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [i for i in items if i.get_closest_marker("e2e") is None]

# label -> (min seconds per op, median seconds per op, baseline label, group)
RESULTS: dict[str, tuple[float, float, str, str]] = {}


@pytest.fixture(autouse=True)
def _record_per_op(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    bm = request.node.funcargs.get("benchmark") if hasattr(request.node, "funcargs") else None
    meta = getattr(bm, "stats", None)
    if bm is None or meta is None:
        return
    info = bm.extra_info
    if "label" not in info:
        return  # a benchmark that did not opt in to the per-op summary
    ops = int(info.get("ops", 1))
    label = str(info["label"])
    RESULTS[label] = (meta.stats.min / ops, meta.stats.median / ops,
                      str(info.get("baseline", "")), str(bm.group or ""))


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("per-operation cost, and ratio to the baseline of the same run (on min)")
    width = max(len(k) for k in RESULTS) + 2
    tr.write_line(f"{'benchmark':<{width}}{'min ns/op':>11}{'median ns/op':>14}"
                  f"{'x baseline':>12}  baseline")
    for label, (lo, med, base, _grp) in sorted(RESULTS.items(), key=lambda kv: kv[1][3]):
        ref = RESULTS.get(base)
        ratio = f"{lo / ref[0]:12.1f}" if ref is not None and base != label else f"{'-':>12}"
        tr.write_line(f"{label:<{width}}{lo * 1e9:11.1f}{med * 1e9:14.1f}{ratio}  {base}")
