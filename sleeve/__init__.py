"""sleeve: an encrypted layer-2 overlay router."""

__version__ = "0.1.0"
