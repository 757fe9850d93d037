"""``python -m tests.evil_router launch ...``: a real router that also forges (tests only).

It is ``sleeve launch`` with one change: every timer tick (0.25 s) it runs
``tests.evil.forge_round``, once the file ``EVIL_TRIGGER`` exists (the test creates it
when the victims have talked), for at most ``EVIL_ROUNDS`` rounds (default 80, ~20 s).
It relays honest traffic like any router, so the victims' traffic through it must keep
working while its forgeries are dropped and counted. What it sent is logged once every 40 rounds.
"""

from __future__ import annotations

import logging
import os
import sys

from sleeve import cli
from sleeve.node import Node
from tests.evil import forge_round

log = logging.getLogger("sleeve")


def main() -> int:
    rounds = int(os.environ.get("EVIL_ROUNDS", "80"))
    trigger = os.environ["EVIL_TRIGGER"]
    honest = Node.on_timer
    state = {"done": 0}
    sent: dict[str, int] = {}

    def on_timer(self: Node, now: float) -> None:
        honest(self, now)
        if state["done"] >= rounds or not os.path.exists(trigger):
            return
        forge_round(self, sent)
        state["done"] += 1
        # the first round too: an idle router ticks at 1 Hz (sleeve.pacing), and a ping
        # window may end before round 40 (a CI run found no log line, "did not forge")
        if state["done"] % 40 in (0, 1) or state["done"] == rounds:
            log.warning("EVIL round %d: sent %s", state["done"], sent)

    Node.on_timer = on_timer  # type: ignore[method-assign]
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
