"""Prints, after pytest-benchmark's own table, ns per operation and the ratio to the
baseline measured in the same run (see README.md).

Each benchmark in this folder sets ``extra_info`` = {"label", "ops", "baseline"}:
``ops`` is how many operations one timed call performs (the per-op figure is the
median of a call divided by it) and ``baseline`` the label of the benchmark it is
compared with. Ratios use the fastest round (min), which is the least disturbed by
other processes on a shared machine; the median is printed next to it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
