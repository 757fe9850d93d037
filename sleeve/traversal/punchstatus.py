"""Words for ``status``: what one punching attempt tried (``traversal.punch``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: punch imports this module
    from sleeve.traversal.punch import Attempt


def predicted(att: Attempt) -> str | None:
    """What an attempt tried by port prediction, in words (None: nothing)."""
    if att.pred is not None:
        return f"probed the peer's predicted {att.pred.describe()}"
    if att.ours is not None:
        return f"announced ours: {att.ours.describe()}"
    return None


def sprayed(att: Attempt) -> str | None:
    """What an attempt tried by spraying, in words (None: nothing)."""
    if att.sprayer is not None:
        return att.sprayer.describe()
    if att.spray_role == "open":
        return f"opened {att.spray_sockets} spray sockets (our NAT draws random ports)"
    return None


def limit(att: Attempt) -> str | None:
    """Why this attempt can hardly succeed whatever the timing (None: nothing known)."""
    if att.ours is not None and att.pred is not None:
        # Each side's NAT gives every new flow a new port: the crosser's datagrams to
        # our predicted ports leave its NAT from ports of its own that no mapping of
        # the opener expects (it opened toward the peer's old port), and vice versa.
        return ("both NATs change ports: each side's crossing leaves from a new port the "
                "other's mapping does not expect; the mesh relays")
    return None
