"""The full parse: a ClientHello handshake message into a `ClientHello`, every field checked.

Every length-prefixed vector is read against the block that encloses it and must end
exactly where its length says (RFC 8446 §3.4); a vector that overruns its block, or a
block with bytes left over, is a `MalformedHello` naming the field and its offset.
Offsets are first counted from the start of the handshake message and then mapped to
the caller's bytes by `clienthello._record.Handshake`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from clienthello._errors import (
    ClientHelloError,
    HelloTooLarge,
    MalformedHello,
    NeedMoreData,
    NotTLS,
)
from clienthello._model import (
    _TYPED_DEFAULTS,
    TYPED_FIELDS,
    ClientHello,
    EncryptedClientHello,
    ExtensionType,
)
from clienthello._record import (
    CONTENT_TYPE_HANDSHAKE,
    HANDSHAKE_CLIENT_HELLO,
    HANDSHAKE_HEADER,
    MAX_HELLO_LENGTH,
    MAX_RECORD_LENGTH,
    RECORD_HEADER,
    Buffer,
    Handshake,
    read_handshake,
)
from clienthello._sni import (
    HOSTNAME_CHARS,
    decode_server_name,
    locate_fields,
    locate_session_id,
    locate_tail,
)
from clienthello._sni import overrun as _overrun
from clienthello._sslv2 import parse_sslv2

__all__ = ["parse", "parse_handshake", "parse_body", "parse_dtls_body", "DTLS_HANDSHAKE_HEADER"]

# RFC 6347 §4.2.2: msg_type, length (24), message_seq (16), fragment_offset (24),
# fragment_length (24).
DTLS_HANDSHAKE_HEADER = 12

_u16 = struct.Struct("!H").unpack_from
_u16x2 = struct.Struct("!HH").unpack_from
_unpack_from = struct.unpack_from
_new_object = object.__new__
_set_attribute = object.__setattr__


_EXTENSION_FIELDS = {
    ExtensionType.SERVER_NAME: "server_name",
    ExtensionType.SUPPORTED_GROUPS: "supported_groups",
    ExtensionType.EC_POINT_FORMATS: "ec_point_formats",
    ExtensionType.SIGNATURE_ALGORITHMS: "signature_algorithms",
    ExtensionType.ALPN: "application_layer_protocol_negotiation",
    ExtensionType.PRE_SHARED_KEY: "pre_shared_key",
    ExtensionType.SUPPORTED_VERSIONS: "supported_versions",
    ExtensionType.PSK_KEY_EXCHANGE_MODES: "psk_key_exchange_modes",
    ExtensionType.KEY_SHARE: "key_share",
    ExtensionType.QUIC_TRANSPORT_PARAMETERS: "quic_transport_parameters",
    ExtensionType.QUIC_TRANSPORT_PARAMETERS_DRAFT: "quic_transport_parameters_draft",
    ExtensionType.ENCRYPTED_CLIENT_HELLO: "encrypted_client_hello",
}


def parse(data: Buffer, partial: bool = False) -> ClientHello:
    """Parse a ClientHello from TLS records.

    Args:
        data: bytes from the first record header on. A hello split across several
            records is reassembled; bytes after the hello are ignored. An
            SSLv2-compatible CLIENT-HELLO record is accepted too.
        partial: instead of raising `NeedMoreData` or `MalformedHello`, return what
            was read before the cut or the fault: a ClientHello with ``complete``
            False, the error in ``error`` and the fields not read in ``missing``
            (see `ClientHello`). `NotTLS` is raised all the same.

    Returns:
        The ClientHello, every field as sent.

    Raises:
        NeedMoreData: the records end before the hello does.
        NotTLS: the bytes are not a TLS (or SSLv2) ClientHello.
        MalformedHello: a length or field is wrong; ``.offset`` is into ``data``.
        HelloTooLarge: the declared handshake length cannot be a ClientHello.
    """
    # The strict path is the whole body of the try; a partial parse only starts
    # where it failed, so `partial` costs the strict path nothing.
    try:
        n = len(data)
        # One record holding the whole hello, the usual case: no joining needed.
        if n > 9 and data[0] == CONTENT_TYPE_HANDSHAKE and data[1] == 3 and data[5] == 1:
            rec_end = 5 + ((data[3] << 8) | data[4])
            hs_end = 9 + ((data[6] << 16) | (data[7] << 8) | data[8])
            if hs_end <= rec_end <= n and rec_end <= 5 + MAX_RECORD_LENGTH:
                try:
                    return parse_body(bytes(data[5:hs_end]))
                except MalformedHello as err:
                    raise err.moved(err.offset + 5) from None
        return _parse_joined(read_handshake(data))
    except (NeedMoreData, MalformedHello) as err:
        if not partial:
            raise
        return _partial_records(data, err)


def parse_handshake(data: Buffer, partial: bool = False) -> ClientHello:
    """Parse a ClientHello from a bare handshake message (type 1, 24-bit length, body).

    For callers that removed the record layer themselves (QUIC CRYPTO frames, pcap
    tools). Bytes after the message are ignored. For DTLS, whose handshake header
    is 12 bytes, see `clienthello.dtls`.

    Args:
        data: the handshake message from its type byte.
        partial: as for `parse`.

    Raises:
        NeedMoreData, NotTLS, MalformedHello, HelloTooLarge: as `parse`.
    """
    try:
        n = len(data)
        if n >= 1 and data[0] != HANDSHAKE_CLIENT_HELLO:
            raise NotTLS(f"handshake type {data[0]}, not ClientHello (1)", 0)
        if n < HANDSHAKE_HEADER:
            raise NeedMoreData(HANDSHAKE_HEADER - n)
        length = (data[1] << 16) | (data[2] << 8) | data[3]
        if length > MAX_HELLO_LENGTH:
            raise HelloTooLarge(
                "handshake.length",
                f"declared length {length} exceeds the limit of {MAX_HELLO_LENGTH}",
                1,
            )
        total = HANDSHAKE_HEADER + length
        if n < total:
            raise NeedMoreData(total - n)
        return _parse_joined(Handshake(bytes(data[:total]), total, [(0, 0)]))
    except (NeedMoreData, MalformedHello) as err:
        if not partial:
            raise
        return parse_partial_body(bytes(data), HANDSHAKE_HEADER, err)


def _parse_joined(handshake: Handshake) -> ClientHello:
    try:
        if handshake.sslv2:
            return parse_sslv2(handshake.data)
        return parse_body(handshake.data)
    except MalformedHello as err:
        raise err.moved(handshake.caller_offset(err.offset)) from None


def _fail(field: str, reason: str, offset: int) -> MalformedHello:
    return MalformedHello(field, reason, offset)


def parse_body(raw: bytes) -> ClientHello:
    """Parse a complete ClientHello handshake message (header included).

    Offsets in errors count from the start of ``raw``.
    """
    end = len(raw)
    sid, cs, comp, ext, ext_end = locate_fields(raw, HANDSHAKE_HEADER, end)
    legacy_version = (raw[4] << 8) | raw[5]
    random = raw[6:38]
    legacy_session_id = raw[sid + 1 : cs]
    cs_len = comp - cs - 2
    cipher_suites = (_U16_ARRAYS.get(cs_len) or _u16_array(cs_len))(raw, cs + 2)
    legacy_compression_methods = raw[comp + 1 : ext]
    if ext == end:
        return ClientHello(
            legacy_version, random, legacy_session_id, cipher_suites,
            legacy_compression_methods, raw,
        )  # fmt: skip
    typed = list(_TYPED_DEFAULTS)
    extensions = _parse_extensions(raw, ext + 2, ext_end, typed)
    if typed[0] is not None:  # server_name decodes to (name, raw names, problems)
        typed[0:3] = typed[0]
    # Built without the dataclass __init__, whose frozen field-by-field setattr costs
    # as much as all the extensions' decoding; the instance is the same.
    hello = _new_object(ClientHello)
    _set_attribute(hello, "__dict__", {
        "legacy_version": legacy_version,
        "random": random,
        "legacy_session_id": legacy_session_id,
        "cipher_suites": cipher_suites,
        "legacy_compression_methods": legacy_compression_methods,
        "raw": raw,
        "sslv2": False,
        "_extension_tuples": extensions,
        "_typed": tuple(typed),
    })  # fmt: skip
    return hello


def parse_dtls_body(raw: bytes) -> ClientHello:
    """Parse a complete DTLS ClientHello message, its 12-byte header included.

    The body is TLS's with ``cookie<0..2^8-1>`` after legacy_session_id (RFC 6347
    §4.2.1; RFC 9147 §5.3 keeps it as legacy_cookie). Offsets in errors count from
    the start of ``raw``.
    """
    end = len(raw)
    pos = DTLS_HANDSHAKE_HEADER
    sid, cookie = locate_session_id(raw, pos, end)
    if cookie + 1 > end:
        raise _fail("cookie", "length missing", cookie)
    cs = cookie + 1 + raw[cookie]
    if cs > end:
        raise _overrun("cookie", raw[cookie], end - cookie - 1, cookie)
    comp, ext, ext_end = locate_tail(raw, cs, end)
    cs_len = comp - cs - 2
    typed = list(_TYPED_DEFAULTS)
    extensions = _parse_extensions(raw, ext + 2, ext_end, typed) if ext < end else ()
    if typed[0] is not None:
        typed[0:3] = typed[0]
    return ClientHello(
        legacy_version=(raw[pos] << 8) | raw[pos + 1],
        random=raw[pos + 2 : pos + 34],
        legacy_session_id=raw[sid + 1 : cookie],
        cipher_suites=(_U16_ARRAYS.get(cs_len) or _u16_array(cs_len))(raw, cs + 2),
        legacy_compression_methods=raw[comp + 1 : ext],
        raw=raw,
        _extension_tuples=extensions,
        _typed=tuple(typed) if extensions else (),
        cookie=raw[cookie + 1 : cs],
    )


# --- the partial parse: every field read whole before a cut or a fault -------------

# Field names in wire order, as ClientHello.missing lists them.
_FIELDS_TLS = (
    "legacy_version",
    "random",
    "legacy_session_id",
    "cipher_suites",
    "legacy_compression_methods",
    "extensions",
)
_FIELDS_DTLS = (*_FIELDS_TLS[:3], "cookie", *_FIELDS_TLS[3:])


def _partial_records(data: Buffer, error: ClientHelloError) -> ClientHello:
    """Join what the records hold of the handshake message, then read it partially."""
    n = len(data)
    if n and data[0] & 0x80:  # SSLv2-compatible: too small to be worth a partial read
        return ClientHello(
            0, b"", b"", (), b"", bytes(data[2:]), sslv2=True,
            complete=False, error=error, missing=_FIELDS_TLS,
        )  # fmt: skip
    parts: list[bytes] = []
    pos = 0
    # The same record checks as read_handshake; the first record that fails them,
    # or the end of the input, ends what there is to read.
    while pos + RECORD_HEADER <= n:
        length = (data[pos + 3] << 8) | data[pos + 4]
        if (
            data[pos] != CONTENT_TYPE_HANDSHAKE
            or data[pos + 1] != 3
            or length == 0
            or length > MAX_RECORD_LENGTH
        ):
            break
        parts.append(bytes(data[pos + RECORD_HEADER : pos + RECORD_HEADER + length]))
        pos += RECORD_HEADER + length
    return parse_partial_body(b"".join(parts), HANDSHAKE_HEADER, error)


def parse_partial_body(
    raw: bytes, header: int, error: ClientHelloError, dtls: bool = False
) -> ClientHello:
    """Read every field of a cut or faulty handshake message that is there whole.

    Args:
        raw: the handshake message bytes available, from the type byte.
        header: the handshake header's size (4 for TLS, 12 for DTLS).
        error: what the strict parse raised; kept in ``ClientHello.error``.
        dtls: whether the body has DTLS's cookie after legacy_session_id.

    Returns:
        A ClientHello with ``complete`` False (see its docstring for what a field
        not read holds). A field is read only if it lies whole within both the
        bytes available and the block its length says encloses it, and passes the
        strict parse's checks; the first that does not ends the reading.
    """
    whole = False  # whether every byte the handshake header declares is there
    if len(raw) >= 4:
        declared = header + ((raw[1] << 16) | (raw[2] << 8) | raw[3])
        whole = len(raw) >= declared
        raw = raw[:declared]
    end = len(raw)
    missing = list(_FIELDS_DTLS if dtls else _FIELDS_TLS)
    typed = list(_TYPED_DEFAULTS)
    extensions: list[tuple[int, int, int]] = []
    version, random, session_id = 0, b"", b""
    cookie: bytes | None = b"" if dtls else None
    suites: tuple[int, ...] = ()
    compression = b""
    pos = header
    for _ in (1,):  # a block to break out of at the first field not there whole
        if pos + 2 > end:
            break
        version = (raw[pos] << 8) | raw[pos + 1]
        missing.remove("legacy_version")
        if pos + 34 > end:
            break
        random = raw[pos + 2 : pos + 34]
        missing.remove("random")
        pos += 34
        if pos + 1 > end or raw[pos] > 32 or pos + 1 + raw[pos] > end:
            break
        session_id = raw[pos + 1 : pos + 1 + raw[pos]]
        missing.remove("legacy_session_id")
        pos += 1 + raw[pos]
        if dtls:
            if pos + 1 > end or pos + 1 + raw[pos] > end:
                break
            cookie = raw[pos + 1 : pos + 1 + raw[pos]]
            missing.remove("cookie")
            pos += 1 + raw[pos]
        if pos + 2 > end:
            break
        length = _u16(raw, pos)[0]
        if length & 1 or pos + 2 + length > end:
            break
        suites = _u16_array(length)(raw, pos + 2)
        missing.remove("cipher_suites")
        pos += 2 + length
        if pos + 1 > end or pos + 1 + raw[pos] > end:
            break
        compression = raw[pos + 1 : pos + 1 + raw[pos]]
        missing.remove("legacy_compression_methods")
        pos += 1 + raw[pos]
        if pos == end:  # no extensions block, unless the bytes were cut right here
            if whole:
                missing.remove("extensions")
            break
        if pos + 2 > end:
            break
        block_end = pos + 2 + _u16(raw, pos)[0]
        filled = _partial_extensions(raw, pos + 2, min(block_end, end), typed, extensions)
        if filled and block_end <= end:
            missing.remove("extensions")
    if typed[0] is not None:
        typed[0:3] = typed[0]
    return ClientHello(
        legacy_version=version,
        random=random,
        legacy_session_id=session_id,
        cipher_suites=suites,
        legacy_compression_methods=compression,
        raw=raw,
        _extension_tuples=tuple(extensions),
        _typed=tuple(typed),
        cookie=cookie,
        complete=False,
        error=error,
        missing=tuple(missing),
    )


def _partial_extensions(
    raw: bytes, pos: int, end: int, typed: list[Any], extensions: list[tuple[int, int, int]]
) -> bool:
    """Read extensions whole and valid from ``pos``; True if they fill ``end`` exactly."""
    known = _KNOWN_EXTENSIONS
    while pos + 4 <= end:
        ext_type, ext_len = _u16x2(raw, pos)
        stop = pos + 4 + ext_len
        if stop > end:
            return False
        entry = known.get(ext_type)
        if entry is not None and typed[entry[0]] is _TYPED_DEFAULTS[entry[0]]:
            try:
                typed[entry[0]] = entry[3](raw, pos + 4, stop, len(extensions))
            except MalformedHello:
                return False
        extensions.append((ext_type, pos, ext_len))
        pos = stop
    return pos == end


def _parse_extensions(
    raw: bytes, pos: int, end: int, typed: list[Any]
) -> tuple[tuple[int, int, int], ...]:
    """Walk the extensions block; fill ``typed`` (in TYPED_FIELDS order) on the way.

    Returns (type, offset, data length) for every extension, in wire order.
    """
    extensions: list[tuple[int, int, int]] = []
    append = extensions.append
    known = _KNOWN_EXTENSIONS
    defaults = _TYPED_DEFAULTS
    u16x2 = _u16x2
    # ``end`` is also the end of ``raw`` (locate_fields saw to that), so a header
    # cut short by it shows as struct.error rather than needing a check each time.
    while pos < end:
        try:
            ext_type, ext_len = u16x2(raw, pos)
        except struct.error:
            raise _fail(
                f"extensions[{len(extensions)}]",
                f"{end - pos} bytes left, a header needs 4",
                pos,
            ) from None
        body = pos + 4
        stop = body + ext_len
        if stop > end:
            raise _overrun(_ext_field(len(extensions), ext_type), ext_len, end - body, pos + 2)
        append((ext_type, pos, ext_len))
        entry = known.get(ext_type)
        if entry is None:
            pos = stop
            continue
        slot, prefix, width, decode = entry
        # Only the first of a repeated extension is decoded, as peers do.
        if typed[slot] is defaults[slot]:
            # A vector of 8- or 16-bit values that fills the extension exactly is
            # decoded inline; anything else (and every error) by its decoder.
            if prefix == 2 and ext_len >= 2:
                length = (raw[body] << 8) | raw[body + 1]
            elif prefix == 1 and ext_len >= 1:
                length = raw[body]
            else:
                length = -1
            if length >= 0 and length + prefix == ext_len and not length % width:
                typed[slot] = (
                    tuple(raw[body + 1 : stop])
                    if width == 1
                    else (_U16_ARRAYS.get(length) or _u16_array(length))(raw, body + prefix)
                )
            else:
                typed[slot] = decode(raw, body, stop, len(extensions) - 1)
        pos = stop
    return tuple(extensions)


def _u16_array(size: int) -> Callable[[bytes, int], tuple[int, ...]]:
    """An unpacker of ``size`` bytes of big-endian 16-bit values (cached while small)."""
    unpack = struct.Struct(f"!{size >> 1}H").unpack_from
    if size <= 512:  # the sizes real hellos use; a hostile one is not kept
        _U16_ARRAYS[size] = unpack
    return unpack


_U16_ARRAYS: dict[int, Callable[[bytes, int], tuple[int, ...]]] = {}


def _ext_field(index: int, ext_type: int) -> str:
    """A field name for messages, e.g. ``extensions[3] supported_groups``."""
    return f"extensions[{index}] {_EXTENSION_FIELDS.get(ext_type, ext_type)}"


# --- extension decoders: (raw, start, end, extension index) -> value ----------------
# Field names for errors are built only when an error is raised.


def _vector(raw: bytes, start: int, end: int, index: int, ext_type: int, prefix: int) -> int:
    """Read a vector's length prefix; the vector must fill its extension exactly.

    Returns the offset where the vector's contents start.
    """
    if start + prefix <= end:
        body = start + prefix
        length = raw[start] if prefix == 1 else (raw[start] << 8) | raw[start + 1]
        if body + length == end:
            return body
        field = _ext_field(index, ext_type)
        if body + length > end:
            raise _overrun(field, length, end - body, start)
        raise _fail(field, f"{end - body - length} trailing bytes", body + length)
    raise _fail(_ext_field(index, ext_type), "length missing", start)


def _u16_vector(
    raw: bytes, start: int, end: int, index: int, ext_type: int, prefix: int
) -> tuple[int, ...]:
    body = _vector(raw, start, end, index, ext_type, prefix)
    if (end - body) & 1:
        raise _fail(_ext_field(index, ext_type), f"odd length {end - body}", start)
    return struct.unpack_from(f"!{(end - body) >> 1}H", raw, body)


def _server_name(raw: bytes, start: int, end: int, index: int) -> object:
    # The usual case: one plain ASCII host_name filling the list (as in sni()).
    if end - start >= 5 and raw[start + 2] == 0:
        list_len = (raw[start] << 8) | raw[start + 1]
        name_len = (raw[start + 3] << 8) | raw[start + 4]
        if list_len == end - start - 2 == name_len + 3:
            name = raw[start + 5 : end]
            if (
                name
                and name.isascii()
                and not name.translate(None, HOSTNAME_CHARS)
                and name[-1] != 0x2E  # "."
            ):
                return name.decode("ascii"), (name,), ()
    return decode_server_name(raw, start, end, index)


def _supported_groups(raw: bytes, start: int, end: int, index: int) -> object:
    return _u16_vector(raw, start, end, index, ExtensionType.SUPPORTED_GROUPS, 2)


def _signature_algorithms(raw: bytes, start: int, end: int, index: int) -> object:
    return _u16_vector(raw, start, end, index, ExtensionType.SIGNATURE_ALGORITHMS, 2)


def _supported_versions(raw: bytes, start: int, end: int, index: int) -> object:
    return _u16_vector(raw, start, end, index, ExtensionType.SUPPORTED_VERSIONS, 1)


def _ec_point_formats(raw: bytes, start: int, end: int, index: int) -> object:
    return tuple(raw[_vector(raw, start, end, index, ExtensionType.EC_POINT_FORMATS, 1) : end])


def _psk_key_exchange_modes(raw: bytes, start: int, end: int, index: int) -> object:
    return tuple(
        raw[_vector(raw, start, end, index, ExtensionType.PSK_KEY_EXCHANGE_MODES, 1) : end]
    )


def _alpn(raw: bytes, start: int, end: int, index: int) -> object:
    pos = _vector(raw, start, end, index, ExtensionType.ALPN, 2)
    protocols: list[bytes] = []
    while pos < end:
        length = raw[pos]
        if pos + 1 + length > end:
            field = f"{_ext_field(index, ExtensionType.ALPN)} protocol[{len(protocols)}]"
            raise _overrun(field, length, end - pos - 1, pos)
        protocols.append(raw[pos + 1 : pos + 1 + length])
        pos += 1 + length
    return tuple(protocols)


def _key_share(raw: bytes, start: int, end: int, index: int) -> object:
    pos = _vector(raw, start, end, index, ExtensionType.KEY_SHARE, 2)
    groups: list[int] = []
    while pos < end:
        if pos + 4 > end:
            field = f"{_ext_field(index, ExtensionType.KEY_SHARE)} entry[{len(groups)}]"
            raise _fail(field, f"{end - pos} bytes left, an entry needs 4", pos)
        group, length = _u16x2(raw, pos)
        if pos + 4 + length > end:
            field = f"{_ext_field(index, ExtensionType.KEY_SHARE)} entry[{len(groups)}]"
            raise _overrun(field, length, end - pos - 4, pos + 2)
        groups.append(group)
        pos += 4 + length
    return tuple(groups)


def _pre_shared_key(raw: bytes, start: int, end: int, index: int) -> object:
    # RFC 8446 §4.2.11: identities<7..2^16-1> then binders<33..2^16-1>, which
    # together fill the extension exactly.
    if start + 2 > end:
        raise _fail(
            _ext_field(index, ExtensionType.PRE_SHARED_KEY), "identities length missing", start
        )
    ids_len = _u16(raw, start)[0]
    ids_end = start + 2 + ids_len
    if ids_end > end:
        field = f"{_ext_field(index, ExtensionType.PRE_SHARED_KEY)} identities"
        raise _overrun(field, ids_len, end - start - 2, start)
    pos = start + 2
    while pos < ids_end:
        id_len = _u16(raw, pos)[0] if pos + 2 <= ids_end else -1
        if id_len < 0 or pos + 2 + id_len + 4 > ids_end:
            field = f"{_ext_field(index, ExtensionType.PRE_SHARED_KEY)} identities"
            raise _fail(field, "identity overruns the identities block", pos)
        pos += 2 + id_len + 4  # identity, obfuscated_ticket_age
    _vector(raw, ids_end, end, index, ExtensionType.PRE_SHARED_KEY, 2)  # binders
    return True


def _encrypted_client_hello(raw: bytes, start: int, end: int, index: int) -> object:
    # draft-ietf-tls-esni §5: ECHClientHello { type; outer: cipher_suite, config_id,
    # enc<0..2^16-1>, payload<1..2^16-1>; inner: nothing more }
    ext = ExtensionType.ENCRYPTED_CLIENT_HELLO
    if start + 1 > end:
        raise _fail(_ext_field(index, ext), "type missing", start)
    ech_type = raw[start]
    if ech_type != 0:
        if ech_type == 1 and start + 1 != end:
            raise _fail(_ext_field(index, ext), f"{end - start - 1} trailing bytes", start + 1)
        return EncryptedClientHello(type=ech_type)
    pos = start + 1
    if pos + 7 > end:
        raise _fail(_ext_field(index, ext), "outer header truncated", pos)
    kdf_id, aead_id = _u16x2(raw, pos)
    config_id = raw[pos + 4]
    enc_len = _u16(raw, pos + 5)[0]
    if pos + 7 + enc_len > end:
        raise _overrun(f"{_ext_field(index, ext)} enc", enc_len, end - pos - 7, pos + 5)
    payload = _vector(raw, pos + 7 + enc_len, end, index, ext, 2)
    return EncryptedClientHello(0, kdf_id, aead_id, config_id, enc_len, end - payload)


_Decoder = Callable[[bytes, int, int, int], object]

_SLOT = {name: index for index, name in enumerate(TYPED_FIELDS)}

# ExtensionType -> (slot in TYPED_FIELDS, length prefix of a plain vector or 0, value
# width, decoder). Plain vectors of 8- or 16-bit values are decoded inline by
# _parse_extensions; the decoder handles everything else, errors included.
_KNOWN_EXTENSIONS: dict[int, tuple[int, int, int, _Decoder]] = {
    ExtensionType.SERVER_NAME: (_SLOT["server_name"], 0, 1, _server_name),
    ExtensionType.SUPPORTED_GROUPS: (_SLOT["supported_groups"], 2, 2, _supported_groups),
    ExtensionType.EC_POINT_FORMATS: (_SLOT["ec_point_formats"], 1, 1, _ec_point_formats),
    ExtensionType.SIGNATURE_ALGORITHMS: (
        _SLOT["signature_algorithms"],
        2,
        2,
        _signature_algorithms,
    ),
    ExtensionType.ALPN: (_SLOT["alpn_protocols"], 0, 1, _alpn),
    ExtensionType.PRE_SHARED_KEY: (_SLOT["has_pre_shared_key"], 0, 1, _pre_shared_key),
    ExtensionType.SUPPORTED_VERSIONS: (_SLOT["supported_versions"], 1, 2, _supported_versions),
    ExtensionType.PSK_KEY_EXCHANGE_MODES: (
        _SLOT["psk_key_exchange_modes"],
        1,
        1,
        _psk_key_exchange_modes,
    ),
    ExtensionType.KEY_SHARE: (_SLOT["key_share_groups"], 0, 1, _key_share),
    ExtensionType.ENCRYPTED_CLIENT_HELLO: (_SLOT["ech"], 0, 1, _encrypted_client_hello),
}
