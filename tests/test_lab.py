"""Tests of the namespace lab (sleeve.lab). Need root and iproute2: they fail, never skip."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from sleeve.lab import Host, Lab, LabError

pytestmark = pytest.mark.lab

# Module-level precondition: evaluated once at import, enforced (as a failure) per test.
_MISSING = [
    why
    for why, bad in (
        ("not running as root", os.geteuid() != 0),
        ("`ip` (iproute2) not on PATH", shutil.which("ip") is None),
        ("`nft` not on PATH", shutil.which("nft") is None),
        ("`ping` not on PATH", shutil.which("ping") is None),
    )
    if bad
]


@pytest.fixture(autouse=True, scope="module")
def _require_root_and_tools() -> None:
    if _MISSING:
        pytest.fail("lab tests cannot run: " + "; ".join(_MISSING), pytrace=False)


def _netns_list() -> list[str]:
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _assert_clean(prefix: str) -> None:
    left = [n for n in _netns_list() if n.startswith(prefix)]
    assert left == [], f"namespaces left behind: {left}"


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab
    assert lab.errors == []
    _assert_clean(lab.prefix)


def _two_on_switch(lab: Lab) -> tuple[Host, Host, str, str, str]:
    """Hosts a and b on one switch: (a, b, a's ifname, a's IP, b's IP)."""
    sw = lab.switch()
    a, b = lab.host("a"), lab.host("b")
    if_a = lab.connect(a, sw)
    if_b = lab.connect(b, sw)
    ip_a = a.ipv4(if_a)[0].split("/")[0]
    ip_b = b.ipv4(if_b)[0].split("/")[0]
    return a, b, if_a, ip_a, ip_b


def test_two_hosts_on_switch_ping(lab: Lab) -> None:
    a, b, _if_a, ip_a, ip_b = _two_on_switch(lab)
    assert (ip_a, ip_b) == ("198.18.0.1", "198.18.0.2")
    assert a.netns == f"slv-{lab.run_id}-a"
    assert all(n.startswith(f"slv-{lab.run_id}-") for n in lab.namespaces())
    assert a.ping(ip_b)
    assert b.ping(ip_a)
    # no way out: only the connected route exists
    routes = a.run("ip", "-4", "route", "show").stdout
    assert "default" not in routes
    assert a.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"


def test_interface_names_unique_and_short(lab: Lab) -> None:
    sw = lab.switch()
    names = {lab.connect(lab.host(f"h{i}"), sw, addr=None) for i in range(3)}
    assert len(names) == 3
    assert all(n.startswith(f"slv{lab.run_id}") and len(n) <= 15 for n in names)


def test_link_mtu_1280(lab: Lab) -> None:
    a, b = lab.host("a"), lab.host("b")
    lab.link(a, b, "198.18.5.1/30", "198.18.5.2/30", mtu=1280)
    assert a.wait_ping("198.18.5.2", timeout=10)
    assert a.ping("198.18.5.2", count=2, size=1252, dont_fragment=True)
    assert not a.ping("198.18.5.2", count=2, size=1253, dont_fragment=True)


def test_block_and_unblock(lab: Lab) -> None:
    a, _b, _if_a, _ip_a, ip_b = _two_on_switch(lab)
    assert a.ping(ip_b)
    h = a.block(ip_b)
    assert not a.ping(ip_b, count=2)
    a.unblock(h)
    assert a.wait_ping(ip_b, timeout=10)
    # port/proto variants load and leave ICMP alone
    h1 = a.block(ip_b, "udp", 5555)
    h2 = a.block(ip_b, port=80)
    assert a.ping(ip_b, count=1)
    h3 = a.block(ip_b, "icmp")
    assert not a.ping(ip_b, count=1)
    for h in (h1, h2, h3):
        a.unblock(h)
    assert a.ping(ip_b, count=1)
    with pytest.raises(KeyError):
        a.unblock(h1)


def test_loss_100_and_clear(lab: Lab) -> None:
    a, _b, if_a, _ip_a, ip_b = _two_on_switch(lab)
    assert a.ping(ip_b)
    a.loss(if_a, 100)
    assert not a.ping(ip_b, count=2)
    a.loss(if_a, 30)  # replaces the 100 % setting
    a.clear_loss(if_a)
    assert a.wait_ping(ip_b, timeout=10)
    a.clear_loss(if_a)  # idempotent


def test_address_validation(lab: Lab) -> None:
    sw = lab.switch()
    a, b = lab.host("a"), lab.host("b")
    with pytest.raises(ValueError):
        lab.connect(a, sw, addr="10.0.0.1/24")
    with pytest.raises(ValueError):
        lab.link(a, b, "10.0.0.1/24", "198.18.9.2/24")
    with pytest.raises(ValueError):
        lab.link(a, b, "198.19.0.1/24", "198.19.0.2/24")  # overlay range is not for links
    with pytest.raises(ValueError):
        a.addr("lo", "10.0.0.1/24")
    with pytest.raises(ValueError):
        a.addr("lo", "198.18.0.1/8")  # prefix reaching outside the range
    with pytest.raises(ValueError):
        a.route("0.0.0.0/0", "198.18.0.254")
    with pytest.raises(ValueError):
        a.route("198.19.0.0/16", "10.0.0.1")
    with pytest.raises(ValueError):
        a.block("8.8.8.8")
    with pytest.raises(ValueError):
        a.ping("10.0.0.1")
    a.addr("lo", "198.19.7.1/32")  # overlay addresses are fine on a host
    a.addr("lo", "2001:2:0:1900::7/128")  # and the IPv6 lab ranges (RFC 5180 benchmarking)
    for bad in ("2001:db8::1/64", "2001:2::1/48", "::/0"):
        with pytest.raises(ValueError):
            a.addr("lo", bad)
    with pytest.raises(ValueError):
        a.route("::/0", "2001:2:0:1800::1")
    with pytest.raises(ValueError):
        a.ping("2001:db8::1")
    with pytest.raises(ValueError):
        lab.host("a")  # duplicate
    with pytest.raises(ValueError):
        Lab(run_id="Bad-Id!")


def test_teardown_after_exception_kills_processes() -> None:
    pids: list[int] = []
    prefix = ""
    with pytest.raises(RuntimeError, match="boom"), Lab() as lab:
        prefix = lab.prefix
        sw = lab.switch()
        a = lab.host("a")
        lab.connect(a, sw)
        pids.append(a.popen("sleep", "1000").pid)
        pids.append(sw.popen("sh", "-c", "trap '' TERM; sleep 1000").pid)  # ignores SIGTERM
        assert len(lab.namespaces()) == 2
        raise RuntimeError("boom")
    _assert_clean(prefix)
    assert all(_pid_gone(p) for p in pids)
    assert lab.errors == []
    lab.close()  # idempotent
    with pytest.raises(LabError):
        lab.host("late")


def test_popen_killed_by_teardown_and_stop() -> None:
    with Lab() as lab:
        a = lab.host("a")
        kept = a.popen("sleep", "1000")
        stopped = a.popen("sleep", "1000")
        assert a.stop(stopped, timeout=2) == -signal.SIGTERM
        assert kept.poll() is None
        prefix = lab.prefix
    assert kept.returncode is not None
    assert _pid_gone(kept.pid)
    _assert_clean(prefix)


def _script(body: str) -> str:
    return textwrap.dedent(
        """
        import sys, time
        from sleeve.lab import Lab
        lab = Lab()
        h = lab.host("a")
        p = h.popen("sleep", "1000")
        print(lab.prefix, p.pid, flush=True)
        """
    ) + textwrap.dedent(body)


def _run_script(body: str, sigterm: bool) -> tuple[int, str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _script(body)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        assert proc.stdout is not None
        prefix, pid = proc.stdout.readline().split()
        if sigterm:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=20)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait(timeout=5)
    return rc, prefix, int(pid)


def test_sigterm_tears_down() -> None:
    rc, prefix, pid = _run_script("time.sleep(60)\n", sigterm=True)
    assert rc == -signal.SIGTERM  # the previous (default) handler ran after teardown
    _assert_clean(prefix)
    assert _pid_gone(pid)


def test_atexit_tears_down() -> None:
    rc, prefix, pid = _run_script("sys.exit(3)\n", sigterm=False)
    assert rc == 3
    _assert_clean(prefix)
    assert _pid_gone(pid)


def test_nat_masquerade(lab: Lab) -> None:
    lan, wan = lab.switch("lan"), lab.switch("wan")
    gw, inner, server = lab.router("gw"), lab.host("inner"), lab.host("server")
    gw_in = lab.connect(gw, lan, "198.18.0.1/24")
    gw_out = lab.connect(gw, wan, "198.18.1.1/24")
    lab.connect(inner, lan, "198.18.0.10/24")
    lab.connect(server, wan, "198.18.1.20/24")
    inner.route("198.18.1.0/24", "198.18.0.1")
    lab.nat(gw, gw_in, gw_out)
    assert inner.wait_ping("198.18.1.20", timeout=10)
    # server has no route back to the LAN: the reply only works thanks to masquerading
    assert not server.ping("198.18.0.10", count=1)
    server.route("198.18.0.0/24", "198.18.1.1")
    assert not server.ping("198.18.0.10", count=1)  # unsolicited inbound is dropped
