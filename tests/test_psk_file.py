"""``sleeve psk`` and ``launch --psk-file``: the network key derived once, not at every start.

Issue 23: the Argon2id derivation (64 MiB) ran at every router start; 50 starting at once on
2 cores spent seconds in it. A PSK file must give exactly the key the password gives (so
such routers join the same network), refuse what is not a PSK (a ``sleeve keygen`` secret
looks alike), never echo the file's content, and never be combined with a password.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

import pytest

from sleeve.cli import build_parser, config_from_args
from sleeve.config import ConfigError
from sleeve.crypto.kdf import PSK_TEXT_PREFIX, format_psk, parse_psk, psk_from_password
from tests.test_cli_errors import one_line_error

SLEEVE = [sys.executable, "-m", "sleeve"]
PASSWORD = "a network password"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SLEEVE_PASSWORD"}


def _launch_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["launch", *argv])


@pytest.fixture
def files(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    pw = tmp_path / "password"
    pw.write_text(PASSWORD + "\n")
    r = subprocess.run([*SLEEVE, "psk", "--password-file", str(pw)], capture_output=True,
                       text=True, env=_env(), timeout=30)
    assert r.returncode == 0, r.stderr
    psk = tmp_path / "psk"
    psk.write_text(r.stdout)
    psk.chmod(0o600)
    return pw, psk


def test_sleeve_psk_prints_the_key_the_password_derives(
        files: tuple[pathlib.Path, pathlib.Path]) -> None:
    _, psk = files
    text = psk.read_text()
    assert text.startswith(PSK_TEXT_PREFIX) and text.endswith("\n")
    assert parse_psk(text) == psk_from_password(PASSWORD.encode())
    assert PASSWORD not in text


def test_launch_with_the_psk_file_has_the_password_s_key(
        files: tuple[pathlib.Path, pathlib.Path], monkeypatch: pytest.MonkeyPatch) -> None:
    pw, psk = files
    monkeypatch.delenv("SLEEVE_PASSWORD", raising=False)
    by_password = config_from_args(_launch_args("--password-file", str(pw)))
    by_psk = config_from_args(_launch_args("--psk-file", str(psk)))
    assert by_psk.psk == by_password.psk == psk_from_password(PASSWORD.encode())
    assert by_psk.encrypted and not by_psk.open


def test_the_psk_file_skips_the_password_derivation(
        files: tuple[pathlib.Path, pathlib.Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, psk = files
    monkeypatch.delenv("SLEEVE_PASSWORD", raising=False)

    def no_kdf(_: bytes) -> bytes:
        raise AssertionError("Argon2id ran though a PSK file was given")

    monkeypatch.setattr("sleeve.crypto.kdf.psk_from_password", no_kdf)
    assert config_from_args(_launch_args("--psk-file", str(psk))).psk is not None


@pytest.mark.parametrize("extra", [["--password-file", "PW"], ["--open", "--no-encryption"],
                                   ["ENV"]])
def test_a_psk_file_with_a_password_or_open_is_refused(
        files: tuple[pathlib.Path, pathlib.Path], monkeypatch: pytest.MonkeyPatch,
        extra: list[str]) -> None:
    pw, psk = files
    monkeypatch.delenv("SLEEVE_PASSWORD", raising=False)
    if extra == ["ENV"]:
        monkeypatch.setenv("SLEEVE_PASSWORD", PASSWORD)
        extra = []
    args = _launch_args("--psk-file", str(psk), *[str(pw) if a == "PW" else a for a in extra])
    with pytest.raises(ConfigError, match="--psk-file replaces the password"):
        config_from_args(args)


def test_bad_psk_files_are_one_clear_line_without_their_content(
        tmp_path: pathlib.Path) -> None:
    secret = subprocess.run([*SLEEVE, "keygen"], capture_output=True, text=True,
                            timeout=30).stdout.strip()
    key = format_psk(bytes(range(32)))
    cases = {"keygen": (secret, "not a sleeve PSK"),
             "short": (key[:-4], "not 32 bytes"),
             "junk": (PSK_TEXT_PREFIX + "!!!not*base64!!!", "not valid base64"),
             "empty": ("", "not a sleeve PSK")}
    for name, (text, needle) in cases.items():
        f = tmp_path / name
        f.write_text(text)
        f.chmod(0o600)
        r = subprocess.run([*SLEEVE, "launch", "--psk-file", str(f)], capture_output=True,
                           text=True, env=_env(), timeout=30)
        line = one_line_error(r)
        assert r.returncode == 2 and needle in line, (name, line)
        shown = text[len(PSK_TEXT_PREFIX):] if text.startswith(PSK_TEXT_PREFIX) else text
        if shown:
            assert shown not in line, (name, line)
    r = subprocess.run([*SLEEVE, "launch", "--psk-file", str(tmp_path / "none")],
                       capture_output=True, text=True, env=_env(), timeout=30)
    assert "cannot read PSK file" in one_line_error(r)


def test_sleeve_psk_without_a_password_is_one_clear_line() -> None:
    r = subprocess.run([*SLEEVE, "psk"], capture_output=True, text=True, env=_env(),
                       timeout=30)
    line = one_line_error(r)
    assert r.returncode == 2 and "no password" in line
    assert "--psk-file" not in line and "--open" not in line  # not options of `sleeve psk`


def test_a_psk_file_others_may_read_is_refused(files: tuple[pathlib.Path, pathlib.Path]
                                               ) -> None:
    """It grants what the password grants: `sleeve psk > F` under umask 022 makes it 0644."""
    _, psk = files
    for mode in (0o644, 0o640, 0o604):
        psk.chmod(mode)
        r = subprocess.run([*SLEEVE, "launch", "--psk-file", str(psk)], capture_output=True,
                           text=True, env=_env(), timeout=30)
        line = one_line_error(r)
        assert r.returncode == 2 and f"open to others (mode {mode:o})" in line, line
        assert psk.read_text().strip()[len(PSK_TEXT_PREFIX):] not in line


def test_format_and_parse_round_trip_and_are_strict() -> None:
    for psk in (bytes(32), bytes(range(32)), b"\xff" * 32):
        assert parse_psk(format_psk(psk) + "\n") == psk
    with pytest.raises(ValueError):
        format_psk(bytes(31))
    text = format_psk(bytes(range(32)))
    with pytest.raises(ValueError):
        parse_psk(text + "A")  # not canonical: 33 bytes, or trailing bits
