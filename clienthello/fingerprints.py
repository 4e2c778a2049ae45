"""JA3 and JA4 client fingerprints, as pure functions of a `ClientHello`.

JA3 follows salesforce/ja3 (and tshark's ``tls.handshake.ja3``): the decimal string
``SSLVersion,Ciphers,Extensions,EllipticCurves,EllipticCurvePointFormats`` with GREASE
values removed, and its MD5. JA4 follows FoxIO's current specification
(github.com/FoxIO-LLC/ja4, technical_details/JA4.md): its first character is the
transport (``t`` TCP, ``q`` QUIC, ``d`` DTLS), and the version is the highest offered
by protocol, so DTLS 1.3 (0xfefc, ``d3``) ranks above DTLS 1.2 (0xfefd, ``d2``) and
DTLS 1.0 (0xfeff, ``d1``) though its number is lower.
"""

from __future__ import annotations

from itertools import filterfalse

from clienthello._model import GREASE_VALUES, ClientHello

__all__ = ["ja3", "ja3_string", "ja4", "ja4_r", "ja4_version"]

_SERVER_NAME = 0x0000
_ALPN = 0x0010

# JA4 §"TLS Version": two characters per version; unknown versions give "00".
_JA4_VERSIONS = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
_JA4_TRANSPORTS = {"tcp": "t", "quic": "q", "dtls": "d"}
# JA4's sorted extension list leaves out the two its prefix already counts.
_NOT_IN_JA4_EXTENSIONS = frozenset({_SERVER_NAME, _ALPN})
_is_grease = GREASE_VALUES.__contains__
_hex4 = "{:04x}".format


def ja3_string(hello: ClientHello) -> str:
    """The JA3 string, e.g. ``771,4865-4866,0-23-65281,29-23,0``."""
    ciphers = "-".join(map(str, filterfalse(_is_grease, hello.cipher_suites)))
    extensions = "-".join(map(str, filterfalse(_is_grease, hello.extension_types)))
    groups = "-".join(map(str, filterfalse(_is_grease, hello.supported_groups or ())))
    formats = "-".join(map(str, hello.ec_point_formats or ()))
    return f"{hello.legacy_version},{ciphers},{extensions},{groups},{formats}"


def ja3(hello: ClientHello) -> str:
    """The JA3 fingerprint: the MD5 hex digest of `ja3_string`."""
    import hashlib  # here, not at the top: it loads OpenSSL, which `import clienthello` need not

    return hashlib.md5(ja3_string(hello).encode("ascii"), usedforsecurity=False).hexdigest()


def ja4_version(hello: ClientHello) -> str:
    """JA4's two-character version: the highest non-GREASE supported_versions entry
    if the extension is present, else legacy_version ("highest" by protocol, see
    `ClientHello.max_version`)."""
    return _JA4_VERSIONS.get(hello.max_version, "00")


def _alpn_chars(hello: ClientHello) -> str:
    if not hello.alpn_protocols or not hello.alpn_protocols[0]:
        return "00"
    first = hello.alpn_protocols[0]
    a, b = chr(first[0]), chr(first[-1])
    if a.isascii() and a.isalnum() and b.isascii() and b.isalnum():
        return a + b
    # JA4 spec: a non-alphanumeric first or last byte gives the first and last
    # characters of the value's hex form instead.
    hexed = first.hex()
    return hexed[0] + hexed[-1]


def _ja4_parts(hello: ClientHello, transport: str | None) -> tuple[str, str, str]:
    if transport is None:
        transport = "dtls" if hello.dtls else "tcp"
    try:
        proto = _JA4_TRANSPORTS[transport]
    except KeyError:
        raise ValueError(f"transport must be one of {sorted(_JA4_TRANSPORTS)}") from None
    ciphers = sorted(map(_hex4, filterfalse(_is_grease, hello.cipher_suites)))
    ext_types = list(filterfalse(_is_grease, hello.extension_types))
    sni = "d" if _SERVER_NAME in ext_types else "i"
    prefix = (
        f"{proto}{ja4_version(hello)}{sni}{min(len(ciphers), 99):02d}"
        f"{min(len(ext_types), 99):02d}{_alpn_chars(hello)}"
    )
    exts = sorted(map(_hex4, filterfalse(_NOT_IN_JA4_EXTENSIONS.__contains__, ext_types)))
    sigs = list(map(_hex4, filterfalse(_is_grease, hello.signature_algorithms or ())))
    ext_part = ",".join(exts)
    if sigs:
        ext_part += "_" + ",".join(sigs)
    return prefix, ",".join(ciphers), ext_part


def _hash12(text: str) -> str:
    import hashlib

    if not text:
        return "000000000000"
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


def ja4(hello: ClientHello, transport: str | None = None) -> str:
    """The JA4 fingerprint, e.g. ``t13d1516h2_8daaf6152771_e5627efa2ab1``.

    Args:
        hello: the ClientHello.
        transport: ``"tcp"``, ``"quic"`` or ``"dtls"`` (JA4's first character:
            ``t``, ``q``, ``d``). None (the default) means ``"dtls"`` for a DTLS hello
            (`ClientHello.dtls`) and ``"tcp"`` otherwise; a hello from QUIC CRYPTO
            frames looks like a TLS one, so pass ``"quic"`` for it.

    Raises:
        ValueError: ``transport`` is not one of the three.
    """
    prefix, ciphers, exts = _ja4_parts(hello, transport)
    return f"{prefix}_{_hash12(ciphers)}_{_hash12(exts)}"


def ja4_r(hello: ClientHello, transport: str | None = None) -> str:
    """JA4's raw form: the sorted lists the hashes of `ja4` are taken over."""
    prefix, ciphers, exts = _ja4_parts(hello, transport)
    return f"{prefix}_{ciphers}_{exts}"
