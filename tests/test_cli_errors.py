"""Every user error is one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from sleeve.lab import Host, Lab

SLEEVE = [sys.executable, "-m", "sleeve"]


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SLEEVE, *args], capture_output=True, text=True, timeout=timeout)


def one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode != 0, r
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("sleeve: error: "), lines[0]
    return lines[0]


def test_bad_flag() -> None:
    r = run("launch", "--bogus")
    assert r.returncode == 2
    assert "--bogus" in one_line_error(r)


def test_bad_values() -> None:
    for args, needle in ((["--port", "70000"], "--port"), (["--ip", "198.19.0.1"], "prefix"),
                         (["--mtu", "100"], "--mtu"), (["--iface", "x" * 20], "15"),
                         (["--api-socket", "api.sock"], "absolute file path"),
                         (["--api-socket", "/" + "x" * 120], "longer than 107 bytes"),
                         (["--api-group", "no-such-group-here"], "no group"),
                         (["--api-socket", "off", "--api-group", "root"], "--api-socket is off")):
        r = run("launch", "--no-encryption", "--open", *args)
        assert r.returncode == 2
        assert needle in one_line_error(r)


def test_missing_password_file() -> None:
    r = run("launch", "--password-file", "/nonexistent/sleeve-pw")
    assert r.returncode == 2
    assert "cannot read password file /nonexistent/sleeve-pw" in one_line_error(r)


def test_no_password_at_all() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SLEEVE_PASSWORD"}
    r = subprocess.run([*SLEEVE, "launch"], capture_output=True, text=True, env=env, timeout=30)
    assert "no password" in one_line_error(r)


def test_not_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test drops privileges and needs to start as root")
    # sys.executable may live under a directory nobody cannot read: the check must come first
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        *SLEEVE, "launch", "--no-encryption", "--open"],
                       capture_output=True, text=True, timeout=30)
    assert "must run as root" in one_line_error(r)


def test_keygen_prints_a_random_secret() -> None:
    a, b = run("keygen"), run("keygen")
    assert a.returncode == 0 and len(a.stdout.strip()) == 43
    assert a.stdout != b.stdout


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    with Lab() as lab:
        h = lab.host("h")
        yield h


def _launch_in(host: Host, *args: str, pre: list[str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
    return host.run(*(pre or []), *SLEEVE, "launch", "--no-encryption", "--open", "--state-dir",
                    f"/tmp/sleeve-cli-test-{os.getpid()}", "--http", "off", "--api-socket", "off",
                    *args,
                    check=False, timeout=30)


@pytest.mark.lab
@pytest.mark.parametrize("kind", ["udp", "tcp"])
def test_port_in_use(host: Host, kind: str) -> None:
    holder = host.popen(sys.executable, "-c",
                        "import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_"
                        + ("DGRAM" if kind == "udp" else "STREAM") + ");"
                        "s.bind(('0.0.0.0',6783));" + ("" if kind == "udp" else "s.listen();")
                        + "time.sleep(30)")
    try:
        time.sleep(0.5)
        r = _launch_in(host)
        assert f"cannot {'bind UDP' if kind == 'udp' else 'listen on TCP'} port 6783" \
            in one_line_error(r)
        assert "sleeve0" not in host.run("ip", "link").stdout  # failed before creating a TAP
    finally:
        host.stop(holder)


@pytest.mark.lab
def test_no_dev_net_tun(host: Host) -> None:
    # a private mount namespace where /dev/net is an empty tmpfs
    r = _launch_in(host, pre=["unshare", "-m", "sh", "-c",
                              'mount -t tmpfs none /dev/net && exec "$@"', "sh"])
    assert "/dev/net/tun is missing" in one_line_error(r)
