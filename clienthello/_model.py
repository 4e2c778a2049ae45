"""The parsed ClientHello: frozen, raw-preserving dataclasses with RFC 8446 names."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple, cast

from clienthello._errors import ClientHelloError
from clienthello._transport_parameters import TransportParameter, split_transport_parameters

__all__ = [
    "ClientHello",
    "Extension",
    "EncryptedClientHello",
    "GREASE_VALUES",
    "is_grease",
    "ExtensionType",
    "version_order",
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
    QUIC_TRANSPORT_PARAMETERS = 0x39  # RFC 9001 §8.2
    # The code point of QUIC drafts 27 to 34 (same varint encoding); old Chrome and
    # curl send it next to 0x39.
    QUIC_TRANSPORT_PARAMETERS_DRAFT = 0xFFA5
    ENCRYPTED_CLIENT_HELLO = 0xFE0D


def version_order(version: int) -> int:
    """A sort key that orders versions by protocol age, DTLS included.

    DTLS versions count down (RFC 9147 §5.3: 1.0 is 0xfeff, 1.2 0xfefd, 1.3 0xfefc),
    so they are mapped onto an increasing scale; TLS and SSL values are their own key.
    """
    if version >> 8 == 0xFE:
        return 0x10000 + (0xFF - (version & 0xFF))
    return version


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


class EncryptedClientHello(NamedTuple):
    """The encrypted_client_hello extension (0xfe0d, draft-ietf-tls-esni) as sent.

    A named tuple, like `Extension`: immutable, and cheap to build per hello.

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


# Not slots=True: on Python 3.10 and 3.11 a frozen slotted dataclass answers an
# assignment to one of its properties with a TypeError from a stale super() cell
# instead of FrozenInstanceError, and a __dict__ lets `extensions` be cached.
@dataclass(frozen=True)
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
    raw: bytes = field(repr=False)
    sslv2: bool = False
    # The extensions as (type, offset in raw, data length) and the decoded values of
    # the known ones (in TYPED_FIELDS order). Kept as plain tuples because building a
    # dozen objects per hello is most of the cost of a parse; the properties below
    # present them.
    _extension_tuples: tuple[tuple[int, int, int], ...] = field(default=(), repr=False)
    _typed: tuple[Any, ...] = field(default=(), repr=False)
    # The fields below keep their class defaults on the hot path (parse_body does not
    # set them), so a TLS parse pays nothing for them.
    cookie: bytes | None = field(default=None, repr=False)
    complete: bool = True
    error: ClientHelloError | None = field(default=None, compare=False)
    missing: tuple[str, ...] = ()

    def __repr__(self) -> str:
        extra = ", dtls=True" if self.cookie is not None else ""
        if not self.complete:
            extra += f", complete=False, missing={list(self.missing)}"
        return (
            f"ClientHello(legacy_version=0x{self.legacy_version:04x}, "
            f"server_name={self.server_name!r}, cipher_suites={len(self.cipher_suites)}, "
            f"extensions={list(self.extension_types)}, sslv2={self.sslv2}{extra})"
        )

    @property
    def dtls(self) -> bool:
        """Whether this is a DTLS ClientHello (it has a cookie field, maybe empty)."""
        return self.cookie is not None

    @cached_property
    def extensions(self) -> tuple[Extension, ...]:
        """Every extension in wire order, GREASE and unknown types included."""
        raw = self.raw
        return tuple(
            Extension(ext_type, raw[offset + 4 : offset + 4 + length], offset)
            for ext_type, offset, length in self._extension_tuples
        )

    def _get(self, index: int) -> Any:
        typed = self._typed
        return typed[index] if typed else _TYPED_DEFAULTS[index]

    @property
    def server_name(self) -> str | None:
        """The first host_name (see the class docstring), None without the extension."""
        return cast("str | None", self._get(0))

    @property
    def server_name_raw(self) -> tuple[bytes, ...] | None:
        """Every host_name exactly as sent, None without the extension."""
        return cast("tuple[bytes, ...] | None", self._get(1))

    @property
    def server_name_problems(self) -> tuple[str, ...]:
        """What is odd about the server name; empty when it is a plain host name."""
        return cast("tuple[str, ...]", self._get(2))

    @property
    def alpn_protocols(self) -> tuple[bytes, ...] | None:
        """application_layer_protocol_negotiation protocol names (RFC 7301)."""
        return cast("tuple[bytes, ...] | None", self._get(3))

    @property
    def supported_versions(self) -> tuple[int, ...] | None:
        """supported_versions (RFC 8446 §4.2.1), GREASE kept."""
        return cast("tuple[int, ...] | None", self._get(4))

    @property
    def supported_groups(self) -> tuple[int, ...] | None:
        """supported_groups (RFC 8446 §4.2.7), GREASE kept."""
        return cast("tuple[int, ...] | None", self._get(5))

    @property
    def signature_algorithms(self) -> tuple[int, ...] | None:
        """signature_algorithms (RFC 8446 §4.2.3), in preference order."""
        return cast("tuple[int, ...] | None", self._get(6))

    @property
    def ec_point_formats(self) -> tuple[int, ...] | None:
        """ec_point_formats (RFC 8422 §5.1.2)."""
        return cast("tuple[int, ...] | None", self._get(7))

    @property
    def key_share_groups(self) -> tuple[int, ...] | None:
        """The groups of the key_share entries (RFC 8446 §4.2.8), in order."""
        return cast("tuple[int, ...] | None", self._get(8))

    @property
    def psk_key_exchange_modes(self) -> tuple[int, ...] | None:
        """psk_key_exchange_modes (RFC 8446 §4.2.9)."""
        return cast("tuple[int, ...] | None", self._get(9))

    @property
    def has_pre_shared_key(self) -> bool:
        """Whether a pre_shared_key extension (RFC 8446 §4.2.11) is present."""
        return bool(self._get(10))

    @property
    def ech(self) -> EncryptedClientHello | None:
        """The encrypted_client_hello extension, None when absent."""
        return cast("EncryptedClientHello | None", self._get(11))

    @cached_property
    def quic_transport_parameters(self) -> tuple[TransportParameter, ...] | None:
        """The quic_transport_parameters (RFC 9000 §18) in wire order, None if absent.

        Read from extension 0x39, or from the draft code point 0xffa5 when 0x39 is
        absent. Decoded on first access, not by `parse`; ``.decoded`` of each reads
        its value (see `TransportParameter`).

        Raises:
            MalformedHello: an id or length varint is cut short or a value overruns
                the extension; the offset is into ``raw``.
        """
        found = None
        for index, (ext_type, offset, length) in enumerate(self._extension_tuples):
            if ext_type == ExtensionType.QUIC_TRANSPORT_PARAMETERS:
                found = (index, ext_type, offset, length)
                break
            if ext_type == ExtensionType.QUIC_TRANSPORT_PARAMETERS_DRAFT and found is None:
                found = (index, ext_type, offset, length)
        if found is None:
            return None
        index, ext_type, offset, length = found
        name = "quic_transport_parameters" + ("" if ext_type == 0x39 else "_draft")
        return split_transport_parameters(
            self.raw, offset + 4, offset + 4 + length, f"extensions[{index}] {name}"
        )

    def quic_transport_parameter(self, param_id: int) -> TransportParameter | None:
        """The first transport parameter with ``param_id``, or None."""
        for param in self.quic_transport_parameters or ():
            if param.id == param_id:
                return param
        return None

    @property
    def max_idle_timeout(self) -> int | None:
        """max_idle_timeout in milliseconds (RFC 9000 §18.2), None if not sent."""
        param = self.quic_transport_parameter(0x01)
        return None if param is None else cast(int, param.decoded)

    @property
    def extension_types(self) -> tuple[int, ...]:
        """Extension types in wire order."""
        return tuple(ext[0] for ext in self._extension_tuples)

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
        if any(e[0] in GREASE_VALUES for e in self._extension_tuples):
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
        """The highest version offered, GREASE ignored (supported_versions if present).

        "Highest" by protocol, not by number: DTLS 1.3 (0xfefc) is above DTLS 1.2
        (0xfefd), which is above DTLS 1.0 (0xfeff); see `version_order`.
        """
        if self.supported_versions:
            real = [v for v in self.supported_versions if v not in GREASE_VALUES]
            if real:
                return max(real, key=version_order)
        return self.legacy_version


# The order of ClientHello._typed, and each value when its extension is absent.
TYPED_FIELDS: tuple[str, ...] = (
    "server_name",
    "server_name_raw",
    "server_name_problems",
    "alpn_protocols",
    "supported_versions",
    "supported_groups",
    "signature_algorithms",
    "ec_point_formats",
    "key_share_groups",
    "psk_key_exchange_modes",
    "has_pre_shared_key",
    "ech",
)
_TYPED_DEFAULTS: tuple[Any, ...] = (
    None,
    None,
    (),
    None,
    None,
    None,
    None,
    None,
    None,
    None,
    False,
    None,
)
