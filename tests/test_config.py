"""Configuration precedence (flags > SLEEVE_* env > TOML file > defaults) and --resume."""

from __future__ import annotations

import asyncio
import json
import pathlib

import pytest

from sleeve.capture.memory import MemoryPort
from sleeve.cli import config_from_args, parse_args
from sleeve.config import Config, ConfigError, Target, parse_target
from sleeve.configfile import layered_defaults
from sleeve.crypto.noise import KeyPair
from sleeve.node import Node
from tests.test_node_inproc import wait_for


def test_precedence(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "sleeve.toml"
    f.write_text('port = 7000\nmtu = 1300\nnickname = "file"\npeers = ["198.18.0.9"]\n'
                 'no-encryption = true\nopen = true\n')
    monkeypatch.setenv("SLEEVE_MTU", "1280")
    monkeypatch.setenv("SLEEVE_STATE_DIR", str(tmp_path))
    args = parse_args(["launch", "--config", str(f), "--nickname", "flag"])
    assert args.port == 7000  # file
    assert args.mtu == 1280  # env beats file
    assert args.nickname == "flag"  # flag beats both
    assert args.peers == ["198.18.0.9"]
    cfg = config_from_args(args)
    assert cfg.psk is None and cfg.peers == (Target("198.18.0.9", 7000),)


def test_docker_options_from_file_and_env(tmp_path: pathlib.Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "sleeve.toml"
    f.write_text('no-encryption = true\nopen = true\ndocker-plugin = true\n'
                 'docker-plugin-socket = "/run/x/sleeve.sock"\n'
                 'docker_api = "/run/d.sock"\n')
    monkeypatch.setenv("SLEEVE_STATE_DIR", str(tmp_path))
    cfg = config_from_args(parse_args(["launch", "--config", str(f)]))
    assert cfg.docker_plugin and cfg.docker_plugin_socket == "/run/x/sleeve.sock"
    assert cfg.docker_api == "/run/d.sock"
    monkeypatch.setenv("SLEEVE_DOCKER_API", "")  # env beats the file: no name lookups
    monkeypatch.setenv("SLEEVE_DOCKER_PLUGIN", "off")
    cfg = config_from_args(parse_args(["launch", "--config", str(f)]))
    assert cfg.docker_api == "" and not cfg.docker_plugin
    cfg = config_from_args(parse_args(["launch", "--config", str(f), "--docker-api", "/a"]))
    assert cfg.docker_api == "/a"


def test_bad_config_file(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("port = 'x'\n")
    with pytest.raises(ConfigError, match="wrong type"):
        layered_defaults(str(f), {})
    f.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="unknown option"):
        layered_defaults(str(f), {})
    with pytest.raises(ConfigError, match="cannot read"):
        layered_defaults(str(tmp_path / "missing.toml"), {})


def test_parse_target() -> None:
    assert parse_target("198.18.0.1") == Target("198.18.0.1", 6783)
    assert parse_target("198.18.0.1:7000") == Target("198.18.0.1", 7000)
    assert parse_target("[fd00::1]:7000") == Target("fd00::1", 7000)
    for bad in ("", "h:x", "h:0", "[fd00::1"):
        with pytest.raises(ConfigError):
            parse_target(bad)


def test_resume_rejoins_remembered_peers(tmp_path: pathlib.Path) -> None:
    async def body() -> None:
        cfg = Config(psk=b"k" * 32, port=0, listen="127.0.0.1", http=None, state_dir=tmp_path,
                     peers=(Target("127.0.0.1", 1),))
        n = Node(cfg, MemoryPort(), static=KeyPair.generate())
        t = asyncio.create_task(n.run())
        await wait_for(lambda: (tmp_path / "peers.json").exists())
        n.stop()
        await asyncio.wait_for(t, 5)
        assert json.loads((tmp_path / "peers.json").read_text()) == {"peers": ["127.0.0.1:1"]}
        again = Node(Config(psk=b"k" * 32, port=0, http=None, state_dir=tmp_path, resume=True),
                     MemoryPort(), static=KeyPair.generate())
        assert Target("127.0.0.1", 1) in again.targets
        fresh = Node(Config(psk=b"k" * 32, port=0, http=None, state_dir=tmp_path),
                     MemoryPort(), static=KeyPair.generate())
        assert not fresh.targets

    asyncio.run(body())
