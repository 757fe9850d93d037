"""NAT traversal: control connections relayed through a neighbour (``relay``) and the
hole punching that turns them into direct UDP links (``punch``)."""
