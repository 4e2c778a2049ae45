"""clienthello: read a TLS ClientHello from raw bytes, incrementally, without I/O.

    >>> import clienthello
    >>> clienthello.sni(data)            # the hot path: host_name or None
    >>> hello = clienthello.parse(data)  # every field, as a frozen ClientHello
    >>> reader = clienthello.Reader()    # for bytes that arrive in pieces
    >>> reader.feed(chunk)               # None until the hello is complete
    >>> dtls = clienthello.DtlsReader()  # DTLS: feed the client's datagrams
    >>> dtls.feed(datagram)              # a DtlsClientHello once one is complete
    >>> clienthello.parse(cut, partial=True)  # what a cut or faulty hello holds

Every failure is a `ClientHelloError`: `NeedMoreData`, `NotTLS`, `MalformedHello`
(and its subclass `HelloTooLarge`).
"""

from clienthello._errors import (
    ClientHelloError,
    HelloTooLarge,
    MalformedHello,
    NeedMoreData,
    NotTLS,
)
from clienthello._model import (
    GREASE_VALUES,
    ClientHello,
    EncryptedClientHello,
    Extension,
    ExtensionType,
    is_grease,
)
from clienthello._names import (
    cipher_suite_name,
    extension_name,
    group_name,
    signature_scheme_name,
    version_name,
)
from clienthello._parse import parse, parse_handshake
from clienthello._reader import Reader
from clienthello._sni import sni
from clienthello._transport_parameters import PreferredAddress, TransportParameter
from clienthello.dtls import DtlsClientHello, DtlsReader, parse_dtls_handshake
from clienthello.fingerprints import ja3, ja3_string, ja4, ja4_r

__all__ = [
    # parsing
    "parse",
    "parse_handshake",
    "sni",
    "Reader",
    "DtlsReader",
    "DtlsClientHello",
    "parse_dtls_handshake",
    # model
    "ClientHello",
    "Extension",
    "EncryptedClientHello",
    "TransportParameter",
    "PreferredAddress",
    "ExtensionType",
    "GREASE_VALUES",
    "is_grease",
    # fingerprints
    "ja3",
    "ja3_string",
    "ja4",
    "ja4_r",
    # display names
    "cipher_suite_name",
    "extension_name",
    "group_name",
    "signature_scheme_name",
    "version_name",
    # errors
    "ClientHelloError",
    "NeedMoreData",
    "NotTLS",
    "MalformedHello",
    "HelloTooLarge",
]
