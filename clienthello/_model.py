"""The parsed ClientHello: frozen, raw-preserving dataclasses with RFC 8446 names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "ClientHello",
    "Extension",
    "EncryptedClientHello",
    "GREASE_VALUES",
    "is_grease",
    "ExtensionType",
]

# RFC 8701 §2: 0x0A0A, 0x1A1A, ..., 0xFAFA for 16-bit fields.
GREASE_VALUES: frozenset[int] = frozenset(0x0A0A + 0x1010 * i for i in range(16))
# RFC 8701 §2: 0x0B, 0x2A, ..., 0xFA for the 8-bit psk_key_exchange_modes.
GREASE_PSK_MODES: frozenset[int] = frozenset(0x0B + 0x1F * i for i in range(8))


def is_grease(value: int) -> bool:
    """Whether a 16-bit value is one of the RFC 8701 GREASE values."""
    return value in GREASE_VALUES


class ExtensionType:
    """Extension code points this package decodes (IANA TLS ExtensionType Values)."""

    SERVER_NAME = 0
    SUPPORTED_GROUPS = 10
    EC_POINT_FORMATS = 11
    SIGNATURE_ALGORITHMS = 13
    ALPN = 16
    PRE_SHARED_KEY = 41
    SUPPORTED_VERSIONS = 43
    PSK_KEY_EXCHANGE_MODES = 45
    KEY_SHARE = 51
    ENCRYPTED_CLIENT_HELLO = 0xFE0D


class Extension(NamedTuple):
    """One extension as sent: its type, its body, and where it starts.

    A named tuple rather than a dataclass: a hello carries a dozen or more of
    these and a tuple is several times cheaper to build, while just as immutable.

    Attributes:
        type: the ExtensionType code point (GREASE and unknown values kept).
        data: the extension_data bytes, without the 4-byte type/length header.
        offset: position of the type field within ``ClientHello.raw``.
    """

    type: int
    data: bytes
    offset: int = 0


@dataclass(frozen=True, slots=True)
class EncryptedClientHello:
    """The encrypted_client_hello extension (0xfe0d, draft-ietf-tls-esni) as sent.

    Attributes:
        type: 0 for an outer ClientHello, 1 for an inner one.
        kdf_id, aead_id: the HPKE cipher suite (outer only, else None).
        config_id: the ECHConfig id (outer only, else None).
        enc_length, payload_length: sizes of ``enc`` and ``payload`` (outer only).
    """

    type: int
    kdf_id: int | None = None
    aead_id: int | None = None
    config_id: int | None = None
    enc_length: int | None = None
    payload_length: int | None = None


@dataclass(frozen=True, slots=True)
class ClientHello:
    """A ClientHello, every field as sent, in wire order.

    Typed accessors (``server_name``, ``alpn_protocols``, ...) are None when their
    extension is absent and an empty tuple when it is present but empty.

    ``server_name`` is the first host_name of the server_name extension, decoded as
    UTF-8 with backslash escapes for bytes that are not. A name that is not a plain
    ASCII host name is kept, never dropped: ``server_name_raw`` holds every host_name
    exactly as sent and ``server_name_problems`` says what is odd about it
    (``"non-ascii"``, ``"empty"``, ``"multiple host_names"``, ``"trailing dot"``,
    ``"no host_name"``, ``"invalid characters"``). A router must treat a name with
    problems (other than a trailing dot) as unmatched.
    """

    legacy_version: int
    random: bytes = field(repr=False)
    legacy_session_id: bytes = field(repr=False)
    cipher_suites: tuple[int, ...]
    legacy_compression_methods: bytes
    extensions: tuple[Extension, ...]
    raw: bytes = field(repr=False)
    server_name: str | None = None
    server_name_raw: tuple[bytes, ...] | None = field(default=None, repr=False)
    server_name_problems: tuple[str, ...] = ()
    alpn_protocols: tuple[bytes, ...] | None = None
    supported_versions: tuple[int, ...] | None = None
    supported_groups: tuple[int, ...] | None = None
    signature_algorithms: tuple[int, ...] | None = None
    ec_point_formats: tuple[int, ...] | None = None
    key_share_groups: tuple[int, ...] | None = None
    psk_key_exchange_modes: tuple[int, ...] | None = None
    has_pre_shared_key: bool = False
    ech: EncryptedClientHello | None = None
    sslv2: bool = False

    @property
    def extension_types(self) -> tuple[int, ...]:
        """Extension types in wire order."""
        return tuple(ext.type for ext in self.extensions)

    def extension(self, ext_type: int) -> Extension | None:
        """The first extension of ``ext_type``, or None."""
        for ext in self.extensions:
            if ext.type == ext_type:
                return ext
        return None

    @property
    def grease(self) -> bool:
        """Whether any RFC 8701 GREASE value appears anywhere in the hello."""
        if any(v in GREASE_VALUES for v in self.cipher_suites):
            return True
        if any(e.type in GREASE_VALUES for e in self.extensions):
            return True
        for values in (
            self.supported_versions,
            self.supported_groups,
            self.signature_algorithms,
            self.key_share_groups,
        ):
            if values and any(v in GREASE_VALUES for v in values):
                return True
        if self.psk_key_exchange_modes and any(
            m in GREASE_PSK_MODES for m in self.psk_key_exchange_modes
        ):
            return True
        if self.alpn_protocols:
            for proto in self.alpn_protocols:
                if len(proto) == 2 and proto[0] == proto[1] and proto[0] & 0x0F == 0x0A:
                    return True
        return False

    @property
    def max_version(self) -> int:
        """The highest version offered, GREASE ignored (supported_versions if present)."""
        if self.supported_versions:
            real = [v for v in self.supported_versions if v not in GREASE_VALUES]
            if real:
                return max(real)
        return self.legacy_version
