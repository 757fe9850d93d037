"""Shared test set-up. Lab tests build namespaces and must run one at a time (2 cores)."""

from __future__ import annotations

import compileall
import logging
import pathlib

import pytest

import sleeve

logging.getLogger("sleeve.lab").setLevel(logging.INFO)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Lab routers run from this tree: compile its bytecode once, as an install would, so
    that each router start does not compile ~130 modules again (0.24 s of CPU each where
    PYTHONDONTWRITEBYTECODE is set: bench/results/scale/README.md, fifth pass)."""
    compileall.compile_dir(pathlib.Path(sleeve.__file__).parent, quiet=2)
