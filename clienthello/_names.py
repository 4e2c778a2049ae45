"""Display names for TLS code points: IANA names, GREASE marked, hex for the unknown."""

from __future__ import annotations

from clienthello._model import GREASE_VALUES

__all__ = [
    "cipher_suite_name",
    "extension_name",
    "group_name",
    "signature_scheme_name",
    "version_name",
]


def _lookup(table_name: str, value: int) -> str:
    # The table module is imported on first use, so `import clienthello` stays cheap.
    from clienthello import _iana

    if value in GREASE_VALUES:
        return f"GREASE (0x{value:04x})"
    table: dict[int, str] = getattr(_iana, table_name)
    name = table.get(value)
    if name is None:
        width = 6 if value > 0xFFFF else 4
        return f"unknown (0x{value:0{width}x})"
    return name


def cipher_suite_name(value: int) -> str:
    """The IANA name of a cipher suite, e.g. ``TLS_AES_128_GCM_SHA256``."""
    if value > 0xFFFF:  # a 3-byte SSLv2 cipher spec
        return _SSL2_CIPHER_SPECS.get(value, f"SSL2 cipher spec (0x{value:06x})")
    return _lookup("CIPHER_SUITES", value)


def extension_name(value: int) -> str:
    """The IANA name of an extension type, e.g. ``server_name``."""
    return _lookup("EXTENSIONS", value)


def group_name(value: int) -> str:
    """The IANA name of a supported group, e.g. ``x25519``."""
    return _lookup("GROUPS", value)


def signature_scheme_name(value: int) -> str:
    """The IANA name of a signature scheme, e.g. ``ecdsa_secp256r1_sha256``."""
    return _lookup("SIGNATURE_SCHEMES", value)


def version_name(value: int) -> str:
    """A protocol version's name, e.g. ``TLS 1.3``."""
    return _lookup("VERSIONS", value)


# RFC 6101 appendix E / the SSL 2.0 draft: cipher specs of an SSLv2 CLIENT-HELLO.
_SSL2_CIPHER_SPECS: dict[int, str] = {
    0x010080: "SSL2_RC4_128_WITH_MD5",
    0x020080: "SSL2_RC4_128_EXPORT40_WITH_MD5",
    0x030080: "SSL2_RC2_128_CBC_WITH_MD5",
    0x040080: "SSL2_RC2_128_CBC_EXPORT40_WITH_MD5",
    0x050080: "SSL2_IDEA_128_CBC_WITH_MD5",
    0x060040: "SSL2_DES_64_CBC_WITH_MD5",
    0x0700C0: "SSL2_DES_192_EDE3_CBC_WITH_MD5",
}
