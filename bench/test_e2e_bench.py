"""The end-to-end side-by-side as pytest-benchmark tests (root, lab namespaces):

    flock /tmp/sleeve-lab.lock python3 -m pytest bench/ -m e2e --benchmark-only \\
        --benchmark-autosave [--e2e-subjects sleeve,fastd --e2e-repeats 3 --e2e-seconds 5]

One test per subject and repeat, in the interleaved order of ``bench.series``
(``r1-sleeve``, ``r1-fastd``, ``r2-sleeve`` ...): each is one ``bench.e2e.run_subject`` (a
fresh two-host lab, the tests of ``--e2e-tests``), timed as one round, so the timing
columns are the wall time of a subject's run. The figures are in ``extra_info``:
throughput (Gbit/s, kpps), UDP loss, ping avg/p99, tunnel CPU-s per GB, so that the saved
JSON (``--benchmark-autosave``, ``pytest-benchmark compare``) tracks them across releases.
``test_e2e_series`` comes last: the medians, spreads and per-repeat ratios of the whole
series (``bench.series_stats``) in its ``extra_info``, the report written to ``--e2e-out``
when given. A run that fails fails its test; without root the tests fail, never skip.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import re
import tempfile
from typing import Any

import pytest

from bench import e2e, series
from bench import series_stats as st

pytestmark = pytest.mark.e2e

RUNS: list[dict[str, Any]] = []  # this session's runs, in order, for the series test


def _opt(config: pytest.Config, name: str) -> str:
    return str(config.getoption(f"--e2e-{name}"))


def _subjects(config: pytest.Config) -> list[str]:
    return [s for s in _opt(config, "subjects").split(",") if s]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "e2e_run" not in metafunc.fixturenames:
        return
    cfg = metafunc.config
    order = st.interleaved(_subjects(cfg), int(_opt(cfg, "repeats")))
    metafunc.parametrize("e2e_run", order, ids=[f"r{i + 1}-{s}" for i, s in order])


@pytest.fixture(scope="session")
def e2e_config(pytestconfig: pytest.Config) -> e2e.Config:
    if os.geteuid() != 0:
        pytest.fail("the e2e benchmarks need root (network namespaces)")
    bad = [s for s in _subjects(pytestconfig) if s not in e2e.SUBJECTS]
    tests = [t for t in _opt(pytestconfig, "tests").split(",") if t]
    bad += [t for t in tests if t not in e2e.TESTS]
    if bad:
        pytest.fail(f"unknown e2e subjects or tests: {bad}")
    out = pathlib.Path(tempfile.mkdtemp(prefix="sleeve-e2e-bench-"))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return e2e.Config(int(_opt(pytestconfig, "seconds")), tests, 200, 0, None, out, stamp)


def _key(m: st.Metric) -> str:
    unit = m.unit.lower().replace("%", "percent")
    return f"{m.key}_{re.sub(r'[^a-z0-9]+', '_', unit).strip('_')}"


def figures(result: dict[str, Any]) -> dict[str, float]:
    """The run's figures, flat, for extra_info: e.g. tcp1_gbit_s, ping_avg_ms."""
    out = {}
    for m in st.ALL_METRICS:
        v = m.get(result)
        if v is not None:
            out[_key(m)] = round(v, 6)
    return out


def test_e2e_subject(benchmark: Any, e2e_run: tuple[int, str], e2e_config: e2e.Config,
                     ) -> None:
    repeat, subject = e2e_run
    result: dict[str, Any] = benchmark.pedantic(e2e.run_subject, args=(subject, e2e_config),
                                                rounds=1, iterations=1)
    RUNS.append({"repeat": repeat, "subject": subject, "result": result})
    benchmark.extra_info.update({"subject": subject, "repeat": repeat + 1,
                                 "status": result.get("status"), **figures(result)})
    assert result.get("status") == "ok", result.get("error") or result.get("reason")


def test_e2e_series(benchmark: Any, pytestconfig: pytest.Config) -> None:
    subjects = _subjects(pytestconfig)
    if not RUNS:
        pytest.fail("no e2e run in this session (select the whole file, -m e2e)")

    def summarise() -> dict[str, Any]:
        med = st.per_subject(RUNS, subjects)
        info: dict[str, Any] = {s: {_key(st.BY_KEY[k]): vars(v) for k, v in ms.items()}
                                for s, ms in med.items()}
        for s in subjects:
            for p in subjects:
                if s.startswith("sleeve") and p in st.REFERENCE_PEERS:
                    info[f"{s}/{p}"] = {k: {"median": sp.median, "lo": sp.lo, "hi": sp.hi,
                                            "per_repeat": rs}
                                        for k, (sp, rs) in st.ratios(RUNS, s, p).items()}
        info["flags"] = st.flags(RUNS, {}, medians=med)
        return info

    info = benchmark.pedantic(summarise, rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    out = pytestconfig.getoption("--e2e-out")
    if out:
        doc: dict[str, Any] = {
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "environment": e2e.environment(), "command": "pytest bench/ -m e2e",
            "config": {"subjects": subjects, "tests": _opt(pytestconfig, "tests").split(","),
                       "repeats": int(_opt(pytestconfig, "repeats")),
                       "seconds": int(_opt(pytestconfig, "seconds")), "ping_count": 200},
            "wall_seconds": "-", "runs": RUNS, "flags": info["flags"],
            "history_reference": {}}
        path = pathlib.Path(out)
        path.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        (path / f"series-{stamp}.md").write_text(st.markdown(doc, series._header))
        (path / f"series-{stamp}.json").write_text(json.dumps(doc, indent=1, default=str))
    assert len(RUNS) == len(subjects) * int(_opt(pytestconfig, "repeats"))
