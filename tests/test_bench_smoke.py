"""Smoke test of the end-to-end benchmark harness (bench.e2e), run in-process.

Needs root and network namespaces: fails (never skips) without them.
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest

pytestmark = pytest.mark.lab


def test_e2e_harness_veth_and_sleeve(tmp_path: pathlib.Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    from bench import e2e

    rc = e2e.main(["--seconds", "2", "--out", str(tmp_path), "--subjects", "veth,sleeve"])
    (jpath,) = tmp_path.glob("e2e-*.json")
    doc = json.loads(jpath.read_text())
    by_subject = {r["subject"]: r for r in doc["results"]}
    assert set(by_subject) == {"veth", "sleeve"}
    for name, r in by_subject.items():
        assert "error" not in r, (name, r.get("error"))
        assert r["iperf"]["bits_per_second"] > 0, name
        assert r["ping"]["received"] > 0, name
    assert by_subject["sleeve"]["iperf"]["router_cpu_seconds_total"] > 0
    assert rc == 0
    assert list(tmp_path.glob("e2e-*.md"))
    assert (tmp_path / "LATEST.md").exists()
    for key in ("date", "kernel", "cpu_model", "python", "pynacl", "uvloop"):
        assert doc["environment"][key], key
