"""The micro DNS on real kernels: three routers in namespaces, each serving DNS on its TAP's
overlay address; a stub upstream (dnsmasq) on the underlay in its own namespace.

Each router namespace gets ``/etc/netns/NS/resolv.conf`` (``ip netns exec`` bind-mounts it
over /etc/resolv.conf) naming its own router first and the stub second: glibc
(``getent hosts``) asks the router, and the router, reading the same file, drops itself
and forwards to the stub. The files are removed at the end, even on failure.

Needs root, iproute2, dig (Debian: dnsutils), dnsmasq (Debian: dnsmasq or dnsmasq-base)
and getent (libc-bin): fails, never skips, without them. Tests run in file order on one
lab (module fixture).
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sleeve.lab import Host, Lab
from sleeve.lab.routers import Router, established_with, workdir

pytestmark = pytest.mark.lab

N = 3
UL = [f"198.18.1.{i + 1}" for i in range(N)]
OV = [f"198.19.1.{i + 1}" for i in range(N)]
UP = "198.18.1.100"  # the stub upstream (dnsmasq)
UP_NAME, UP_ADDR = "upstream.test", "198.18.77.7"
DOMAIN = "sleeve.local"
WITHIN = 2.0  # seconds for a change to be visible everywhere

_TOOLS = {"dig": "dnsutils", "dnsmasq": "dnsmasq-base", "getent": "libc-bin"}


def _missing() -> list[str]:
    why = [f"`{t}` not found (Debian package {p})" for t, p in _TOOLS.items()
           if shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")]
    if os.geteuid() != 0:
        why.append("not running as root")
    return why


@dataclass
class DnsLab:
    lab: Lab
    hosts: list[Host]
    routers: list[Router]
    up: Host
    wd: pathlib.Path
    stub: object = None

    def start_stub(self) -> None:
        dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        self.stub = self.up.popen(
            dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
            "--no-hosts", "--bind-interfaces", f"--listen-address={UP}", "--port=53",
            "--user=root", f"--pid-file={self.wd}/dnsmasq.pid",
            f"--address=/{UP_NAME}/{UP_ADDR}")

    def stop_stub(self) -> None:
        assert self.stub is not None
        self.up.stop(self.stub)  # type: ignore[arg-type]
        self.stub = None


def _resolv_conf(netns: str, text: str, made: list[pathlib.Path]) -> None:
    base = pathlib.Path("/etc/netns")
    if not base.exists():
        base.mkdir(mode=0o755)
        made.append(base)
    d = base / netns
    d.mkdir(mode=0o755)
    made.append(d)
    (d / "resolv.conf").write_text(text)


def _unmake(made: list[pathlib.Path]) -> None:
    for p in reversed(made):  # deepest first; /etc/netns only if we created it and it is empty
        with contextlib.suppress(OSError):
            if p.name != "netns":
                shutil.rmtree(p)
            else:
                p.rmdir()


@pytest.fixture(scope="module")
def dl() -> Iterator[DnsLab]:
    why = _missing()
    if why:
        pytest.fail("lab DNS tests cannot run: " + "; ".join(why), pytrace=False)
    made: list[pathlib.Path] = []
    try:
        with Lab() as lab:
            sw = lab.switch()
            hosts = [lab.host(f"d{i + 1}") for i in range(N)]
            up = lab.host("dup")
            for h, ul in zip(hosts, UL, strict=True):
                lab.connect(h, sw, f"{ul}/24")
            lab.connect(up, sw, f"{UP}/24")
            for i, h in enumerate(hosts):
                _resolv_conf(h.netns, f"nameserver {OV[i]}\nnameserver {UP}\n"
                             "options timeout:1 attempts:2\n", made)
            wd = workdir()
            d = DnsLab(lab, hosts, [], up, wd)
            d.start_stub()
            d.routers = [Router(h, ["--ip", f"{OV[i]}/24", *([UL[0]] if i else [])], wd,
                                "dns lab password") for i, h in enumerate(hosts)]
            for r in d.routers:
                r.wait(established_with(N - 1), 30, "full mesh")
                r.wait(lambda st: st["dns"]["state"] == "serving", 10, "dns serving")
            yield d
    finally:
        _unmake(made)
        assert not any(p.exists() for p in made), "left /etc/netns entries behind"


# -- helpers ---------------------------------------------------------------------------------
@dataclass
class Dig:
    status: str
    flags: list[str]
    answers: list[str]


def dig(h: Host, server: str, name: str, *opts: str, qtype: str = "A") -> Dig:
    r = h.run("dig", "+tries=1", "+time=2", f"@{server}", name, qtype, *opts, check=False,
              timeout=15)
    m = re.search(r"status: (\w+)", r.stdout)
    f = re.search(r"flags: ([a-z ]*);", r.stdout)
    ans = re.findall(r"^\S+\s+\d+\s+IN\s+(?:A|AAAA)\s+(\S+)$", r.stdout, re.M)
    return Dig(m.group(1) if m else f"no answer: {r.stdout[-300:]} {r.stderr[-300:]}",
               f.group(1).split() if f else [], ans)


def sleeve(r: Router, *args: str) -> str:
    """The CLI on the router's host, through its API socket (changes need it)."""
    p = r.cli(*args, timeout=20)
    assert p.returncode == 0, f"sleeve {' '.join(args)} on {r.host.name}: {p.stderr.strip()}"
    return p.stdout


def until_everywhere(d: DnsLab, name: str, pred: object, skip: int | None = None,
                     timeout: float = WITHIN, opts: tuple[str, ...] = ()) -> list[float]:
    """Poll every router's DNS (from its own namespace) until ``pred(Dig)``; seconds each."""
    t0 = time.monotonic()
    took: dict[int, float] = {}
    last: dict[int, Dig] = {}
    while len(took) < N - (skip is not None) and time.monotonic() - t0 < timeout + 3:
        for i, h in enumerate(d.hosts):
            if i == skip or i in took:
                continue
            last[i] = r = dig(h, OV[i], name, *opts)
            if pred(r):  # type: ignore[operator]
                took[i] = time.monotonic() - t0
    missing = [i for i in range(N) if i != skip and i not in took]
    assert not missing, f"{name}: not on {missing} in {timeout + 3}s: {last}"
    return [took[i] for i in sorted(took)]


# -- the tests -------------------------------------------------------------------------------
def test_a_name_added_on_one_router_resolves_on_the_others_within_2s(dl: DnsLab) -> None:
    sleeve(dl.routers[0], "dns", "add", "web", "198.19.1.101", "--id", "c1")
    took = until_everywhere(dl, f"web.{DOMAIN}.",
                            lambda r: r.status == "NOERROR" and r.answers == ["198.19.1.101"],
                            skip=0)
    print(f"\nweb added on d1: resolved on d2, d3 after {[round(t, 2) for t in took]} s "
          "(includes one dig start-up per poll)")
    assert max(took) <= WITHIN, took
    for i, h in enumerate(dl.hosts):
        r = dig(h, OV[i], f"WEB.{DOMAIN}.")
        assert r.answers == ["198.19.1.101"] and "aa" in r.flags, r
        # glibc through the namespace's resolv.conf (the router is its first nameserver)
        for name in (f"web.{DOMAIN}", "web"):
            g = h.run("getent", "hosts", name, check=False, timeout=10)
            assert g.returncode == 0 and g.stdout.split()[0] == "198.19.1.101", (name, g)
    assert "web.sleeve.local." in sleeve(dl.routers[1], "status", "dns")


def test_three_addresses_come_first_a_third_of_the_time_each(dl: DnsLab) -> None:
    addrs = ["198.19.1.111", "198.19.1.112", "198.19.1.113"]
    for a in addrs:
        sleeve(dl.routers[1], "dns", "add", "lb", a)
    until_everywhere(dl, f"lb.{DOMAIN}.", lambda r: sorted(r.answers) == addrs)
    n = 300
    qfile = dl.wd / "lb.queries"
    qfile.write_text(f"@{OV[0]} lb.{DOMAIN}. A +short +tries=1 +time=2\n" * n)
    out = dl.hosts[0].run("dig", "-f", str(qfile), timeout=120).stdout.split()
    assert len(out) == 3 * n and set(out) == set(addrs), out[:12]
    first = [out[3 * i] for i in range(n)]
    counts = [first.count(a) for a in addrs]
    # H0: each address first with p = 1/3. Pearson's chi-square with 2 degrees of freedom
    # has P(X > x) = exp(-x/2) exactly, so the bound x = -2 ln(1e-4) = 18.42 fails a fair
    # shuffle 1 time in 10 000. No shuffle at all (always the same first) gives X = 600.
    e = n / 3
    chi2 = sum((c - e) ** 2 / e for c in counts)
    bound = -2 * math.log(1e-4)
    print(f"\n{n} queries: first-address counts {dict(zip(addrs, counts, strict=True))}, "
          f"chi2 {chi2:.2f} (bound {bound:.2f}, false failure 1e-4)")
    assert chi2 < bound, counts


def test_removed_names_are_nxdomain_everywhere_within_2s(dl: DnsLab) -> None:
    sleeve(dl.routers[1], "dns", "remove", "lb")
    sleeve(dl.routers[0], "dns", "remove", "web", "198.19.1.101")
    for name in (f"lb.{DOMAIN}.", f"web.{DOMAIN}."):
        took = until_everywhere(dl, name, lambda r: r.status == "NXDOMAIN")
        print(f"\n{name} removed: NXDOMAIN everywhere after {[round(t, 2) for t in took]} s")
        assert max(took) <= WITHIN, took


def test_a_restarted_router_brings_its_names_back(dl: DnsLab) -> None:
    r3 = dl.routers[2]
    sleeve(dl.routers[2], "dns", "add", "keep", "198.19.1.103", "--id", "c3")
    until_everywhere(dl, f"keep.{DOMAIN}.", lambda r: r.answers == ["198.19.1.103"])
    v0 = max(r["version"] for r in dl.routers[0].status()["dns"]["records"]
             if r["name"] == f"keep.{DOMAIN}.")
    r3.kill()  # SIGKILL, as a crash: the file was written when the name was added
    r3.start()
    r3.wait(established_with(N - 1), 30, "d3 back in the mesh")
    r3.wait(lambda st: st["dns"]["state"] == "serving", 10, "d3 serving")
    # the peers held d3's former record; the restored one must outbid it everywhere, and
    # stay (a router without persistence would tombstone it when gossip brings it back)
    dl.routers[0].wait(lambda st: any(r["name"] == f"keep.{DOMAIN}." and r["version"] > v0
                                      for r in st["dns"]["records"]), 10, "newer version")
    time.sleep(1.0)
    until_everywhere(dl, f"keep.{DOMAIN}.", lambda r: r.answers == ["198.19.1.103"])
    assert r3.status()["dns"]["restored"] == 1


def test_other_names_are_forwarded_to_the_upstream_servfail_when_it_is_down(dl: DnsLab) -> None:
    for i, h in enumerate(dl.hosts):
        r = dig(h, OV[i], f"{UP_NAME}.")
        assert r.status == "NOERROR" and r.answers == [UP_ADDR], r
        assert "ra" in r.flags  # (aa is dnsmasq's: its --address answers are authoritative)
    r = dig(dl.hosts[0], OV[1], f"{UP_NAME}.")  # a client on the overlay, another router
    assert r.answers == [UP_ADDR], r
    g = dl.hosts[1].run("getent", "hosts", UP_NAME, check=False, timeout=10)
    assert g.returncode == 0 and g.stdout.split()[0] == UP_ADDR, g
    st = dl.routers[1].status()["dns"]["server"]
    assert st["upstreams"] == [f"{UP}:53"], st  # itself (first in resolv.conf) left out
    assert st["stats"]["forward_answered"] >= 2, st
    dl.stop_stub()
    try:
        t = time.monotonic()
        r = dig(dl.hosts[0], OV[0], f"{UP_NAME}.")
        assert r.status == "SERVFAIL", r
        print(f"\nupstream down: SERVFAIL in {time.monotonic() - t:.2f} s (incl. dig start-up)")
        assert dig(dl.hosts[0], OV[0], f"keep.{DOMAIN}.").answers == ["198.19.1.103"]
    finally:
        dl.start_stub()
    ok = False
    for _ in range(20):  # bounded: dnsmasq takes a moment to bind
        if dig(dl.hosts[0], OV[0], f"{UP_NAME}.").answers == [UP_ADDR]:
            ok = True
            break
        time.sleep(0.2)
    assert ok, "forwarding did not come back with the upstream"


def test_an_answer_over_512_bytes_is_truncated_then_complete_over_tcp(dl: DnsLab) -> None:
    many = [f"198.19.2.{i + 1}" for i in range(40)]  # 40 A records: ~700 bytes of answer
    script = ("import urllib.parse,sys\n"
              "from sleeve.status.client import Endpoint, call\n"
              "for a in sys.argv[2:]:\n"
              "    q=urllib.parse.urlencode({'name':'big','address':a})\n"
              "    call(Endpoint(unix=sys.argv[1]), 'POST', '/dns/add?'+q)\n")
    dl.hosts[0].run(sys.executable, "-c", script, str(dl.routers[0].api_socket), *many,
                    timeout=60)
    until_everywhere(dl, f"big.{DOMAIN}.", lambda r: sorted(r.answers) == sorted(many),
                     opts=("+tcp",))
    r = dig(dl.hosts[2], OV[2], f"big.{DOMAIN}.", "+noedns", "+ignore")
    assert "tc" in r.flags and r.answers == [], r
    r = dig(dl.hosts[2], OV[2], f"big.{DOMAIN}.", "+tcp")
    assert sorted(r.answers) == sorted(many) and "tc" not in r.flags, r
    r = dig(dl.hosts[2], OV[2], f"big.{DOMAIN}.", "+noedns")  # dig retries over TCP itself
    assert sorted(r.answers) == sorted(many), r
    srv = dl.routers[2].status()["dns"]["server"]
    assert srv["stats"]["tcp_queries"] >= 2 and srv["resolver"]["stats"]["truncated"] >= 1
