"""The router: peek at each connection's ClientHello, pick a backend by name, relay.

Rooms, each owning one idea, arrows pointing down (nothing here imports the capture
engine)::

    command.py      `sniinspect route`: flags and TOML, signals, worker processes
    server.py       Router: listeners, accept, limits, reload, drain
    connection.py   one TCP connection: PROXY in, peek, decide, dial, replay
    backends.py     which backend next: round robin, passing over ones that just failed
    httphost.py     plain-HTTP clients routed by their Host header
    relay.py        the byte relay once a connection is routed (buffer, then splice)
    sockets.py      non-blocking waits, reads, writes and dials with deadlines
    observe.py      the JSON connection log line and the Prometheus metrics
    config.py       TOML and flags into one validated RouterConfig
    table.py        the route table, server name -> backends (pure, no sockets)
    proxyproto.py   PROXY protocol v1/v2 headers, built and parsed (sans-I/O)
"""
