"""What TLS termination is asked to do, as plain data: the ``[tls]`` table and a route's keys.

A route's ``terminate``, ``alpn``, ``client_ca``/``client_cert`` and ``backend_tls`` keys, and
the ``[tls]`` table, validated into frozen objects. Nothing here opens a file: paths are made
absolute against the configuration file's folder, and the files are read when the
certificates are loaded (`sniinspect.route.terminate`)::

    [tls]
    certificates = ["certs/*.pem"]     # chain + key per file; chosen by SAN for terminate = true
    default = "certs/default.pem"      # no SNI; or terminate = true and no file covers the name

    [[route]]
    names = ["app.example.com"]
    backends = ["10.0.0.5:8080"]
    terminate = { cert = "app.pem", key = "app.key" }   # or: terminate = true
    alpn = ["h2", "http/1.1"]          # offered to clients (default: http/1.1)
    client_ca = "clients-ca.pem"       # verify client certificates against this CA ...
    client_cert = "required"           # ... "required" (the default) or "optional"
    backend_tls = { verify = true, ca = "backend-ca.pem", server_name = "app.internal" }
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sniinspect.route.table import ConfigError

__all__ = [
    "DEFAULT_ALPN",
    "ROUTE_TLS_KEYS",
    "BackendTLS",
    "TLSPolicy",
    "TLSSettings",
    "Termination",
    "parse_route_tls",
    "parse_tls_table",
]

DEFAULT_ALPN = ("http/1.1",)
ROUTE_TLS_KEYS = frozenset({"terminate", "alpn", "client_ca", "client_cert", "backend_tls"})
_TLS_KEYS = frozenset({"certificates", "default"})
_CLIENT_CERT_MODES = ("required", "optional")
MAX_ALPN_LENGTH = 255  # RFC 7301 §3.1: a ProtocolName is 1..255 bytes


@dataclass(frozen=True, slots=True)
class TLSPolicy:
    """What a terminating route asks of the handshake with the client.

    One `ssl.SSLContext` is made per certificate and policy, so routes with the same
    policy share contexts.

    Attributes:
        alpn: the application protocols offered, in the router's order of preference.
        client_ca: PEM file of the CAs that client certificates must chain to, or None.
        client_cert: "none", "optional" or "required".
    """

    alpn: tuple[str, ...] = DEFAULT_ALPN
    client_ca: str | None = None
    client_cert: str = "none"


@dataclass(frozen=True, slots=True)
class BackendTLS:
    """TLS again towards the backend (``backend_tls``).

    Attributes:
        verify: check the backend's certificate chain and name.
        ca: PEM file of the CAs to trust, or None for the system's.
        server_name: the SNI sent and the name checked; None: the client's SNI.
    """

    verify: bool = True
    ca: str | None = None
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class Termination:
    """A route whose TLS ends at the router.

    Attributes:
        cert: the certificate (chain) PEM file, or None to choose by SNI among
            ``[tls] certificates``.
        key: the private key PEM file, or None when ``cert`` holds it.
        policy: ALPN and client-certificate settings of the handshake.
        backend_tls: re-encrypt towards the backends, or None for plain TCP.
    """

    cert: str | None = None
    key: str | None = None
    policy: TLSPolicy = field(default_factory=TLSPolicy)
    backend_tls: BackendTLS | None = None


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """The ``[tls]`` table.

    Attributes:
        certificates: file names or glob patterns (absolute), each file holding a chain
            and its key; expanded again on every reload.
        default: the certificate for a hello without SNI (and for names no file covers
            on ``terminate = true`` routes), or None.
    """

    certificates: tuple[str, ...] = ()
    default: str | None = None

    @property
    def configured(self) -> bool:
        """Whether any certificate is named here."""
        return bool(self.certificates) or self.default is not None


def _path(value: Any, key: str, base: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: expected a file name, got {value!r}")
    return os.path.normpath(os.path.join(base, os.path.expanduser(value.strip())))


def _check_keys(table: Mapping[str, Any], allowed: frozenset[str], key: str) -> None:
    import difflib

    for k in table:
        if k not in allowed:
            close = difflib.get_close_matches(k, sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{key}.{k}: unknown key{hint}")


def parse_tls_table(value: Any, base: str) -> TLSSettings:
    """Validate the ``[tls]`` table.

    Args:
        value: the table from the file.
        base: the folder relative paths are relative to (the configuration file's).

    Raises:
        ConfigError: naming the key.
    """
    if not isinstance(value, dict):
        raise ConfigError(f"tls: expected a table, got {value!r}")
    _check_keys(value, _TLS_KEYS, "tls")
    patterns = value.get("certificates", [])
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list):
        raise ConfigError(f"tls.certificates: expected a list of files or globs, got {patterns!r}")
    certificates = tuple(_path(p, f"tls.certificates[{i}]", base) for i, p in enumerate(patterns))
    default = None
    if value.get("default") is not None:
        default = _path(value["default"], "tls.default", base)
    return TLSSettings(certificates, default)


def _alpn(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a non-empty list of protocol names, got {value!r}")
    out: list[str] = []
    for i, item in enumerate(value):
        if (
            not isinstance(item, str)
            or not item
            or not item.isascii()
            or len(item) > MAX_ALPN_LENGTH
        ):
            raise ConfigError(f"{key}[{i}]: expected an ASCII protocol name of 1-255 bytes")
        if item in out:
            raise ConfigError(f"{key}[{i}]: {item!r} is given twice")
        out.append(item)
    return tuple(out)


def _backend_tls(value: Any, key: str, base: str) -> BackendTLS | None:
    if value is False:
        return None
    if value is True:
        return BackendTLS()
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected true or a table with verify, ca, server_name")
    _check_keys(value, frozenset({"verify", "ca", "server_name"}), key)
    verify = value.get("verify", True)
    if not isinstance(verify, bool):
        raise ConfigError(f"{key}.verify: expected true or false, got {verify!r}")
    ca = _path(value["ca"], f"{key}.ca", base) if "ca" in value else None
    name = value.get("server_name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(f"{key}.server_name: expected a host name, got {name!r}")
    if ca is not None and not verify:
        raise ConfigError(f"{key}.ca: given with verify = false, so it would never be used")
    return BackendTLS(verify, ca, name.strip() if name else None)


def parse_route_tls(table: Mapping[str, Any], key: str, base: str) -> Termination | None:
    """Validate a route's TLS keys; None for a passthrough route.

    Args:
        table: the route's table (only the keys in `ROUTE_TLS_KEYS` are read).
        key: the route's key for messages (``route[2]``).
        base: the folder relative paths are relative to.

    Raises:
        ConfigError: a bad value, or a termination key on a route that does not terminate.
    """
    value = table.get("terminate", False)
    if value is False:
        extra = sorted(ROUTE_TLS_KEYS & set(table) - {"terminate"})
        if extra:
            raise ConfigError(
                f"{key}.{extra[0]}: only for a route that terminates TLS (set terminate);"
                " a passthrough route never sees the handshake"
            )
        return None
    cert = key_file = None
    if isinstance(value, dict):
        _check_keys(value, frozenset({"cert", "key"}), f"{key}.terminate")
        if "cert" not in value:
            raise ConfigError(f"{key}.terminate.cert: missing (or write terminate = true)")
        cert = _path(value["cert"], f"{key}.terminate.cert", base)
        if "key" in value:
            key_file = _path(value["key"], f"{key}.terminate.key", base)
    elif value is not True:
        raise ConfigError(
            f'{key}.terminate: expected true or {{ cert = "PATH", key = "PATH" }}, got {value!r}'
        )
    alpn = _alpn(table["alpn"], f"{key}.alpn") if "alpn" in table else DEFAULT_ALPN
    client_ca = None
    mode = "none"
    if "client_ca" in table:
        client_ca = _path(table["client_ca"], f"{key}.client_ca", base)
        mode = "required"
    if "client_cert" in table:
        mode = table["client_cert"]
        if mode not in _CLIENT_CERT_MODES:
            raise ConfigError(f"{key}.client_cert: expected 'required' or 'optional', got {mode!r}")
        if client_ca is None:
            raise ConfigError(f"{key}.client_cert: needs client_ca (the CAs to verify against)")
    backend = None
    if "backend_tls" in table:
        backend = _backend_tls(table["backend_tls"], f"{key}.backend_tls", base)
    return Termination(cert, key_file, TLSPolicy(alpn, client_ca, mode), backend)
