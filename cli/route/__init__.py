"""The router: peek at each connection's ClientHello, pick a backend by name, relay.

Rooms, each owning one idea, arrows pointing down (nothing here imports the capture
engine)::

    command.py      `sniinspect route`: flags and TOML, signals, worker processes
    server.py       Router: listeners, accept, limits, reload, drain
    fastpath.py     the common TCP connection without a task: peek, route, dial, replay
    hellopeek.py    the routing name of a one-record hello, and its cache key for the log
    fastlog.py      fast-path log lines from a template, flushed every 50 ms
    connection.py   one TCP connection: PROXY in, peek, decide, dial, replay
    backends.py     which backend next: round robin, passing over ones that just failed
    httphost.py     plain-HTTP clients routed by their Host header
    relay.py        the byte relay once a connection is routed (buffer, then splice)
    tls_relay.py    a terminated connection: handshake and relay through ssl.SSLObject
    terminate.py    certificates by name: load, choose by SNI, one SSLContext per policy
    sockets.py      non-blocking waits, reads, writes and dials with deadlines
    quic.py         QUIC passthrough: UDP sessions routed by the SNI of their Initials
    quicsession.py  one QUIC connection as the router knows it without its keys
    udp.py          UDP sockets: listeners, connected backend sockets, GSO batches
    observe.py      the JSON connection log line and the Prometheus metrics
    config.py       TOML and flags into one validated RouterConfig
    tlsconfig.py    the [tls] table and a route's terminate/alpn/client_ca/backend_tls keys
    table.py        the route table, server name -> backends (pure, no sockets)
    proxyproto.py   PROXY protocol v1/v2 headers, built and parsed (sans-I/O)
"""
