"""bench.ping_cpu's variant syntax and report (the lab runs are the bench's, not the suite's)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import ping_cpu


def test_variants_parse_to_environment_assignments() -> None:
    assert ping_cpu.parse_variant("") == {}
    assert ping_cpu.parse_variant("SLEEVE_LAB_ROUTER_ARGS=--no-offload --mtu 1400") == {
        "SLEEVE_LAB_ROUTER_ARGS": "--no-offload --mtu 1400"}
    assert ping_cpu.parse_variant("A=1, B=") == {"A": "1", "B": ""}
    for bad in ("A", "=1", "1A=2", "A=1,B"):
        with pytest.raises(ValueError, match="NAME=VALUE"):
            ping_cpu.parse_variant(bad)


def test_bad_options_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        ping_cpu.main(["--variants", "fastd;NOPE"])
    assert e.value.code == 2 and "not NAME=VALUE: 'NOPE'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ping_cpu.main(["--variants", "fastd", "--repeats", "0"])


def test_report_gives_medians_and_spreads_per_variant() -> None:
    runs: dict[str, list[dict[str, Any]]] = {
        "": [{"avg_ms": x, "p99_ms": 1.0, "cpu_ping_pct": 5.0, "cpu_idle_pct": 0.3}
             for x in (0.7, 0.9, 0.8)],
        "fastd": [{"avg_ms": 0.25, "p99_ms": None, "cpu_ping_pct": 1.4, "cpu_idle_pct": 0.0}]}
    lines = ping_cpu.report(["", "fastd"], runs)
    assert lines[2].startswith("| (as is) | 0.800 (0.700..0.900) | 1.000 (1.000..1.000) |")
    assert lines[3] == ("| fastd | 0.250 (0.250..0.250) | - | 1.400 (1.400..1.400) "
                        "| 0.000 (0.000..0.000) |")
