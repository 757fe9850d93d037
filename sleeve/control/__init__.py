"""The control plane's connections: accept, dial, handshake, serve (``connections``),
and which addresses to dial when (``dialler``)."""
