"""Certificates by name: load PEM files, choose one for a ClientHello's SNI, cache SSLContexts.

The router reads the whole ClientHello before any TLS state exists, so it chooses the whole
`ssl.SSLContext` (certificate, ALPN, client-certificate policy) before the handshake starts,
instead of switching certificates in a servername callback, where OpenSSL would keep the
first context's verify mode. Any Python server can do the same::

    store = CertificateStore.from_files(["/etc/tls/*.pem"], default="/etc/tls/default.pem")
    hello = clienthello.Reader().feed(first_bytes)      # bytes peeked, not consumed
    ctx = store.context_for(hello)                      # None: no certificate, refuse

Selection (the router's, and `CertificateStore.context_for`'s):

1. the name is compared in lower case with one trailing dot dropped; a name the parser
   flagged (non-ASCII, empty, several) matches nothing;
2. a certificate whose SAN holds the exact name wins;
3. else one holding the wildcard of the name's parent (``*.example.com`` for
   ``app.example.com``): a wildcard stands for one whole left-most label (RFC 6125 §6.4.3),
   so the parent's is the most specific wildcard that can cover a name, and the only one;
4. two files claiming the same name (or wildcard): the latest notBefore wins, then the
   latest notAfter, then the path that sorts first (``--check-config`` warns about it);
5. no certificate covers the name: the default certificate if there is one, else None.

A certificate without a SAN extension is indexed by its subject CN, as HAProxy does.
Every file is read once, when loaded; the contexts made later come from those bytes, so a
handshake never opens a file and a file changed on disk changes nothing until a reload.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import os
import re
import ssl
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sniinspect.route.table import ConfigError, Route, RuleKind, normalize_name
from sniinspect.route.tlsconfig import BackendTLS, TLSPolicy, TLSSettings

if TYPE_CHECKING:
    import clienthello

__all__ = [
    "EXPIRY_WARNING_DAYS",
    "TLSPolicy",
    "Certificate",
    "CertificateError",
    "CertificateStore",
    "LoadResult",
    "context_for",
    "load_certificate",
    "load_store",
]

EXPIRY_WARNING_DAYS = 30
# Files HAProxy also passes over when a whole directory of certificates is loaded: they sit
# beside a certificate and belong to it.
_SIDECAR_SUFFIXES = (".key", ".ocsp", ".issuer", ".sctl")
_FORGIVEN_PROBLEMS = frozenset({"trailing dot"})
_MEMFD = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----", re.S)


class CertificateError(ConfigError):
    """A certificate, key or CA file cannot be used; the message starts with the file name."""


@dataclass(eq=False)
class Certificate:
    """One certificate chain and its key, as read from disk, with what selection needs.

    Attributes:
        path: the PEM file of the chain (leaf first).
        key_path: the key's file, or None when ``path`` holds it.
        pem, key_pem: the bytes read (``key_pem`` None when the chain file holds the key).
        names: the SAN DNS names, lower case (the CN when there is no SAN).
        subject: the leaf's subject, RFC 4514 (``CN=app.example.com,O=...``).
        serial: the leaf's serial number.
        not_before, not_after: the validity period (UTC).
        key_alg, sig_alg: e.g. ``EC256`` and ``ecdsa-with-SHA256`` (PROXY v2 SSL sub-TLVs).
    """

    path: str
    key_path: str | None
    pem: bytes = field(repr=False)
    key_pem: bytes | None = field(repr=False)
    names: tuple[str, ...]
    subject: str
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    key_alg: str
    sig_alg: str
    _contexts: dict[tuple[TLSPolicy, str | None], ssl.SSLContext] = field(
        default_factory=dict, repr=False
    )

    @property
    def chain_pem(self) -> bytes:
        """The certificate blocks only, leaf first (for APIs that take the chain alone)."""
        return b"".join(m.group(0) + b"\n" for m in _PEM_CERT.finditer(self.pem))

    @property
    def private_key_pem(self) -> bytes:
        """The private key block (from the chain file or the key file)."""
        found = _PEM_KEY.search(self.key_pem or self.pem)
        return found.group(0) + b"\n" if found else b""

    @property
    def serial_hex(self) -> str:
        """The serial number in upper-case hex, as ``openssl x509 -serial`` prints it."""
        return f"{self.serial:X}"

    def context(self, policy: TLSPolicy, client_ca_pem: str | None = None) -> ssl.SSLContext:
        """The server context for this certificate and policy, made once and kept.

        Args:
            policy: ALPN and client-certificate settings.
            client_ca_pem: the PEM text of ``policy.client_ca`` (read by the caller).

        Raises:
            CertificateError: the CA text holds no certificate.
        """
        key = (policy, client_ca_pem if policy.client_cert != "none" else None)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = _server_context(self, policy, key[1])
            self._contexts[key] = ctx
        return ctx


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _leaf_facts(
    path: str, pem: bytes
) -> tuple[tuple[str, ...], str, int, dt.datetime, dt.datetime, str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.x509.oid import NameOID

    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise CertificateError(f"{path}: no PEM certificate in it") from None
    leaf = chain[0]
    names: list[str] = []
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [normalize_name(n) for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        for attr in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            value = attr.value if isinstance(attr.value, str) else attr.value.decode()
            names.append(normalize_name(value))
    key = leaf.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        key_alg = f"EC{key.curve.key_size}"
    elif isinstance(key, rsa.RSAPublicKey):
        key_alg = f"RSA{key.key_size}"
    elif isinstance(key, ed25519.Ed25519PublicKey):
        key_alg = "ED25519"
    elif isinstance(key, ed448.Ed448PublicKey):
        key_alg = "ED448"
    else:
        key_alg = type(key).__name__
    sig_alg = getattr(
        leaf.signature_algorithm_oid, "_name", leaf.signature_algorithm_oid.dotted_string
    )
    before = getattr(leaf, "not_valid_before_utc", None) or leaf.not_valid_before.replace(
        tzinfo=dt.timezone.utc
    )
    after = getattr(leaf, "not_valid_after_utc", None) or leaf.not_valid_after.replace(
        tzinfo=dt.timezone.utc
    )
    return (
        tuple(dict.fromkeys(names)),
        leaf.subject.rfc4514_string(),
        leaf.serial_number,
        before,
        after,
        key_alg,
        str(sig_alg),
    )


def load_certificate(path: str, key_path: str | None = None) -> Certificate:
    """Read a certificate chain (and its key) and check that they belong together.

    The key is taken from ``key_path``, else from the chain file itself, else from
    ``PATH.key`` or the file with ``.key`` for its suffix (HAProxy's convention).

    Raises:
        CertificateError: naming the file: unreadable, no certificate, no key, or a key
            that does not match the certificate.
    """
    pem = _read(path)
    facts = _leaf_facts(path, pem)
    key_pem = None
    if key_path is not None:
        key_pem = _read(key_path)
    elif b"PRIVATE KEY-----" not in pem:
        for candidate in (path + ".key", os.path.splitext(path)[0] + ".key"):
            if os.path.exists(candidate):
                key_path, key_pem = candidate, _read(candidate)
                break
        else:
            raise CertificateError(f"{path}: no private key in it (nor in {path}.key)")
    cert = Certificate(path, key_path, pem, key_pem, *facts)
    # Loading it once proves the key matches and the chain parses; the context is kept.
    cert.context(TLSPolicy())
    return cert


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path holding ``data``, for `ssl` calls that only read files (the key stays off disk)."""
    if _MEMFD:
        fd = os.memfd_create("sniinspect-certificate", os.MFD_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="sniinspect-") as folder:  # mode 0700
        path = os.path.join(folder, "chain.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path


def _server_context(cert: Certificate, policy: TLSPolicy, ca_pem: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    data = cert.pem if cert.key_pem is None else cert.pem.rstrip(b"\n") + b"\n" + cert.key_pem
    try:
        with _memory_file(data) as path:
            ctx.load_cert_chain(path)
    except ssl.SSLError as exc:
        raise CertificateError(f"{cert.path}: cannot load: {exc.reason or exc}") from None
    ctx.set_alpn_protocols(list(policy.alpn))
    if policy.client_cert != "none":
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if policy.client_cert == "required" else ssl.CERT_OPTIONAL
        )
        try:
            ctx.load_verify_locations(cadata=ca_pem or "")
        except (ssl.SSLError, ValueError) as exc:
            raise CertificateError(f"{policy.client_ca}: no CA certificate in it: {exc}") from None
    return ctx


def _rank(cert: Certificate) -> tuple[float, float, str]:
    # Smallest first: latest notBefore, then latest notAfter, then the path sorting first.
    return (-cert.not_before.timestamp(), -cert.not_after.timestamp(), cert.path)


class CertificateStore:
    """Certificates indexed by SAN name, a default, and the explicit certificates of routes.

    Args:
        certificates: the pool ``terminate = true`` routes choose from by SNI.
        default: served when no certificate covers the name (or there is no SNI).
        explicit: the certificates routes name themselves, by (cert path, key path).
        cas: CA PEM texts by path (``client_ca``, ``backend_tls.ca``), read beforehand.
    """

    def __init__(
        self,
        certificates: Iterable[Certificate] = (),
        default: Certificate | None = None,
        *,
        explicit: dict[tuple[str, str | None], Certificate] | None = None,
        cas: dict[str, str] | None = None,
    ) -> None:
        self.certificates = tuple(certificates)
        self.default = default
        self.explicit = dict(explicit or {})
        self.cas = dict(cas or {})
        self._exact: dict[str, Certificate] = {}
        self._wildcard: dict[str, Certificate] = {}  # parent name -> certificate for *.parent
        self.conflicts: list[tuple[str, Certificate, Certificate]] = []  # name, winner, loser
        self._backend: dict[tuple[BackendTLS, tuple[str, ...]], ssl.SSLContext] = {}
        for cert in sorted(self.certificates, key=_rank):
            for name in cert.names:
                table, key = (
                    (self._wildcard, name[2:])
                    if name.startswith("*.")
                    else (
                        self._exact,
                        name,
                    )
                )
                if "*" in key:
                    continue  # partial-label wildcards (f*.example.com): not honoured
                if key in table:
                    if table[key] is not cert:
                        self.conflicts.append((name, table[key], cert))
                    continue
                table[key] = cert

    @classmethod
    def from_files(cls, patterns: Sequence[str], default: str | None = None) -> CertificateStore:
        """Load every file the patterns (globs) name, each holding a chain and its key.

        Raises:
            CertificateError: the first file that cannot be loaded.
        """
        result = load_store(TLSSettings(tuple(patterns), default), ())
        if result.problems:
            raise CertificateError(result.problems[0][1])
        return result.store

    # ------------------------------------------------------------------ selection

    def select(self, server_name: str | None) -> Certificate | None:
        """The certificate whose SAN covers ``server_name`` (exact, else wildcard), or None."""
        if not server_name:
            return None
        name = normalize_name(server_name)
        cert = self._exact.get(name)
        if cert is None:
            head, dot, parent = name.partition(".")
            if dot and head and parent:
                cert = self._wildcard.get(parent)
        return cert

    def choose(self, server_name: str | None) -> Certificate | None:
        """`select`, falling back to the default certificate."""
        return self.select(server_name) or self.default

    def for_route(self, route: Route, server_name: str | None) -> Certificate | None:
        """The certificate a terminating route serves for a name, or None (no certificate)."""
        term = route.terminate
        if term is None:
            return None
        if term.cert is not None:
            return self.explicit.get((term.cert, term.key))
        return self.choose(server_name)

    def context_for(
        self, hello: clienthello.ClientHello | None, policy: TLSPolicy | None = None
    ) -> ssl.SSLContext | None:
        """The server context for a ClientHello: chosen by its SNI as the router does.

        Args:
            hello: the parsed ClientHello (None: a client without a hello, gets the default).
            policy: ALPN and client-certificate settings (default: http/1.1, no client
                certificates).

        Returns:
            A cached `ssl.SSLContext` holding the certificate, or None when no certificate
            covers the name and there is no default (refuse: alert 112 unrecognized_name).
        """
        name = None
        if hello is not None and not any(
            p not in _FORGIVEN_PROBLEMS for p in hello.server_name_problems
        ):
            name = hello.server_name
        cert = self.choose(name)
        return None if cert is None else self.server_context(cert, policy or TLSPolicy())

    def server_context(self, cert: Certificate, policy: TLSPolicy) -> ssl.SSLContext:
        """The (cached) server context for a certificate and a policy."""
        ca = None
        if policy.client_cert != "none" and policy.client_ca is not None:
            ca = self.cas.get(policy.client_ca)
            if ca is None:  # a helper user's policy: read it once
                ca = self.cas[policy.client_ca] = _read(policy.client_ca).decode("ascii", "replace")
        return cert.context(policy, ca)

    def backend_context(self, settings: BackendTLS, alpn: Sequence[str] = ()) -> ssl.SSLContext:
        """The (cached) client context for TLS towards a backend."""
        key = (settings, tuple(alpn))
        ctx = self._backend.get(key)
        if ctx is None:
            ca = self.cas.get(settings.ca) if settings.ca else None
            ctx = ssl.create_default_context(cadata=ca) if ca else ssl.create_default_context()
            if not settings.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if alpn:
                ctx.set_alpn_protocols(list(alpn))
            self._backend[key] = ctx
        return ctx

    # ------------------------------------------------------------------ reports

    def all_certificates(self) -> list[Certificate]:
        """Every certificate held (pool, default, explicit), each once."""
        seen: dict[int, Certificate] = {}
        for cert in (*self.certificates, self.default, *self.explicit.values()):
            if cert is not None:
                seen.setdefault(id(cert), cert)
        return list(seen.values())

    def coverage(self, routes: Iterable[Route]) -> tuple[list[str], list[str]]:
        """Which certificate serves which route name, and the names none covers.

        Returns:
            (report lines, warnings), for ``--check-config``.
        """
        lines: list[str] = []
        warnings: list[str] = []

        def show(cert: Certificate | None) -> str:
            if cert is None:
                return "no certificate"
            how = " (default)" if cert is self.default else ""
            return f"{cert.path}{how} [{cert.subject}, serial {cert.serial_hex}]"

        for route in routes:
            term = route.terminate
            if term is None:
                continue
            if term.cert is not None:
                cert = self.explicit.get((term.cert, term.key))
                texts = ", ".join(rule.text for rule in route.rules)
                lines.append(f"route '{route.label}': {texts} -> {show(cert)}")
                continue
            for rule in route.rules:
                probes: list[str] = []
                if rule.kind is RuleKind.EXACT:
                    probes = [rule.key]
                elif rule.kind is RuleKind.ONE_LABEL:
                    probes = ["*." + rule.key]
                elif rule.kind is RuleKind.SUBTREE:
                    probes = [rule.key, "*." + rule.key]
                if not probes:
                    lines.append(f"route '{route.label}': {rule.text} -> chosen per name by SAN")
                    continue
                for probe in probes:
                    # "*.x" stands for any one label under x: a name no SAN holds exactly.
                    name = "0-any." + probe[2:] if probe.startswith("*.") else probe
                    cert = self.select(name)
                    lines.append(f"route '{route.label}': {probe} -> {show(cert or self.default)}")
                    if cert is None:
                        fallback = "the default certificate" if self.default else "unknown_name"
                        warnings.append(
                            f"route '{route.label}': no certificate covers {probe!r}"
                            f" (it gets {fallback})"
                        )
        return lines, warnings

    def warnings(self, now: dt.datetime) -> list[str]:
        """Certificates expiring within 30 days (or expired), and names claimed twice."""
        out: list[str] = []
        for cert in self.all_certificates():
            left = cert.not_after - now
            if left.total_seconds() <= 0:
                out.append(f"certificate {cert.path} expired on {cert.not_after:%Y-%m-%d}")
            elif left <= dt.timedelta(days=EXPIRY_WARNING_DAYS):
                out.append(
                    f"certificate {cert.path} expires in {left.days} days"
                    f" ({cert.not_after:%Y-%m-%d %H:%M} UTC)"
                )
        for name, winner, loser in self.conflicts:
            out.append(
                f"{name!r} is claimed by {winner.path} and {loser.path}: {winner.path} serves it"
                " (latest notBefore)"
            )
        return out


def context_for(
    hello: clienthello.ClientHello | None,
    store: CertificateStore,
    policy: TLSPolicy | None = None,
) -> ssl.SSLContext | None:
    """The `ssl.SSLContext` for a ClientHello; see `CertificateStore.context_for`."""
    return store.context_for(hello, policy)


@dataclass
class LoadResult:
    """A freshly loaded store and what could not be loaded.

    Attributes:
        store: every certificate that loaded (or, on reload, the one kept from before).
        problems: (file, message) for each file that failed.
        notes: patterns that matched no file (not an error: a directory may be empty).
    """

    store: CertificateStore
    problems: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _expand(patterns: Sequence[str], notes: list[str]) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            found = [
                f
                for f in sorted(glob.glob(pattern))
                if os.path.isfile(f) and not f.endswith(_SIDECAR_SUFFIXES)
            ]
            if not found:
                notes.append(f"tls.certificates: {pattern!r} matches no file")
            files.extend(found)
        else:
            files.append(pattern)
    return list(dict.fromkeys(files))


def load_store(
    settings: TLSSettings, routes: Iterable[Route], previous: CertificateStore | None = None
) -> LoadResult:
    """Read every certificate and CA file the configuration names (globs expanded now).

    Args:
        settings: the ``[tls]`` table.
        routes: the routes (their explicit certificates, client CAs and backend CAs).
        previous: the store in use (on reload): a file that fails keeps its certificate
            from there, and unchanged files keep their contexts.

    Returns:
        The store and the problems; at start any problem should stop the router.
    """
    result = LoadResult(CertificateStore())
    old: dict[tuple[str, str | None], Certificate] = {}
    if previous is not None:
        for cert in previous.all_certificates():
            old[(cert.path, cert.key_path)] = cert
        for (path, key), cert in previous.explicit.items():
            old[(path, key)] = cert
    loaded: dict[tuple[str, str | None], Certificate | None] = {}

    def load(path: str, key: str | None) -> Certificate | None:
        if (path, key) in loaded:
            return loaded[(path, key)]
        before = old.get((path, key))
        cert: Certificate | None
        try:
            if (
                before is not None
                and _read(path) == before.pem
                and (key is None or _read(key) == before.key_pem)
            ):
                cert = before  # unchanged: keep it, and its contexts
            else:
                cert = load_certificate(path, key)
        except CertificateError as exc:
            message = str(exc)
            if before is not None:
                message += "; keeping the certificate loaded before"
            result.problems.append((path, message))
            cert = before
        loaded[(path, key)] = cert
        return cert

    pool = [c for f in _expand(settings.certificates, result.notes) if (c := load(f, None))]
    default = load(settings.default, None) if settings.default else None
    explicit: dict[tuple[str, str | None], Certificate] = {}
    cas: dict[str, str] = {}
    for route in routes:
        term = route.terminate
        if term is None:
            continue
        if term.cert is not None:
            named = load(term.cert, term.key)
            if named is not None:
                explicit[(term.cert, term.key)] = named
        for ca in (term.policy.client_ca, term.backend_tls.ca if term.backend_tls else None):
            if ca is None or ca in cas:
                continue
            try:
                text = _read(ca).decode("ascii", "replace")
                ssl.create_default_context(cadata=text)  # holds a certificate at all?
            except (CertificateError, ssl.SSLError, ValueError) as exc:
                kept = previous.cas.get(ca) if previous is not None else None
                why = str(exc) if isinstance(exc, CertificateError) else f"{ca}: no CA in it"
                result.problems.append(
                    (ca, why + ("; keeping the one loaded before" if kept else ""))
                )
                if kept is None:
                    continue
                text = kept
            cas[ca] = text
    result.store = CertificateStore(list(dict.fromkeys(pool)), default, explicit=explicit, cas=cas)
    return result
