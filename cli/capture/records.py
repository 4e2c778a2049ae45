"""What the capture engine yields: a `HelloRecord` per ClientHello, a `Problem` per fault.

A record's fields follow tshark's conventions (`RECORD_KEYS` are the keys shared with
the public corpus' expected answers); `hello_fields` derives them from a parsed
`clienthello.ClientHello` and is shared with other commands and ``captures/make.py``.
An input that cannot be read at all raises `CaptureError` instead.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import operator
import socket
from dataclasses import dataclass, field
from typing import Any

import clienthello
from clienthello import GREASE_VALUES, ClientHello

__all__ = [
    "HelloRecord",
    "Problem",
    "CaptureError",
    "RECORD_KEYS",
    "hello_fields",
    "format_ts",
    "EMPTY_FIELDS",
    "AFTER_HELLO_RETRY_REQUEST",
    "AFTER_HELLO_VERIFY_REQUEST",
    "AFTER_RETRY",
]

# The record keys: the first sixteen are shared with ../shared/corpus/public/*.expected.jsonl
# (tshark's oracle); ``after`` and ``quic_version`` are ours (see `HelloRecord`).
RECORD_KEYS: tuple[str, ...] = (
    "ts", "src", "sport", "dst", "dport", "transport", "sni", "alpn", "versions",
    "ciphers", "extensions", "groups", "sig_algs", "ja3", "ja4", "error",
    "after", "quic_version",
)  # fmt: skip

# What a repeated hello answers (``HelloRecord.after``).
AFTER_HELLO_RETRY_REQUEST = "hello_retry_request"  # TLS 1.3 (TCP, DTLS 1.3)
AFTER_HELLO_VERIFY_REQUEST = "hello_verify_request"  # DTLS 1.0/1.2 cookie exchange
AFTER_RETRY = "retry"  # QUIC Retry packet


class CaptureError(Exception):
    """A capture file that cannot be read at all (missing, not a capture, bad header)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong in an input: ``fatal`` problems mean some of it was unreadable.

    Attributes:
        file: the input's name (``"-"`` for standard input).
        message: one line, for a person.
        fatal: True when bytes of the input could not be read (exit status 1), False
            for a warning (e.g. packets cut by the capture's snaplen).
        frame: the 1-based packet number concerned, if any.
    """

    file: str
    message: str
    fatal: bool = True
    frame: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}: packet {self.frame}: " if self.frame else f"{self.file}: "
        return where + self.message


@dataclass(frozen=True, slots=True)
class HelloRecord:
    """One ClientHello seen in a capture (or one that could not be parsed).

    The first eighteen fields are `RECORD_KEYS`, with tshark's conventions: ``ts`` is
    epoch seconds as a string with nine decimals, lists are empty (never null) when
    the extension is absent, ``alpn`` is UTF-8 with backslash escapes, ``ja3`` is null
    for an SSLv2 hello. ``transport`` is ``tcp``, ``quic`` or ``dtls`` (JA4's first
    character follows it). ``error`` is None for a parsed hello, else the reason; then
    the hello fields hold what was read before the cut or the fault (a partial parse;
    empty if nothing could be), and ``ja3``/``ja4`` are null.

    ``after`` says what made the client send this hello again: None for a first hello,
    ``"retry"`` (a QUIC Retry), ``"hello_verify_request"`` (a DTLS cookie exchange) or
    ``"hello_retry_request"`` (TLS 1.3). ``quic_version`` names the QUIC version
    (``"v1"``, ``"v2"``, ``"draft-29"``, ...) of a QUIC hello, else None.

    ``frame`` is the packet (1-based, per file) that completed the hello, ``file`` the
    input's name, ``hello`` the parsed `clienthello.ClientHello` (not serialised).
    """

    ts: str
    src: str
    sport: int
    dst: str
    dport: int
    transport: str
    sni: str | None
    alpn: list[str]
    versions: list[int]
    ciphers: list[int]
    extensions: list[int]
    groups: list[int]
    sig_algs: list[int]
    ja3: str | None
    ja4: str | None
    error: str | None
    after: str | None = None
    quic_version: str | None = None
    legacy_version: int | None = None
    sni_problems: list[str] = field(default_factory=list)
    sslv2: bool = False
    frame: int = 0
    file: str = ""
    hello: ClientHello | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data: `RECORD_KEYS` first, then the extras."""
        return dict(zip(_DICT_KEYS, _dict_values(self), strict=True))

    def replace(self, **changes: Any) -> HelloRecord:
        """A copy with some fields changed: `dataclasses.replace`, in 4 us instead of 6.5.

        A parallel run copies every record twice (frame numbers relative to its part
        in the worker, the file's in the parent), so this is on its critical path.

        Raises:
            TypeError: a name that is not a field.
        """
        unknown = changes.keys() - _FIELD_SET
        if unknown:
            raise TypeError(f"HelloRecord has no field {', '.join(sorted(unknown))}")
        new = _new_object(HelloRecord)
        for name, value in zip(_FIELDS, _all_values(self), strict=True):
            _set_attribute(new, name, value)
        for name, value in changes.items():
            _set_attribute(new, name, value)
        return new


# The fields `HelloRecord.to_dict` gives, in order, and one C-level getter for them all.
_DICT_KEYS = tuple(f.name for f in dataclasses.fields(HelloRecord) if f.name != "hello")
_dict_values = operator.attrgetter(*_DICT_KEYS)
_FIELDS = tuple(f.name for f in dataclasses.fields(HelloRecord))
_FIELD_SET = frozenset(_FIELDS)
_all_values = operator.attrgetter(*_FIELDS)
# A frozen dataclass's fields are set through object.__setattr__, as its __init__ does.
_new_object = object.__new__
_set_attribute = object.__setattr__


@functools.lru_cache(maxsize=65536)
def address_text(raw: bytes) -> str:
    """A 4- or 16-byte address as text (``"192.0.2.1"``, ``"2001:db8::1"``); cached, as
    a capture names the same hosts again and again."""
    if len(raw) == 4:  # inet_ntop: 0.3 us where ipaddress takes 7 (IPv4 text is one form)
        return socket.inet_ntop(socket.AF_INET, raw)
    return str(ipaddress.ip_address(raw))


def format_ts(ts_ns: int) -> str:
    """Epoch nanoseconds as tshark's ``frame.time_epoch``: ``"1675707151.805776000"``."""
    sec, ns = divmod(ts_ns, 1_000_000_000)
    return f"{sec}.{ns:09d}"


def _alpn_text(proto: bytes) -> str:
    return proto.decode("utf-8", "backslashreplace")


def hello_fields(hello: ClientHello, transport: str = "tcp") -> dict[str, Any]:
    """The record fields derived from a parsed hello (shared with other commands).

    Args:
        hello: a ClientHello; one read partially (``hello.complete`` False) gives the
            fields it holds, no fingerprints, and its error as ``error``.
        transport: ``tcp``, ``quic`` or ``dtls``, for JA4's first character.
    """
    ja3: str | None = None
    ja4: str | None = None
    if hello.complete:
        ja3, ja4 = _fingerprints(hello, transport)
    return {
        "sni": hello.server_name,
        "alpn": [_alpn_text(p) for p in hello.alpn_protocols or ()],
        "versions": list(hello.supported_versions or ()),
        "ciphers": list(hello.cipher_suites),
        "extensions": list(hello.extension_types),
        "groups": list(hello.supported_groups or ()),
        "sig_algs": list(hello.signature_algorithms or ()),
        "ja3": ja3,
        "ja4": ja4,
        "error": None if hello.error is None else str(hello.error),
        "legacy_version": None if "legacy_version" in hello.missing else hello.legacy_version,
        "sni_problems": list(hello.server_name_problems),
        "sslv2": hello.sslv2,
    }


def _fingerprints(hello: ClientHello, transport: str) -> tuple[str | None, str | None]:
    """JA3 and JA4 of a complete hello, cached per hello shape.

    The shape is every value the two depend on, with GREASE values (random per
    connection in Chrome and Safari) all read as 0x0a0a, which neither fingerprint
    counts: a client that sends the same hello again costs a lookup.
    """
    grease = _AS_GREASE.get
    cs, ext = hello.cipher_suites, hello.extension_types
    groups, versions = hello.supported_groups or (), hello.supported_versions or ()
    key = (
        transport, hello.sslv2, hello.legacy_version, tuple(map(grease, cs, cs)),
        tuple(map(grease, ext, ext)), tuple(map(grease, groups, groups)),
        tuple(map(grease, versions, versions)), hello.ec_point_formats,
        hello.alpn_protocols, hello.signature_algorithms,
    )  # fmt: skip
    found = _FINGERPRINTS.get(key)
    if found is not None:
        return found
    ja3: str | None = None
    ja4: str | None = None
    try:
        ja3 = None if hello.sslv2 else clienthello.ja3(hello)
    except (ValueError, KeyError):  # a fingerprint the library refuses for this hello
        ja3 = None
    try:
        ja4 = clienthello.ja4(hello, transport=transport)
    except (ValueError, KeyError):
        ja4 = None
    if len(_FINGERPRINTS) >= _FINGERPRINTS_KEPT:
        _FINGERPRINTS.clear()
    _FINGERPRINTS[key] = ja3, ja4
    return ja3, ja4


_AS_GREASE = dict.fromkeys(GREASE_VALUES, 0x0A0A)
_FINGERPRINTS: dict[tuple[Any, ...], tuple[str | None, str | None]] = {}
_FINGERPRINTS_KEPT = 4096  # shapes; the cache starts over when full


# The hello fields of a record whose hello could not be parsed (``error`` is set).
EMPTY_FIELDS: dict[str, Any] = {
    "sni": None, "alpn": [], "versions": [], "ciphers": [], "extensions": [], "groups": [],
    "sig_algs": [], "ja3": None, "ja4": None,
}  # fmt: skip
