"""Smoke tests of the end-to-end benchmark harness (bench.e2e), so it does not rot.

- the report (ratios, Markdown, chart, profile summary) from a synthetic result document;
- a subject whose tools are missing is reported "not available", with no lab and no number;
- a short real run (veth, encrypted sleeve, the sleeve-fast hook) in lab namespaces: every
  test kind, the CPU accounting, the py-spy profile when py-spy is installed. Needs root
  and network namespaces: fails (never skips) without them. The reference tunnels
  (wireguard-go, tinc, fastd; bench/setup.sh) are not needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import time
from typing import Any

import pytest

from bench import e2e, e2e_report


def _tcp(gbps: float, cpu_per_gb: float | None = None) -> dict[str, Any]:
    t: dict[str, Any] = {"bits_per_second": gbps * 1e9, "bytes_received": int(gbps * 1.25e9),
                         "retransmits": 3, "nstat_delta": {"a": {}, "b": {}}}
    if cpu_per_gb is not None:
        t["daemon_cpu_s_per_gb"] = cpu_per_gb
        t["daemon_cpu_seconds_total"] = cpu_per_gb * gbps * 1.25
    return t


def _udp(kpps: float, loss: float) -> dict[str, Any]:
    return {"bits_per_second": kpps * 1e3 * 512, "bytes_received": 1, "rx_pps": kpps * 1e3,
            "tx_pps": kpps * 1e3 / (1 - loss / 100), "loss_percent": loss}


def _subject(name: str, gbps: float, ping: float, cpu: float | None) -> dict[str, Any]:
    return {
        "subject": name, **e2e.SUBJECT_INFO[name], "status": "ok", "mtu": 1400,
        "mtu_check": {"ok": True}, "leak_check": {"checked": True, "plaintext_seen": False},
        "tests": {
            "tcp1": _tcp(gbps, cpu), "tcp1r": _tcp(gbps * 0.9, cpu), "tcp4": _tcp(gbps * 1.1),
            "tcp4r": _tcp(gbps), "udp64": _udp(gbps * 100, 10.0), "udp512": _udp(gbps * 80, 5.0),
            "ping": {"avg_ms": ping, "p99_ms": ping * 2, "received": 200, "sent": 200},
        },
    }


def synthetic_doc() -> dict[str, Any]:
    results = [
        _subject("veth", 20.0, 0.03, None),
        _subject("vxlan", 16.0, 0.05, None),
        _subject("sleeve", 0.4, 0.7, 30.0),
        {"subject": "sleeve-fast", **e2e.SUBJECT_INFO["sleeve-fast"],
         "status": "not available", "reason": "not built yet"},
        _subject("wireguard-go", 0.5, 0.3, 20.0),
        _subject("fastd", 0.8, 0.1, 25.0),
        {"subject": "tinc", **e2e.SUBJECT_INFO["tinc"], "status": "failed",
         "error": "RuntimeError: boom"},
    ]
    env = {"date": "2026-11-27T00:00:00+00:00", "hostname": "h", "machine": "x86_64",
           "kernel": "6.x", "cpu_model": "cpu", "cpus": 2, "mem_gib": 24, "python": "3.11",
           "pynacl": "1.6", "uvloop": "0.2", "iperf3": "iperf 3.12",
           "debian_packages": {"fastd": "22-4", "tinc": None}}
    doc: dict[str, Any] = {
        "environment": env, "wall_seconds": 1.0, "anchor_note": "anchors",
        "config": {"seconds": 10, "tests": list(e2e.TESTS), "ping_count": 200},
        "results": results,
    }
    doc["ratios"] = e2e_report.ratios(doc)
    return doc


def test_report_ratios_markdown_chart(tmp_path: pathlib.Path) -> None:
    doc = synthetic_doc()
    rt = doc["ratios"]
    assert set(rt) == {"sleeve"}  # sleeve-fast not available: no ratios, no numbers
    tcp1 = rt["sleeve"]["tcp1"]
    assert tcp1["best_peer"]["subject"] == "fastd"  # higher is better
    assert tcp1["best_peer"]["ratio"] == pytest.approx(0.4 / 0.8)
    assert tcp1["vs_veth"]["ratio"] == pytest.approx(0.4 / 20.0)
    assert tcp1["vs_vxlan"]["ratio"] == pytest.approx(0.4 / 16.0)
    assert rt["sleeve"]["ping_avg"]["best_peer"]["subject"] == "fastd"  # lower is better
    cpu = rt["sleeve"]["cpu_per_gb"]
    assert cpu["best_peer"]["subject"] == "wireguard-go"
    assert cpu["vs_veth"] is None  # the kernel has no tunnel process
    paths = e2e_report.write_all(doc, tmp_path, "test", latest=True)
    md = paths["md"].read_text()
    assert md == (tmp_path / "LATEST.md").read_text()
    assert "| sleeve-fast | L2 | | | not available |" in md
    assert "not available: not built yet" in md
    assert "**tinc**: FAILED" in md
    assert "## Ratios: sleeve" in md and "fastd 0.800" in md
    assert "kernel 6.x, Python 3.11" in md
    assert json.loads(paths["json"].read_text())["ratios"]["sleeve"]["tcp1"]["value"] == 0.4
    if importlib.util.find_spec("matplotlib") is not None:
        assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "Chart not written: matplotlib not installed" in md


def test_profile_summary() -> None:
    pre = "x (libc.so.6);main (sleeve/cli.py:1);Node._on_udp_readable (sleeve/node.py:5)"
    text = "\n".join([
        "x (libc.so.6);main (sleeve/cli.py:1);uv__io_poll (linux.c:1);epoll_pwait (libc.so.6) 50",
        f"{pre};TapPort.write (sleeve/capture/tap.py:71);os_write (libpython3.11.so);"
        "write (libc.so.6) 30",
        f"{pre};Opener.open (sleeve/crypto/aead.py:9);"
        "crypto_aead_chacha20poly1305_ietf_decrypt (nacl/bindings/crypto_aead.py:3) 15",
        f"{pre};Node._on_datagram (sleeve/node.py:7) 5",
        "garbage line",
    ])
    s = e2e_report.summarize_collapsed(text)
    assert s["samples"] == 100
    assert s["categories"] == {"idle": 50.0, "syscalls": 30.0, "crypto": 15.0,
                               "python+interpreter": 5.0}
    assert s["self"][0] == ["epoll_pwait (libc.so.6)", 50, 50.0]
    incl = {f: p for f, _, p in s["inclusive"]}
    assert incl["Node._on_udp_readable (sleeve/node.py)"] == 50.0
    assert incl["TapPort.write (sleeve/capture/tap.py)"] == 30.0
    assert "main (sleeve/cli.py)" not in incl  # on every stack


def test_missing_tools_reported_not_available(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: pathlib.Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    cfg = e2e.Config(1, ["tcp1"], 5, 0, None, tmp_path, "x")
    for kind in ("wireguard-go", "tinc", "fastd"):
        r = e2e.run_subject(kind, cfg)  # no lab is built: works without root
        assert r["status"] == "not available", r
        assert "bench/setup.sh" in r["reason"]
        assert "tests" not in r


def test_sleeve_fast_is_available() -> None:
    assert e2e.sleeve_fast_unavailable() is None  # sleeve launch offers --no-fastdp


@pytest.mark.lab
def test_e2e_harness_short_run(tmp_path: pathlib.Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    t0 = time.monotonic()
    rc = e2e.main(["--seconds", "1", "--ping-count", "20", "--profile-seconds", "1", "--latest",
                   "--out", str(tmp_path), "--subjects", "veth,sleeve,sleeve-fast"])
    wall = time.monotonic() - t0
    (jpath,) = tmp_path.glob("e2e-*.json")
    doc = json.loads(jpath.read_text())
    by = {r["subject"]: r for r in doc["results"]}
    assert list(by) == ["veth", "sleeve", "sleeve-fast"]
    for name in ("veth", "sleeve"):
        r = by[name]
        assert r["status"] == "ok", (name, r.get("error"), r.get("tests"))
        tests = r["tests"]
        assert set(tests) == set(e2e.TESTS)
        for t in ("tcp1", "tcp1r", "tcp4", "tcp4r"):
            assert tests[t]["bits_per_second"] > 0, (name, t)
        for t in ("udp64", "udp512"):
            assert tests[t]["packets_received"] > 0, (name, t)
            assert 0 <= tests[t]["loss_percent"] <= 100, (name, t)
        assert tests["ping"]["received"] > 0, name
        assert r["mtu_check"]["ok"], (name, r["mtu_check"])
    sl = by["sleeve"]
    assert sl["leak_check"] == {**sl["leak_check"], "checked": True, "plaintext_seen": False}
    assert sl["tests"]["tcp1"]["daemon_cpu_seconds_total"] > 0
    assert sl["tests"]["tcp1"]["daemon_cpu_s_per_gb"] > 0
    assert "daemon_cpu_seconds_total" not in by["veth"]["tests"]["tcp1"]
    fast = by["sleeve-fast"]
    assert fast["status"] == "ok", (fast.get("error"), fast.get("reason"))
    assert fast["tests"]["tcp1"]["bits_per_second"] > 0
    prof = sl["profile"]
    if e2e.pyspy() is None:  # the bench's own lookup: beside its interpreter, else PATH
        assert prof["status"] == "not available"
    else:
        assert prof["status"] == "ok", prof
        for host in ("a", "b"):
            assert (tmp_path / prof["files"][host]).stat().st_size > 0
            assert prof["summary"][host]["samples"] > 0
    assert doc["ratios"]["sleeve"]["tcp1"]["vs_veth"]["ratio"] > 0
    for key in ("date", "kernel", "cpu_model", "python", "pynacl", "uvloop"):
        assert doc["environment"][key], key
    md = (tmp_path / "LATEST.md").read_text()
    assert "## Ratios: sleeve" in md and "| sleeve-fast |" in md
    if importlib.util.find_spec("matplotlib") is not None:
        assert list(tmp_path.glob("e2e-*.png"))
    assert rc == 0
    assert wall < 60, f"smoke run took {wall:.0f} s"
