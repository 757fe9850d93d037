"""Membership: a password decides who joins, --no-encryption only whether data is secret.

In one process (no root): two routers with the same password in clear text link up and
carry frames; a router with another password, or none (an open network), cannot join
them; the command line refuses an open network unless asked for twice (--open
--no-encryption) and status says which kind of network a router is in.
"""

from __future__ import annotations

import asyncio
import pathlib
import tempfile

import pytest

from sleeve.capture.memory import MemoryPort
from sleeve.cli import config_from_args, parse_args
from sleeve.config import Config, ConfigError, Target
from sleeve.crypto.noise import KeyPair
from sleeve.node import Node
from tests.test_node_inproc import BCAST, MAC_A, established, frame, wait_for

PW = b"p" * 32


def node(psk: bytes | None, encrypt: bool,
         peers: tuple[Target, ...] = ()) -> tuple[Node, MemoryPort]:
    port = MemoryPort()
    cfg = Config(psk=psk, encrypt=encrypt, port=0, listen="127.0.0.1", peers=peers, http=None,
                 state_dir=pathlib.Path(tempfile.mkdtemp(prefix="sleeve-test-")))
    return Node(cfg, port, static=KeyPair.generate()), port


def test_password_network_in_clear_text_admits_only_its_members() -> None:
    async def run() -> None:
        b, pb = node(PW, False)
        tb = asyncio.create_task(b.run())
        await wait_for(lambda: b.udp is not None)
        peers = (Target("127.0.0.1", b.udp_port),)
        a, pa = node(PW, False, peers)
        wrong, _ = node(b"q" * 32, False, peers)
        opened, _ = node(None, False, peers)
        tasks = [asyncio.create_task(n.run()) for n in (a, wrong, opened)]
        try:
            await wait_for(lambda: established(a) and established(b), 10)
            link = a.links[b.id]
            mark = b"clear-text-mark"
            assert mark in link.session.seal(mark)  # clear text on the wire ...
            pa.inject(frame(BCAST, MAC_A, b"members only"))
            await wait_for(lambda: len(pb.delivered) == 1)  # ... between authenticated members
            st = b.status()
            assert st["encryption"].startswith("DISABLED")
            assert st["membership"].startswith("password")
            # the wrong password and the open router keep failing; b never links them
            await wait_for(lambda: all(t.attempts >= 2 for n in (wrong, opened)
                                       for t in n.targets.values()), 15)
            assert set(b.links) == {a.id}
            assert not wrong.links and not opened.links
            assert opened.status()["membership"].startswith("OPEN")
        finally:
            for n in (a, b, wrong, opened):
                n.stop()
            await asyncio.wait_for(asyncio.gather(tb, *tasks), 10)

    asyncio.run(run())


def test_command_line_asks_twice_for_an_open_network(tmp_path: pathlib.Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLEEVE_PASSWORD", raising=False)
    pw = tmp_path / "pw"
    pw.write_text("secret")
    base = ["launch", "--state-dir", str(tmp_path)]
    with pytest.raises(ConfigError, match="--open --no-encryption"):
        config_from_args(parse_args([*base, "--no-encryption"]))
    with pytest.raises(ConfigError, match="needs --no-encryption"):
        config_from_args(parse_args([*base, "--open"]))
    with pytest.raises(ConfigError, match="a password is given"):
        config_from_args(parse_args([*base, "--open", "--no-encryption",
                                     "--password-file", str(pw)]))
    clear = config_from_args(parse_args([*base, "--no-encryption", "--password-file", str(pw)]))
    assert clear.psk is not None and not clear.encrypted and not clear.open
    sealed = config_from_args(parse_args([*base, "--password-file", str(pw)]))
    assert sealed.encrypted and sealed.psk == clear.psk
    opened = config_from_args(parse_args([*base, "--open", "--no-encryption"]))
    assert opened.open and not opened.encrypted
