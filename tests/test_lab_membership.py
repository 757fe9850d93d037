"""Membership on real routers: a password network in clear text uses the fast datapath,
a router with a wrong password cannot join it, and an open network says it is open.

Needs root and network namespaces; fails (never skips) without them.
"""

from __future__ import annotations

import os

import pytest

from sleeve.lab import Lab
from sleeve.lab.routers import Router, established_with, workdir

pytestmark = pytest.mark.lab

UL = ["198.18.41.1", "198.18.41.2", "198.18.41.3"]
OV = ["198.19.41.1", "198.19.41.2", "198.19.41.3"]


def test_clear_text_members_use_the_kernel_and_strangers_stay_out() -> None:
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces)")
    with Lab() as lab:
        sw = lab.switch()
        a, b, x = lab.host("a"), lab.host("b"), lab.host("x")
        for h, ip in zip((a, b, x), UL, strict=True):
            lab.connect(h, sw, f"{ip}/24")
        wd = workdir()
        rb = Router(b, ["--ip", f"{OV[1]}/24", "--no-encryption"], wd, "members")
        ra = Router(a, ["--ip", f"{OV[0]}/24", "--no-encryption", UL[1]], wd, "members")
        # same network, wrong password: dials both members and keeps being refused
        rx = Router(x, ["--ip", f"{OV[2]}/24", "--no-encryption", UL[0], UL[1]], wd, "stranger")
        for r in (ra, rb):
            r.wait(established_with(1), 20, "link")
            st = r.wait(lambda s: bool(s["connections"]) and all(
                c["path"] == "fastdp" for c in s["connections"]), 20, "fast datapath")
        assert st["membership"].startswith("password") and st["fastdp"]["active"]
        assert st["encryption"].startswith("DISABLED")
        assert a.ping(OV[1], count=3)
        # the stranger has been refused by both members, at least twice each: its third
        # attempt has begun (it retries after 1-3 s; attempts counts a dial as it starts)
        rx.wait(lambda s: len(s["targets"]) == 2
                and all(t["attempts"] >= 3 and not t["connected"] for t in s["targets"]),
                20, "two refused attempts at each member")
        for r in (ra, rb):
            st = r.status()
            assert [c["nickname"] for c in st["connections"]] == [
                "b" if r is ra else "a"], st["connections"]
            assert len(st["peers"]) == 2
        sx = rx.status()
        assert not sx["connections"] and len(sx["peers"]) == 1
        assert not x.ping(OV[0], count=2, timeout=1)
        assert "wrong password" in rx.log() or "authentication failed" in rx.log()
        # an open network says so in status
        rx.stop()
        ro = Router(x, ["--ip", f"{OV[2]}/24"], wd, None)  # lab default: --no-encryption --open
        so = ro.wait(lambda s: True, 20, "status")
        assert so["membership"].startswith("OPEN")
