"""``simulate``: a local Polygon-compatible TLS websocket feed with faults and a ledger."""
