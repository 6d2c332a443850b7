"""The control socket: protocol (pure), server (daemon side), client (fleetctl side)."""
