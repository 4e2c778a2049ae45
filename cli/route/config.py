"""The router's configuration: TOML file and command-line flags into one validated object.

A TOML file and the flags give the same options under the same names (``hello_timeout``
in the file is ``--hello-timeout`` on the command line). Flags override scalar keys of
the file; ``--listen`` and ``--route`` add to the file's listeners and routes. Every
error names the key (``route[2].backends[0]``) and says what was expected::

    listen = ["0.0.0.0:443", "[::]:443"]        # or [[listener]] tables, below
    default = "127.0.0.1:8443"                  # fallback backend(s), optional
    hello_timeout = 10                          # seconds to wait for a whole ClientHello
    max_hello_size = 16384                      # bytes; at most 65536
    connect_timeout = 5                         # per backend address
    idle_timeout = 600                          # seconds without a byte either way; 0 = never
    max_connections = 10000                     # accepting pauses at this many
    max_pending = 1000                          # still waiting for their hello, in all
    max_pending_per_client = 64                 # ... from one client address
    drain_timeout = 30                          # SIGTERM: wait this long for connections

    [actions]                                   # per reason: "default", "alert", "close"
    unknown_name = "alert"                      # or a backend list "HOST:PORT,HOST:PORT"
    not_tls = "close"

    [[listener]]
    address = "[::]:8443"
    accept_proxy = true                         # a PROXY v1/v2 header must come first
    http_host = true                            # route plain HTTP by its Host header

    [[route]]
    names = ["example.com", "*.example.com", ".example.org", "~^api-[0-9]+\\.example\\.net$"]
    backends = ["10.0.0.1:443", "[2001:db8::1]:443", "unix:/run/web.sock"]
    proxy_protocol = 2                          # 0 (none), 1 or 2 towards these backends

TLS termination (``[tls]``, and ``terminate``, ``alpn``, ``client_ca``, ``client_cert``,
``backend_tls`` in a route) is described in `sniinspect.route.tlsconfig`; relative paths
there are relative to the configuration file.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sniinspect.route.table import (
    Backend,
    ConfigError,
    Route,
    RouteTable,
    parse_address,
    parse_backends,
    parse_rule,
)
from sniinspect.route.tlsconfig import (
    ROUTE_TLS_KEYS,
    TLSSettings,
    parse_route_tls,
    parse_tls_table,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the backport
    try:
        import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]
    except ImportError:
        tomllib = None

__all__ = [
    "ALERTS",
    "REASONS",
    "Action",
    "ConfigError",
    "ListenerConfig",
    "RouterConfig",
    "build_config",
    "load_config",
    "load_toml",
    "parse_listen",
    "parse_route",
]

# Why a connection could not be routed by name; each has its own configurable action.
REASONS = ("no_sni", "unknown_name", "not_tls", "malformed", "too_large", "timeout")

# The alert that fits each reason (RFC 8446 §6.2 AlertDescription): an unknown or
# missing name is unrecognized_name (RFC 6066 §3), bytes that do not decode are
# decode_error, and a hello we gave up on (too large, too slow) is handshake_failure.
ALERTS = {
    "no_sni": 112,
    "unknown_name": 112,
    "not_tls": 50,
    "malformed": 50,
    "too_large": 40,
    "timeout": 40,
}

MAX_HELLO_LIMIT = 64 * 1024  # the largest hello size an operator may allow
MIN_HELLO_LIMIT = 512  # anything smaller turns away ordinary browsers


@dataclass(frozen=True, slots=True)
class Action:
    """What to do with a connection that has no route.

    Attributes:
        kind: "backend" (send to ``route``), "alert" (send ``alert`` and close) or "close".
        route: for "backend", the fallback route (the default or a list given here).
        alert: for "alert", the AlertDescription code.
    """

    kind: str
    route: Route | None = None
    alert: int = 0


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One address to accept connections on.

    Attributes:
        host, port: where to bind (port 0 picks a free port, for tests).
        accept_proxy: the client must send a PROXY v1/v2 header first.
        http_host: route plain HTTP requests by their Host header.
    """

    host: str
    port: int
    accept_proxy: bool = False
    http_host: bool = False

    @property
    def address(self) -> str:
        """``HOST:PORT`` / ``[V6]:PORT``, as in the configuration."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RouterConfig:
    """Everything the router needs, validated. Build it with `build_config`."""

    listeners: tuple[ListenerConfig, ...]
    table: RouteTable
    default: Route | None = None
    actions: Mapping[str, Action] = field(default_factory=dict)
    hello_timeout: float = 10.0
    max_hello_size: int = 16384
    connect_timeout: float = 5.0
    idle_timeout: float = 600.0
    max_connections: int = 10000
    max_pending: int = 1000
    max_pending_per_client: int = 64
    drain_timeout: float = 30.0
    relay: str = "auto"
    workers: int = 1
    metrics: tuple[str, int] | None = None
    log_file: str | None = None
    connection_log: bool = True
    source: str | None = None
    quic_listeners: tuple[tuple[str, int], ...] = ()
    quic_idle_timeout: float = 30.0
    tls: TLSSettings = field(default_factory=TLSSettings)

    @property
    def terminates(self) -> bool:
        """Whether TLS ends at the router for some connections (certificates are needed)."""
        return self.tls.configured or any(r.terminate for r in self.table.routes)

    def warnings(self) -> list[str]:
        """Rules that can never match, and settings that look like mistakes."""
        out = self.table.warnings()
        no_sni = self.actions.get("no_sni")
        if self.tls.default is not None and (no_sni is None or no_sni.kind != "backend"):
            out.append(
                "tls.default is not served to clients without SNI: actions.no_sni does not"
                " send them to a backend (it is still used for names no certificate covers)"
            )
        for reason, action in self.actions.items():
            if action.kind == "alert" and reason == "not_tls":
                out.append(
                    "actions.not_tls = 'alert' answers a client that does not speak TLS"
                    " with a TLS record"
                )
        if self.idle_timeout and self.idle_timeout < self.hello_timeout:
            out.append("idle_timeout is shorter than hello_timeout")
        if self.quic_listeners:
            routes = [*self.table.routes, *([self.default] if self.default else [])]
            for route in routes:
                usable = route.quic_backends or [b for b in route.backends if not b.is_unix]
                if not usable:
                    out.append(
                        f"route {route.label!r}: only unix backends and no quic_backends:"
                        " its QUIC connections cannot be forwarded"
                    )
            for route in self.table.routes:
                if route.terminate is not None:
                    out.append(
                        f"route {route.label!r} terminates TLS, which QUIC passthrough does"
                        " not: its QUIC connections go to its backends unterminated"
                    )
        return out


# Keys of the file (and flags) and how to check them: (type, minimum, maximum).
_NUMBERS: dict[str, tuple[type, float, float]] = {
    "hello_timeout": (float, 0.001, 3600),
    "max_hello_size": (int, MIN_HELLO_LIMIT, MAX_HELLO_LIMIT),
    "connect_timeout": (float, 0.001, 3600),
    "idle_timeout": (float, 0, 7 * 24 * 3600),
    "max_connections": (int, 1, 10_000_000),
    "max_pending": (int, 1, 10_000_000),
    "max_pending_per_client": (int, 1, 10_000_000),
    "drain_timeout": (float, 0, 24 * 3600),
    "workers": (int, 1, 1024),
    "quic_idle_timeout": (float, 1, 7 * 24 * 3600),
}
_TOP_KEYS = {
    *_NUMBERS,
    "listen",
    "listen_quic",
    "listener",
    "route",
    "default",
    "default_proxy_protocol",
    "actions",
    "relay",
    "metrics",
    "log_file",
    "connection_log",
    "tls",
}
_LISTENER_KEYS = {"address", "accept_proxy", "http_host"}
_ROUTE_KEYS = {
    "name", "names", "backend", "backends", "proxy_protocol", "quic_backends", *ROUTE_TLS_KEYS
}  # fmt: skip
_ACTION_KEYWORDS = {"default", "fallback", "alert", "close"}


def _unknown_key(key: str, where: str, allowed: set[str]) -> ConfigError:
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    prefix = f"{where}." if where else ""
    return ConfigError(f"{prefix}{key}: unknown key{hint}")


def _expect(value: Any, kinds: type | tuple[type, ...], key: str, what: str) -> Any:
    # bool is an int in Python; a TOML `true` where a number is wanted is a mistake.
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ConfigError(f"{key}: expected {what}, got {value!r}")
    if not isinstance(value, kinds):
        raise ConfigError(f"{key}: expected {what}, got {value!r}")
    return value


def _string_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    _expect(value, list, key, "a string or a list of strings")
    for i, item in enumerate(value):
        _expect(item, str, f"{key}[{i}]", "a string")
    return list(value)


def _proxy_version(value: Any, key: str) -> int:
    if isinstance(value, str) and value.lower() in {"v1", "v2", "1", "2", "0", "none", "off"}:
        value = {"v1": 1, "v2": 2, "none": 0, "off": 0}.get(value.lower(), value)
        value = int(value)
    if isinstance(value, bool) or value not in (0, 1, 2):
        raise ConfigError(f"{key}: expected 0, 1 or 2 (or 'v1', 'v2'), got {value!r}")
    return int(value)


def parse_listen(text: str, key: str = "listen") -> ListenerConfig:
    """Parse ``ADDR:PORT[;accept_proxy][;http_host]`` (the ``--listen`` flag).

    Raises:
        ConfigError: naming ``key``.
    """
    address, *options = [part.strip() for part in text.split(";")]
    flags: dict[str, Any] = {}
    for option in options:
        if option not in _LISTENER_KEYS - {"address"}:
            raise _unknown_key(option, key, _LISTENER_KEYS - {"address"})
        flags[option] = True
    return _listener({"address": address, **flags}, key)


def _listener(table: Any, key: str) -> ListenerConfig:
    _expect(table, dict, key, "a table with address, accept_proxy, http_host")
    for k in table:
        if k not in _LISTENER_KEYS:
            raise _unknown_key(k, key, _LISTENER_KEYS)
    if "address" not in table:
        raise ConfigError(f"{key}.address: missing")
    address = _expect(table["address"], str, f"{key}.address", "'HOST:PORT' or '[V6]:PORT'")
    try:
        host, port = parse_address(address, "address")
    except ConfigError as exc:
        raise ConfigError(f"{key}.address: {exc}") from None
    if host not in ("*", "localhost"):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(
                f"{key}.address: {host!r} is not an IP address (listen on an address, e.g."
                " 0.0.0.0:443 or [::]:443)"
            ) from None
    if host == "*":
        host = "0.0.0.0"
    flags = {}
    for name in ("accept_proxy", "http_host"):
        flags[name] = _expect(table.get(name, False), bool, f"{key}.{name}", "true or false")
    return ListenerConfig(host, port, **flags)


def parse_route(text: str, key: str = "route") -> dict[str, Any]:
    """Parse ``NAME=HOST:PORT[,HOST:PORT...][;proxy_protocol=N]`` into a route table.

    The name may be a regex (``~...``) containing ``=``: the split is at the last ``=``
    before the backends, which never contain one.

    Raises:
        ConfigError: naming ``key``.
    """
    body, options = text, ""
    if ";" in text:
        body, _, options = text.rpartition(";")
        if "=" not in options or not options.strip().startswith("proxy_protocol"):
            body, options = text, ""
    name, sep, backends = body.rpartition("=")
    if not sep or not name.strip() or not backends.strip():
        raise ConfigError(f"{key}: expected NAME=HOST:PORT[,HOST:PORT...], got {text!r}")
    route: dict[str, Any] = {"names": [name.strip()], "backends": backends.split(",")}
    if options:
        opt_key, _, value = options.partition("=")
        route[opt_key.strip()] = value.strip()
    return route


def _route(table: Any, key: str, base: str = ".") -> Route:
    _expect(table, dict, key, "a table with names and backends")
    for k in table:
        if k not in _ROUTE_KEYS:
            raise _unknown_key(k, key, _ROUTE_KEYS)
    if "names" in table and "name" in table and not isinstance(table.get("name"), str):
        raise ConfigError(f"{key}.name: expected a string label")
    if "names" not in table:
        raise ConfigError(f"{key}.names: missing (the server names this route serves)")
    names = _string_list(table["names"], f"{key}.names")
    if not names:
        raise ConfigError(f"{key}.names: empty")
    rules = []
    for i, text in enumerate(names):
        try:
            rules.append(parse_rule(text))
        except ConfigError as exc:
            raise ConfigError(f"{key}.names[{i}]: {exc}") from None
    backends = _backends(table, key)
    proxy = _proxy_version(table.get("proxy_protocol", 0), f"{key}.proxy_protocol")
    label = _expect(table.get("name", ""), str, f"{key}.name", "a string")
    terminate = parse_route_tls(table, key, base)
    quic_backends: tuple[Backend, ...] = ()
    if "quic_backends" in table:
        quic_backends = _backends({"backends": table["quic_backends"]}, f"{key}.quic")
        if any(b.is_unix for b in quic_backends):
            raise ConfigError(f"{key}.quic_backends: QUIC goes over UDP, not to a unix socket")
    return Route(tuple(rules), backends, proxy, label, terminate, quic_backends)


def _backends(table: Mapping[str, Any], key: str) -> tuple[Backend, ...]:
    if "backends" in table and "backend" in table:
        raise ConfigError(f"{key}: give either backend or backends, not both")
    bkey = "backends" if "backends" in table else "backend"
    if bkey not in table:
        raise ConfigError(f"{key}.backends: missing (where to send these names)")
    value = table[bkey]
    items = _string_list(value, f"{key}.{bkey}")
    out: list[Backend] = []
    for i, item in enumerate(items):
        try:
            out.extend(parse_backends(item))
        except ConfigError as exc:
            raise ConfigError(f"{key}.{bkey}[{i}]: {exc}") from None
    if not out:
        raise ConfigError(f"{key}.{bkey}: empty")
    return tuple(out)


def _action(value: Any, reason: str, default: Route | None) -> Action:
    key = f"actions.{reason}"
    _expect(value, str, key, "'default', 'alert', 'close' or 'HOST:PORT[,HOST:PORT]'")
    word = value.strip().lower()
    if word in ("default", "fallback"):
        if default is None:
            raise ConfigError(f"{key}: {value!r} needs a default backend (set 'default')")
        return Action("backend", route=default)
    if word == "alert":
        return Action("alert", alert=ALERTS[reason])
    if word == "close":
        return Action("close")
    try:
        backends = parse_backends(value)
    except ConfigError as exc:
        raise ConfigError(
            f"{key}: expected 'default', 'alert', 'close' or a backend list: {exc}"
        ) from None
    return Action("backend", route=Route((), backends, 0, f"fallback:{reason}"))


def _default_action(reason: str, default: Route | None) -> Action:
    # As an HAProxy operator expects: what has no route goes to the default backend if
    # there is one. Without one, a client that spoke TLS learns why it is turned away
    # (an alert); bytes that are not TLS, or never came, are just closed.
    if default is not None and reason in ("no_sni", "unknown_name"):
        return Action("backend", route=default)
    if reason in ("not_tls", "timeout"):
        return Action("close")
    return Action("alert", alert=ALERTS[reason])


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file into a dict.

    Raises:
        ConfigError: the file cannot be read or is not valid TOML (with its line).
    """
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise ConfigError("reading TOML on Python 3.10 needs the 'tomli' package")
    try:
        with open(path, "rb") as f:
            return dict(tomllib.load(f))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def build_config(
    data: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    source: str | None = None,
) -> RouterConfig:
    """Validate a configuration dict (from TOML) merged with flag values.

    Args:
        data: the file's keys (see the module docstring).
        overrides: flag values under the same keys; ``listen`` and ``route`` (lists of
            flag strings) are added to the file's, every other key replaces it.
        source: where ``data`` came from, kept for reloads and messages.

    Raises:
        ConfigError: the first problem found, naming its key.
    """
    overrides = dict(overrides or {})
    for key in data:
        if key not in _TOP_KEYS:
            raise _unknown_key(key, "", _TOP_KEYS)
    merged: dict[str, Any] = dict(data)
    for key, value in overrides.items():
        if key in ("listen", "listen_quic", "route") or value is None:
            continue
        if key == "actions":
            merged["actions"] = {
                **_expect(data.get("actions", {}), dict, "actions", "a table"),
                **value,
            }
            continue
        merged[key] = value

    listeners: list[ListenerConfig] = []
    for i, text in enumerate(_string_list(data.get("listen", []), "listen")):
        listeners.append(parse_listen(text, f"listen[{i}]"))
    tables = data.get("listener", [])
    _expect(tables, list, "listener", "an array of tables ([[listener]])")
    for i, table in enumerate(tables):
        listeners.append(_listener(table, f"listener[{i}]"))
    for text in overrides.get("listen") or ():
        listeners.append(parse_listen(text, f"--listen {text!r}"))
    seen: set[tuple[str, int]] = set()
    for lst in listeners:
        if lst.port and (lst.host, lst.port) in seen:
            raise ConfigError(f"listen: {lst.address} is given twice")
        seen.add((lst.host, lst.port))
    quic_listeners: list[tuple[str, int]] = []
    for i, text in enumerate(_string_list(data.get("listen_quic", []), "listen_quic")):
        quic_listeners.append(parse_address(text, f"listen_quic[{i}]"))
    for text in overrides.get("listen_quic") or ():
        quic_listeners.append(parse_address(text, f"--listen-quic {text!r}"))
    if len(set(quic_listeners)) != len(quic_listeners):
        raise ConfigError("listen_quic: an address is given twice")

    # Relative file names (certificates, CAs) are relative to the configuration file.
    base = os.path.dirname(os.path.abspath(source)) if source else os.getcwd()
    tls = parse_tls_table(data.get("tls", {}), base)
    routes: list[Route] = []
    route_tables = data.get("route", [])
    _expect(route_tables, list, "route", "an array of tables ([[route]])")
    for i, table in enumerate(route_tables):
        routes.append(_route(table, f"route[{i}]", base))
        terminate = routes[-1].terminate
        if terminate is not None and terminate.cert is None and not tls.configured:
            raise ConfigError(
                f"route[{i}].terminate: true needs certificates to choose from"
                " ([tls] certificates or default)"
            )
    for text in overrides.get("route") or ():
        routes.append(_route(parse_route(text, f"--route {text!r}"), f"--route {text!r}"))
    table = RouteTable(routes)

    default: Route | None = None
    if merged.get("default"):
        backends = _backends({"backends": merged["default"]}, "default")
        proxy = _proxy_version(merged.get("default_proxy_protocol", 0), "default_proxy_protocol")
        default = Route((), backends, proxy, "default")

    actions_table = _expect(merged.get("actions", {}), dict, "actions", "a table")
    actions: dict[str, Action] = {}
    for reason in actions_table:
        if reason not in REASONS:
            raise _unknown_key(reason, "actions", set(REASONS))
    for reason in REASONS:
        if reason in actions_table:
            actions[reason] = _action(actions_table[reason], reason, default)
        else:
            actions[reason] = _default_action(reason, default)

    numbers: dict[str, Any] = {}
    for key, (kind, low, high) in _NUMBERS.items():
        if key not in merged:
            continue
        value = merged[key]
        what = "an integer" if kind is int else "a number of seconds"
        _expect(value, (int,) if kind is int else (int, float), key, what)
        if not low <= value <= high:
            raise ConfigError(f"{key}: {value!r} is out of range ({low:g} to {high:g})")
        numbers[key] = kind(value)

    relay = _expect(merged.get("relay", "auto"), str, "relay", "'auto', 'splice' or 'copy'")
    if relay not in ("auto", "splice", "copy"):
        raise ConfigError(f"relay: expected 'auto', 'splice' or 'copy', got {relay!r}")

    metrics = None
    if merged.get("metrics"):
        text = _expect(merged["metrics"], str, "metrics", "'ADDR:PORT'")
        metrics = parse_address(text, "metrics")

    log_file = merged.get("log_file")
    if log_file is not None:
        _expect(log_file, str, "log_file", "a path, or '-' for stderr")
    connection_log = _expect(
        merged.get("connection_log", True), bool, "connection_log", "true or false"
    )

    if not listeners and not quic_listeners:
        raise ConfigError(
            "listen: no listener (give --listen ADDR:PORT, --listen-quic ADDR:PORT,"
            " or listen = [...])"
        )
    if not routes and default is None:
        raise ConfigError("route: no route and no default: nothing could ever be forwarded")

    return RouterConfig(
        listeners=tuple(listeners),
        quic_listeners=tuple(quic_listeners),
        table=table,
        default=default,
        actions=actions,
        relay=relay,
        metrics=metrics,
        log_file=log_file,
        connection_log=connection_log,
        source=source,
        tls=tls,
        **numbers,
    )


def load_config(
    path: str | Path | None, overrides: Mapping[str, Any] | None = None
) -> RouterConfig:
    """Read the TOML file (if any) and merge the flag values; see `build_config`.

    Raises:
        ConfigError: naming the file, the key and the problem.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = load_toml(path)
    try:
        return build_config(data, overrides, source=str(path) if path else None)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise
