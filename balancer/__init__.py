"""trade-balancer's reference balancer, ``lb``.

Pure protocol layers (url, handshake, frames, polygon, router) take bytes and
return events or bytes; transport, pipes, supervisor, session and cli do the I/O.
"""
