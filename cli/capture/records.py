"""What the capture engine yields: a `HelloRecord` per ClientHello, a `Problem` per fault.

A record's fields follow tshark's conventions (`RECORD_KEYS` are the keys shared with
the public corpus' expected answers); `hello_fields` derives them from a parsed
`clienthello.ClientHello` and is shared with other commands and ``captures/make.py``.
An input that cannot be read at all raises `CaptureError` instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import clienthello
from clienthello import ClientHello

__all__ = [
    "HelloRecord",
    "Problem",
    "CaptureError",
    "RECORD_KEYS",
    "hello_fields",
    "format_ts",
    "EMPTY_FIELDS",
]

# The record keys shared with ../shared/corpus/public/*.expected.jsonl (tshark's oracle).
RECORD_KEYS: tuple[str, ...] = (
    "ts", "src", "sport", "dst", "dport", "transport", "sni", "alpn", "versions",
    "ciphers", "extensions", "groups", "sig_algs", "ja3", "ja4", "error",
)  # fmt: skip


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

    The first sixteen fields are `RECORD_KEYS`, with tshark's conventions: ``ts`` is
    epoch seconds as a string with nine decimals, lists are empty (never null) when
    the extension is absent, ``alpn`` is UTF-8 with backslash escapes, ``ja3`` is null
    for an SSLv2 hello. ``error`` is None for a parsed hello, else the reason; then the
    hello fields are empty.

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
    legacy_version: int | None = None
    sni_problems: list[str] = field(default_factory=list)
    sslv2: bool = False
    frame: int = 0
    file: str = ""
    hello: ClientHello | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data: `RECORD_KEYS` first, then the extras."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name != "hello":
                out[f.name] = getattr(self, f.name)
        return out


def format_ts(ts_ns: int) -> str:
    """Epoch nanoseconds as tshark's ``frame.time_epoch``: ``"1675707151.805776000"``."""
    sec, ns = divmod(ts_ns, 1_000_000_000)
    return f"{sec}.{ns:09d}"


def _alpn_text(proto: bytes) -> str:
    return proto.decode("utf-8", "backslashreplace")


def hello_fields(hello: ClientHello) -> dict[str, Any]:
    """The record fields derived from a parsed hello (shared with other commands)."""
    try:
        ja3: str | None = None if hello.sslv2 else clienthello.ja3(hello)
    except (ValueError, KeyError):  # a fingerprint the library refuses for this hello
        ja3 = None
    try:
        ja4: str | None = clienthello.ja4(hello, transport="tcp")
    except (ValueError, KeyError):
        ja4 = None
    return {
        "sni": hello.server_name,
        "alpn": [_alpn_text(p) for p in hello.alpn_protocols or ()],
        "versions": list(hello.supported_versions or ()),
        "ciphers": list(hello.cipher_suites),
        "extensions": [e.type for e in hello.extensions],
        "groups": list(hello.supported_groups or ()),
        "sig_algs": list(hello.signature_algorithms or ()),
        "ja3": ja3,
        "ja4": ja4,
        "error": None,
        "legacy_version": hello.legacy_version,
        "sni_problems": list(hello.server_name_problems),
        "sslv2": hello.sslv2,
    }


# The hello fields of a record whose hello could not be parsed (``error`` is set).
EMPTY_FIELDS: dict[str, Any] = {
    "sni": None, "alpn": [], "versions": [], "ciphers": [], "extensions": [], "groups": [],
    "sig_algs": [], "ja3": None, "ja4": None,
}  # fmt: skip
