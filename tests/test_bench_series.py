"""The interleaved bench series (bench.series, bench.series_stats) without a lab: run order,
medians and spreads, per-repeat ratios, issue 23's targets, the peer history (bounded,
damaged file refused) and the flag of a peer far below its own history, with its CPU and
UdpRcvbufErrors; and the e2e marker kept out of a plain ``pytest bench/``."""

from __future__ import annotations

import pathlib
import subprocess
import sys
from typing import Any

import pytest

from bench import series
from bench import series_stats as st

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(repeat: int, subject: str, gbps: float, ping: float, kpps: float = 50.0,
         loss: float = 50.0, cpu: float = 10.0, rcvbuf: int = 7) -> dict[str, Any]:
    tests = {
        "tcp1": {"bits_per_second": gbps * 1e9, "daemon_cpu_s_per_gb": cpu,
                 "daemon_cpu_seconds_total": 4.2,
                 "nstat_delta": {"a": {"UdpRcvbufErrors": 0},
                                 "b": {"UdpRcvbufErrors": rcvbuf}}},
        "udp64": {"rx_pps": kpps * 1e3, "loss_percent": loss},
        "ping": {"avg_ms": ping, "p99_ms": ping * 1.5},
    }
    return {"repeat": repeat, "subject": subject,
            "result": {"subject": subject, "status": "ok", "tests": tests}}


def _series() -> list[dict[str, Any]]:
    return [_run(0, "sleeve", 1.4, 0.7, 80, 60), _run(0, "fastd", 1.0, 0.3, 50, 80),
            _run(1, "sleeve", 1.2, 0.6, 78, 62), _run(1, "fastd", 0.5, 0.3, 52, 80, rcvbuf=999),
            _run(2, "sleeve", 1.5, 0.8, 79, 61), _run(2, "fastd", 1.1, 0.4, 48, 82)]


def test_interleaved_order() -> None:
    assert st.interleaved(["sleeve", "fastd"], 3) == [
        (0, "sleeve"), (0, "fastd"), (1, "sleeve"), (1, "fastd"), (2, "sleeve"), (2, "fastd")]
    with pytest.raises(ValueError):
        st.interleaved(["sleeve"], 0)


def test_medians_spreads_and_per_repeat_ratios() -> None:
    runs = _series()
    med = st.per_subject(runs, ["sleeve", "fastd"])
    sp0 = med["sleeve"]["tcp1"]
    assert (sp0.median, sp0.lo, sp0.hi, sp0.n) == (pytest.approx(1.4), pytest.approx(1.2),
                                                   pytest.approx(1.5), 3)
    assert med["fastd"]["ping_avg"].median == 0.3
    rat = st.ratios(runs, "sleeve", "fastd")
    sp, per = rat["tcp1"]
    assert per == pytest.approx([1.4, 2.4, 1.5 / 1.1])  # repeat by repeat, not of medians
    assert sp.median == pytest.approx(1.4)
    assert (sp.lo, sp.hi) == (pytest.approx(1.4 / 1.1 * 1.5 / 1.4), pytest.approx(2.4))


def test_targets() -> None:
    rows = {t["metric"]: t for t in st.targets(st.ratios(_series(), "sleeve", "fastd"))}
    assert rows["tcp1"]["status"] == "not met"        # median 1.4 < 2.0
    assert rows["udp64"]["status"] == "met"           # 80/50, 78/52, 79/48: >= 1.5
    assert rows["udp64_loss"]["status"] == "met"      # 60/80 etc: less loss
    assert rows["ping_avg"]["status"] == "not met"    # 0.7/0.3 ...
    assert rows["tcp1r"]["status"] == "not measured"


def test_flag_peer_far_below_its_history() -> None:
    runs = _series()
    history = {"fastd": {"tcp1": [{"stamp": "x", "median": 1.0}, {"stamp": "y", "median": 1.1},
                                  {"stamp": "z", "median": 0.9}]}}
    fl = st.flags(runs, history)
    assert [(f["peer"], f["metric"], f["repeat"]) for f in fl] == [("fastd", "tcp1", 1)]
    assert fl[0]["reference"] == 1.0 and fl[0]["reference_from"] == "history"
    assert fl[0]["udp_rcvbuf_errors"] == 999 and fl[0]["cpu_seconds"] == 4.2
    # without history, against this series' own median (1.0): 0.5 is still far below
    med = st.per_subject(runs, ["fastd"])
    assert [f["repeat"] for f in st.flags(runs, {}, medians=med) if f["metric"] == "tcp1"] == [1]
    # a peer near its history is not flagged
    ok = [r for r in runs if r["repeat"] != 1]
    assert st.flags(ok, history) == []


def test_history_bounded_and_damaged_file_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "h.json"
    assert st.load_history(path) == {}
    med = st.per_subject(_series(), ["sleeve", "fastd"])
    h: dict[str, Any] = {}
    for i in range(st.HISTORY_KEEP + 5):
        h = st.updated_history(h, med, f"s{i}")
    assert "sleeve" not in h  # only reference peers are kept
    assert len(h["fastd"]["tcp1"]) == st.HISTORY_KEEP
    assert h["fastd"]["tcp1"][-1]["stamp"] == f"s{st.HISTORY_KEEP + 4}"
    st.save_history(path, h)
    assert st.load_history(path) == h
    assert st.reference(h, "fastd", "tcp1") == pytest.approx(1.0)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        st.load_history(path)


def test_markdown_report() -> None:
    runs = _series()
    doc = {"config": {"subjects": ["sleeve", "fastd"]}, "runs": runs,
           "flags": st.flags(runs, {}, medians=st.per_subject(runs, ["fastd"])),
           "history_reference": {}}
    md = st.markdown(doc, lambda d: ["# header", ""])
    assert "| sleeve | 1.4 (1.2..1.5)" in md
    assert "## sleeve ÷ fastd, per repeat" in md
    assert "| TCP 1 stream a->b ↑ | 1.400 (1.364..2.400) | 1.400, 2.400, 1.364 |" in md
    assert "Issue 23 targets" in md and "not met" in md
    assert "| fastd | TCP 1 stream a->b | 2 | 0.5 |" in md


def test_series_arguments_checked() -> None:
    for bad in (["--repeats", "2"], ["--subjects", "nope"], ["--seconds", "0"]):
        with pytest.raises(SystemExit) as e:
            series.main(bad)
        assert e.value.code == 2


def test_plain_pytest_bench_deselects_e2e() -> None:
    """``pytest bench/`` (no -m e2e) collects no lab benchmark; ``-m e2e`` selects them."""
    def collect(*extra: str) -> str:
        r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                            "bench/test_e2e_bench.py", *extra], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        return r.stdout
    plain = collect()
    assert "test_e2e_subject" not in plain and "deselected" in plain
    selected = collect("-m", "e2e", "--e2e-subjects", "sleeve,fastd", "--e2e-repeats", "3")
    ids = [ln for ln in selected.splitlines() if "test_e2e_subject" in ln]
    assert [i.split("[")[1] for i in ids] == [
        "r1-sleeve]", "r1-fastd]", "r2-sleeve]", "r2-fastd]", "r3-sleeve]", "r3-fastd]"]


def test_profile_summary_counts_helper_threads_apart() -> None:
    """py-spy samples every thread: a helper parked on a lock must not show as a third of
    the router's time "in libc" (it did in the first profile of issue 23)."""
    from bench import e2e_report

    main = "0x1 (libc.so.6);main (sleeve/cli.py:1);Ingress.on_run (sleeve/forward/ingress.py:9)"
    parked = ("0x2 (libc.so.6);Thread._bootstrap (threading.py:1002);NetlinkWorker._run "
              "(sleeve/fastdp/netlink.py:77);Condition.wait (threading.py:327);"
              "PyThread_acquire_lock_timed (libpython3.11.so.1.0);0x7f (libc.so.6)")
    busy = "0x2 (libc.so.6);Thread._bootstrap (threading.py:1002);work (x.py:3)"
    s = e2e_report.summarize_collapsed(f"{main} 30\n{parked} 60\n{busy} 10\n")
    assert s["samples"] == 30 and s["helper"] == 70 and s["helper_busy"] == 10
    assert s["categories"]["python+interpreter"] == 100.0


def test_relayed_against_direct_with_its_target() -> None:
    runs = [*_series(), _run(0, "sleeve-relayed", 0.9, 1.0), _run(1, "sleeve-relayed", 0.5, 1.1),
            _run(2, "sleeve-relayed", 0.6, 0.9)]
    subjects = ["sleeve", "sleeve-relayed", "fastd"]
    doc = {"config": {"subjects": subjects}, "runs": runs, "flags": [], "history_reference": {}}
    md = st.markdown(doc, lambda d: ["# header", ""])
    # per-repeat ratios relayed/direct: 0.9/1.4, 0.5/1.2, 0.6/1.5 -> median 0.417
    assert "## sleeve-relayed ÷ sleeve, per repeat" in md
    assert "| TCP 1 stream a->b ↑ | 0.417 (0.400..0.643) | 0.643, 0.417, 0.400 |" in md
    assert "### Issue 23 targets: sleeve-relayed ÷ sleeve" in md
    assert "| TCP 1 stream a->b | >= 0.5 | 0.417 (0.400..0.643) | not met |" in md
    # the relayed path is not held to the fastd targets (those are the direct path's)
    assert "### Issue 23 targets: sleeve-relayed ÷ fastd" not in md
    assert "### Issue 23 targets: sleeve ÷ fastd" in md
    rows = st.targets(st.ratios(runs, "sleeve-relayed", "sleeve"), st.RELAY_TARGETS)
    assert [(r["metric"], r["status"]) for r in rows] == [("tcp1", "not met"),
                                                          ("tcp1r", "not measured")]


def test_relayed_figure_needs_relayed_frames() -> None:
    from bench import e2e

    res: dict[str, Any] = {"bits_per_second": 1e9}
    e2e._check_relayed(res, "tcp1", 50_000)
    assert res["relayed_frames"] == 50_000
    with pytest.raises(RuntimeError, match="not relayed"):
        e2e._check_relayed({}, "tcp1", e2e.MIN_RELAYED_FRAMES - 1)
    e2e._check_relayed({}, "ping", 0)  # a ping run is too small to tell; recorded only
    assert "sleeve-relayed" in e2e.SUBJECTS and "sleeve-relayed" in series.DEFAULT_SUBJECTS
