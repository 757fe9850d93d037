"""Gossip channels over the mesh: the router that moves them (``router``) and an
in-process fabric for simulating many peers (``fabric``)."""
