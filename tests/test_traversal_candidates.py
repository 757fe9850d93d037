"""LAN candidate messages (traversal.candidates): what is accepted, what is dropped."""

from __future__ import annotations

from typing import Any

import pytest

from sleeve.traversal import candidates


def test_round_trip() -> None:
    eps = [("198.18.51.2", 6783), ("fd00::2", 6783)]
    assert candidates.decode(candidates.encode(eps)) == eps


@pytest.mark.parametrize("bad", [
    {}, {"eps": "x"}, {"eps": [["198.18.51.2"]]}, {"eps": [["198.18.51.2", 0]]},
    {"eps": [["198.18.51.2", 65536]]}, {"eps": [["198.18.51.2", True]]},
    {"eps": [["host.example", 6783]]}, {"eps": [["127.0.0.1", 6783]]},
    {"eps": [["0.0.0.0", 6783]]}, {"eps": [["224.0.0.1", 6783]]},
    {"eps": [["fe80::1", 6783]]}, {"eps": [[b"198.18.51.2", 6783]]},
    {"eps": [["198.18.51.2", 6783]] * (candidates.MAX_CANDS + 1)},
])
def test_malformed_is_refused(bad: dict[str, Any]) -> None:
    assert candidates.decode(bad) is None


def test_local_candidate_from_the_socket_name() -> None:
    assert candidates.local_candidate(("198.18.51.2", 40000), 6783) == [("198.18.51.2", 6783)]
    assert candidates.local_candidate(("fd00::2", 40000, 0, 0), 6783) == [("fd00::2", 6783)]
    assert candidates.local_candidate(None, 6783) == []  # a relayed mediator link
    assert candidates.local_candidate(("0.0.0.0", 1), 6783) == []
