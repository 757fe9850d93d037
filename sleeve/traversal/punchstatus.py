"""Words for ``status``: what one punching attempt tried (``traversal.punch``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sleeve.crypto.keys import format_peer_id

if TYPE_CHECKING:  # only for annotations: punch imports this module
    from sleeve.traversal.attempt import Attempt
    from sleeve.traversal.punch import Traversal


def peers(tr: Traversal, now: float) -> list[dict[str, Any]]:
    """Per peer that needed punching: what was tried, how it ended, the next attempt."""
    out = []
    for peer, rec in sorted(tr.peers.items()):
        link = tr.links.get(peer)
        if link is not None and (not link.virtual or link.endpoint_learnt):
            state = "direct"
        elif rec.current is not None:
            state = "punching"
        elif rec.attempts:
            state = "relayed"
        else:
            continue  # never needed punching (dialled directly)
        starter = peer > tr.me
        out.append({
            "peer": format_peer_id(peer), "state": state,
            "attempts": rec.attempts, "successes": rec.successes,
            "failures_in_a_row": rec.failures,
            "tried": [{"attempt": a.n, "ago_s": round(now - a.started, 1),
                       "plan": a.plan.describe(), "result": a.result or "punching",
                       "prediction": predicted(a), "spray": sprayed(a),
                       "hops": a.verdict.status() if a.verdict else None,
                       "limit": limit(a)}
                      for a in rec.tried],
            "next_attempt_in_s": (round(max(0.0, rec.next_at - now), 1)
                                  if starter and state == "relayed" else None),
            "next_attempt_by": "us" if starter else "the peer",
        })
    return out


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
