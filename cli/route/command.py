"""The ``sniinspect route`` command: flags and TOML into a running router, signals, workers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import click

from sniinspect.route.config import REASONS, ConfigError, RouterConfig, load_config

__all__ = ["route"]

log = logging.getLogger("sniinspect.route")

_EPILOG = """\b
Examples:
  # Two names, a wildcard and a fallback, on IPv4 and IPv6:
  sniinspect route --listen 0.0.0.0:443 --listen [::]:443 \\
      --route example.com=10.0.0.1:443,10.0.0.2:443 \\
      --route '*.example.org=[2001:db8::5]:443' \\
      --route '~^api-[0-9]+\\.example\\.net$=unix:/run/api.sock' \\
      --default 10.0.0.9:443

\b
  # PROXY protocol v2 to one backend, PROXY accepted from a load balancer:
  sniinspect route --listen '0.0.0.0:443;accept_proxy' \\
      --route 'app.example.com=10.0.0.3:443;proxy_protocol=2'

\b
  # What to do without a usable name (default, alert, close or HOST:PORT):
  sniinspect route --config router.toml --on unknown_name=alert --on not_tls=close

\b
  # Check a configuration, warning about rules that can never match, and
  # (with TLS termination) which certificate serves which name:
  sniinspect route --config router.toml --check-config

\b
Names: 'example.com' exact; '*.example.com' one more label; '.example.com' the
name and every subdomain; '~regex' anchored regular expression. Precedence:
exact, most specific wildcard, regexes in order, then --default.
[::]:PORT listens on IPv6 only; add 0.0.0.0:PORT for IPv4.
Signals: SIGHUP reloads the configuration (connections in flight stay),
SIGTERM/SIGINT stop accepting and drain for up to --drain-timeout seconds.
One JSON line per connection goes to --log-file (default stderr)."""


@click.command(
    "route",
    epilog=_EPILOG,
    context_settings={"max_content_width": 100, "help_option_names": ["-h", "--help"]},
)
@click.option(
    "--listen",
    "listen",
    multiple=True,
    metavar="ADDR:PORT[;accept_proxy][;http_host]",
    help="Address to accept on (repeatable). IPv6 as [::]:443.",
)
@click.option(
    "--listen-quic",
    "listen_quic",
    multiple=True,
    metavar="ADDR:PORT",
    help="UDP address for QUIC (HTTP/3) passthrough by SNI (repeatable); with or"
    " without --listen. Same routes; a route's quic_backends, else its backends over UDP.",
)
@click.option(
    "--quic-idle-timeout",
    type=float,
    help="Seconds of silence that end a QUIC session, never less than the client's"
    " max_idle_timeout [30].",
)
@click.option(
    "--route",
    "routes",
    multiple=True,
    metavar="NAME=HOST:PORT[,HOST:PORT...][;proxy_protocol=N]",
    help="Send NAME to these backends, round robin (repeatable). unix:/path works.",
)
@click.option(
    "--default",
    "default",
    metavar="HOST:PORT[,...]",
    help="Fallback backend(s) for names no route matches.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML file with the same options; flags override it.",
)
@click.option("--check-config", is_flag=True, help="Validate, print warnings, and exit.")
@click.option(
    "--on",
    "actions",
    multiple=True,
    metavar="REASON=ACTION",
    help=f"Action per reason ({', '.join(REASONS)}): default, alert, close or HOST:PORT.",
)
@click.option("--hello-timeout", type=float, help="Seconds to wait for the whole ClientHello [10].")
@click.option("--max-hello-size", type=int, help="Largest ClientHello in bytes [16384, max 65536].")
@click.option("--connect-timeout", type=float, help="Seconds per backend connect attempt [5].")
@click.option(
    "--idle-timeout", type=float, help="Close after this many idle seconds; 0 never [600]."
)
@click.option(
    "--max-connections", type=int, help="Pause accepting at this many connections [10000]."
)
@click.option("--max-pending", type=int, help="Most connections waiting for a hello [1000].")
@click.option(
    "--max-pending-per-client", type=int, help="... of them from one client address [64]."
)
@click.option("--drain-timeout", type=float, help="Seconds to drain on SIGTERM [30].")
@click.option(
    "--default-proxy-protocol",
    type=click.Choice(["0", "1", "2"]),
    help="PROXY protocol version towards the default backend [0].",
)
@click.option(
    "--relay",
    type=click.Choice(["auto", "splice", "copy"]),
    help="How bytes are moved: splice (Linux zero-copy), copy, or auto: copy until "
    "bulk data flows, then splice while the receiver keeps up and copy while it falls "
    "behind (a client decrypting a download takes copied data faster) [auto].",
)
@click.option("--workers", type=int, help="Processes sharing the ports (SO_REUSEPORT) [1].")
@click.option("--metrics", metavar="ADDR:PORT", help="Serve Prometheus metrics here.")
@click.option("--log-file", metavar="PATH", help="Connection log (JSON lines); '-' = stderr.")
@click.option("--no-connection-log", is_flag=True, help="Do not write per-connection lines.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Level of operational messages.",
)
def route(**opts: Any) -> None:
    """Route TLS connections by the server name in their ClientHello, without decrypting.

    The router reads the ClientHello however it is split (TCP segments, TLS records),
    connects to the backend for its name, replays every byte verbatim and relays both
    ways (zero-copy splice on Linux). It never dials an address that is not configured.
    """
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, opts["log_level"].upper()),
        format="%(asctime)s sniinspect[%(process)d] %(levelname)s %(message)s",
    )
    loader = _make_loader(opts)
    try:
        config = loader()
    except ConfigError as exc:
        if opts["config_path"]:
            raise click.ClickException(str(exc)) from None
        raise click.UsageError(str(exc)) from None

    certificates = None
    warnings = config.warnings()
    if config.terminates:
        # Every certificate is loaded now: at start one that cannot be stops the router
        # with a line naming the file, rather than failing handshakes later.
        import datetime as dt

        from sniinspect.route.terminate import load_store

        result = load_store(config.tls, config.table.routes)
        if result.problems:
            raise click.ClickException(result.problems[0][1])
        certificates = result.store
        lines, uncovered = certificates.coverage(config.table.routes)
        warnings += result.notes + uncovered
        warnings += certificates.warnings(dt.datetime.now(dt.timezone.utc))
        if opts["check_config"]:
            for line in lines:
                click.echo(line)
    if opts["check_config"]:
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
        held = f", {len(certificates.all_certificates())} certificate(s)" if certificates else ""
        quic = f", {len(config.quic_listeners)} QUIC listener(s)" if config.quic_listeners else ""
        click.echo(
            f"configuration OK: {len(config.listeners)} listener(s){quic},"
            f" {len(config.table.routes)} route(s){held}, {len(warnings)} warning(s)"
        )
        return
    for warning in warnings[len(config.warnings()) :]:
        log.warning("%s", warning)
    ports = [lst.port for lst in config.listeners] + [port for _, port in config.quic_listeners]
    if config.workers > 1 and 0 in ports:
        raise click.UsageError("--workers > 1 needs fixed ports (not port 0)")
    _raise_fd_limit(config)
    if config.workers > 1:
        code = _supervise(config, loader, certificates)
    else:
        code = _run_worker(
            config, loader, reuse_port=False, serve_metrics=True, certificates=certificates
        )
    sys.exit(code)


def _make_loader(opts: dict[str, Any]) -> Callable[[], RouterConfig]:
    overrides: dict[str, Any] = {
        "listen": list(opts["listen"]),
        "listen_quic": list(opts.get("listen_quic") or ()),
        "route": list(opts["routes"]),
    }
    for key in (
        "default",
        "hello_timeout",
        "max_hello_size",
        "connect_timeout",
        "idle_timeout",
        "max_connections",
        "max_pending",
        "max_pending_per_client",
        "drain_timeout",
        "relay",
        "workers",
        "metrics",
        "log_file",
        "quic_idle_timeout",
    ):
        if opts.get(key) is not None:
            overrides[key] = opts[key]
    if opts.get("default_proxy_protocol") is not None:
        overrides["default_proxy_protocol"] = int(opts["default_proxy_protocol"])
    if opts.get("no_connection_log"):
        overrides["connection_log"] = False
    actions: dict[str, str] = {}
    for text in opts["actions"]:
        reason, sep, action = text.partition("=")
        if not sep:
            raise click.UsageError(f"--on {text!r}: expected REASON=ACTION")
        actions[reason.strip()] = action.strip()
    if actions:
        overrides["actions"] = actions
    path = opts["config_path"]
    return lambda: load_config(path, overrides)


def _raise_fd_limit(config: RouterConfig) -> None:
    # Each relayed connection holds two sockets and, with splice, four pipe ends.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    needed = config.max_connections * 6 + 64
    if needed > soft:
        log.warning(
            "max_connections=%d may need %d file descriptors; the limit is %d",
            config.max_connections,
            needed,
            soft,
        )


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _run_worker(
    config: RouterConfig,
    loader: Callable[[], RouterConfig],
    *,
    reuse_port: bool,
    serve_metrics: bool,
    worker: int | None = None,
    certificates: Any = None,
) -> int:
    """Run one router in this process until SIGTERM/SIGINT; return the exit code."""
    from sniinspect.route.server import Router

    loop = _new_loop()
    asyncio.set_event_loop(loop)
    # QUIC: one reader of each UDP socket, worker 0, so that every datagram of a
    # connection reaches the process holding its session, also after the client's
    # address changes (SO_REUSEPORT would spread datagrams by address).
    router = Router(
        config,
        reuse_port=reuse_port,
        worker=worker,
        certificates=certificates,
        quic=worker in (None, 0),
    )
    stop = asyncio.Event()

    def reload() -> None:
        try:
            new = loader()
            router.reload(new)
        except (ConfigError, OSError) as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)

    async def main() -> int:
        try:
            await router.start()
        except (OSError, ConfigError) as exc:
            log.error("%s", exc)
            return 1
        if serve_metrics and config.metrics is not None:
            from prometheus_client import start_http_server

            host, port = config.metrics
            try:
                start_http_server(port, host, registry=router.metrics.registry)
            except OSError as exc:
                log.error("cannot serve metrics on %s:%d: %s", host, port, exc.strerror)
                await router.stop(0)
                return 1
        loop.add_signal_handler(signal.SIGHUP, reload)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        addresses = [f"{h}:{p} (tcp)" for h, p in router.addresses]
        addresses += [f"{h}:{p} (quic)" for h, p in router.quic_addresses]
        log.info("listening on %s", ", ".join(addresses))
        # Everything made so far (modules, configuration, listeners) lives as long as
        # the process: keep it out of the cyclic collector's scans, whose full passes
        # otherwise show up as latency spikes on connections.
        gc.freeze()
        await stop.wait()
        log.info("stopping: draining %d connection(s)", router.active_connections)
        await router.stop()
        return 0

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def _supervise(
    config: RouterConfig, loader: Callable[[], RouterConfig], certificates: Any = None
) -> int:
    """Fork ``workers`` routers sharing the ports; forward signals; restart crashed ones."""
    metrics_dir = None
    if config.metrics is not None:
        # prometheus_client picks its multiprocess mode at import: set it up first.
        metrics_dir = tempfile.mkdtemp(prefix="sniinspect-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    children: dict[int, int] = {}
    stopping = False

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = _run_worker(
                    config,
                    loader,
                    reuse_port=True,
                    serve_metrics=False,
                    worker=slot,
                    certificates=certificates,
                )
            except BaseException:
                log.exception("worker %d failed", slot)
            finally:
                os._exit(code)
        children[pid] = slot

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if signum == signal.SIGHUP:
            try:
                loader()
            except ConfigError as exc:
                log.error("reload refused, configuration invalid: %s", exc)
                return
        else:
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    for slot in range(config.workers):
        spawn(slot)
    if config.metrics is not None:
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        try:
            start_http_server(config.metrics[1], config.metrics[0], registry=registry)
        except OSError as exc:
            log.error("cannot serve metrics: %s", exc.strerror)
    log.info("started %d workers", config.workers)
    code = 0
    restarts: list[float] = []
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        slot = children.pop(pid, -1)
        if slot < 0:
            continue
        if metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
        exit_code = os.waitstatus_to_exitcode(status)
        if stopping:
            code = code or (exit_code if exit_code > 0 else 0)
            continue
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < 10] + [now]
        if len(restarts) > 5 * config.workers:
            log.error("workers keep failing; stopping")
            stopping = True
            forward(signal.SIGTERM, None)
            code = 1
            continue
        log.error("worker %d (pid %d) exited with %d; restarting", slot, pid, exit_code)
        spawn(slot)
    if metrics_dir is not None:
        import shutil

        shutil.rmtree(metrics_dir, ignore_errors=True)
    return code
