"""The hot path: the server name of a ClientHello, found without building a model.

`sni` walks the ClientHello up to the server_name extension (RFC 6066 §3), checking
every length it passes, and decodes the first host_name exactly as `parse` does. It
stops there: extensions after server_name are not checked, which is the whole saving
over `parse`. The helpers `locate_fields` and `decode_server_name` are shared with the
full parse so the two cannot disagree.
"""

from __future__ import annotations

import struct

from clienthello._errors import MalformedHello
from clienthello._record import (
    CONTENT_TYPE_HANDSHAKE,
    HANDSHAKE_CLIENT_HELLO,
    MAX_RECORD_LENGTH,
    Buffer,
    read_handshake,
)
from clienthello._sslv2 import parse_sslv2

__all__ = ["sni", "locate_fields", "locate_session_id", "locate_tail", "decode_server_name"]

_u16 = struct.Struct("!H").unpack_from
_u16x2 = struct.Struct("!HH").unpack_from
_u16_u8_u16 = struct.Struct("!HBH").unpack_from
# content type, version major, (minor), record length, handshake type, length (24 bits)
_headers = struct.Struct("!BBxHBBH").unpack_from
# The bytes of a plain host name (RFC 1123 labels; "_" as DNS allows in practice).
HOSTNAME_CHARS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._"


def sni(data: Buffer) -> str | None:
    """The first host_name of a ClientHello's server_name extension.

    Args:
        data: TLS records from the first record header, as for `parse`.

    Returns:
        The name as `ClientHello.server_name` gives it (so ``""`` when the extension
        holds no host_name), or None when the hello has no server_name extension.

    Raises:
        NeedMoreData, NotTLS, MalformedHello, HelloTooLarge: as `parse`, for every
        field up to the server_name extension.
    """
    if type(data) is not bytes:
        data = bytes(data)
    # The happy path, straight through with no checks but the ones that decide it
    # applies: one record holding a well-framed hello, a plain ASCII host_name. Any
    # surprise (an index past the end included) falls to the checked path below,
    # which names the fault or handles the rarer shapes.
    try:
        ctype, major, rec_len, hs_type, hs_hi, hs_lo = _headers(data)
        hs_end = 9 + ((hs_hi << 16) | hs_lo)
        if (
            ctype == CONTENT_TYPE_HANDSHAKE
            and major == 3
            and hs_type == HANDSHAKE_CLIENT_HELLO
            and hs_end <= 5 + rec_len <= len(data)
            and rec_len <= MAX_RECORD_LENGTH
            and data[43] <= 32
        ):
            cs = 44 + data[43]  # 9 + legacy_version 2 + random 32 + the length byte
            comp = cs + 2 + ((data[cs] << 8) | data[cs + 1])
            ext = comp + 1 + data[comp]
            ext_end = ext + 2 + ((data[ext] << 8) | data[ext + 1])
            if ext_end == hs_end and not (comp - cs) & 1:
                pos = ext + 2
                while pos < ext_end:
                    ext_type, ext_len = _u16x2(data, pos)
                    if ext_type == 0:
                        stop = pos + 4 + ext_len
                        if ext_len >= 5 and stop <= ext_end:
                            list_len, name_type, name_len = _u16_u8_u16(data, pos + 4)
                            if name_type == 0 and list_len == ext_len - 2 == name_len + 3:
                                name = data[pos + 9 : stop]
                                if name and name.isascii():
                                    return name.decode("ascii")
                        break
                    pos += 4 + ext_len
                else:
                    if pos == ext_end:
                        return None
    except (IndexError, struct.error):
        pass
    return _sni_checked(data)


def _sni_checked(data: bytes) -> str | None:
    """`sni` with every length checked, for the shapes the happy path leaves."""
    n = len(data)
    # One record holding the whole hello: walk the caller's bytes in place.
    if (
        n > 9
        and data[0] == CONTENT_TYPE_HANDSHAKE
        and data[1] == 3
        and data[5] == HANDSHAKE_CLIENT_HELLO
    ):
        rec_end = 5 + ((data[3] << 8) | data[4])
        hs_end = 9 + ((data[6] << 16) | (data[7] << 8) | data[8])
        if hs_end <= rec_end <= n and rec_end <= 5 + MAX_RECORD_LENGTH:
            return _find(data, 9, hs_end)
    handshake = read_handshake(data)
    try:
        if handshake.sslv2:
            parse_sslv2(handshake.data)  # no extensions, but the framing is still checked
            return None
        return _find(handshake.data, 4, len(handshake.data))
    except MalformedHello as err:
        raise err.moved(handshake.caller_offset(err.offset)) from None


def _find(buf: bytes, pos: int, end: int) -> str | None:
    ext_pos, ext_end = locate_fields(buf, pos, end)[3:]
    pos = ext_pos + 2
    # The walk checks nothing but the loop bound: a length that overruns shows as
    # pos != ext_end afterwards (or as struct.error past the buffer), and only then
    # is the walk redone with every check, to name the fault.
    try:
        while pos < ext_end:
            ext_type, ext_len = _u16x2(buf, pos)
            if ext_type == 0:
                break
            pos += 4 + ext_len
        else:
            if pos != ext_end:
                _walk_checked(buf, ext_pos + 2, ext_end)
            return None
    except struct.error:
        _walk_checked(buf, ext_pos + 2, ext_end)
    body = pos + 4
    stop = body + ext_len
    if stop > ext_end:
        _walk_checked(buf, ext_pos + 2, ext_end)
    # The usual case: one host_name that fills the list, plain ASCII.
    if ext_len >= 5 and buf[body + 2] == 0:
        list_len, _, name_len = _u16_u8_u16(buf, body)
        if list_len == ext_len - 2 == name_len + 3:
            name = buf[body + 5 : stop]
            if name and name.isascii():
                return name.decode("ascii")
    index = _walk_checked(buf, ext_pos + 2, pos)
    return decode_server_name(buf, body, stop, index)[0]


def _walk_checked(buf: bytes, pos: int, end: int) -> int:
    """Walk extension headers from ``pos`` to ``end`` with every check.

    Returns:
        How many extensions lie in between.

    Raises:
        MalformedHello: naming the first extension whose header or length is wrong.
    """
    index = 0
    while pos < end:
        if pos + 4 > end:
            raise MalformedHello(
                f"extensions[{index}]", f"{end - pos} bytes left, a header needs 4", pos
            )
        ext_type, ext_len = _u16x2(buf, pos)
        if pos + 4 + ext_len > end:
            field = f"extensions[{index}] {'server_name' if ext_type == 0 else ext_type}"
            raise overrun(field, ext_len, end - pos - 4, pos + 2)
        pos += 4 + ext_len
        index += 1
    return index


def locate_fields(buf: bytes, pos: int, end: int) -> tuple[int, int, int, int, int]:
    """Check the fixed part of a ClientHello body and find its vectors.

    Args:
        buf: bytes holding the body; ``pos`` is where legacy_version starts and
            ``end`` where the body ends (from the handshake length).

    Returns:
        Offsets of legacy_session_id, cipher_suites, legacy_compression_methods and
        the extensions length (each at its length prefix), and the end of the
        extensions block. With no extensions both of the last two are ``end``.

    Raises:
        MalformedHello: a vector overruns the body, or bytes are left over.
    """
    sid, cs = locate_session_id(buf, pos, end)
    return (sid, cs, *locate_tail(buf, cs, end))


def locate_session_id(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Check legacy_version, random and legacy_session_id from ``pos`` (the body's start).

    Returns:
        Offsets of legacy_session_id's length and of the field after it.

    Raises:
        MalformedHello: the body is too short, or the session ID is too long or overruns.
    """
    if pos + 35 > end:
        raise MalformedHello("legacy_version", f"body of {end - pos} bytes too short", pos)
    sid = pos + 34
    sid_len = buf[sid]
    if sid_len > 32:
        raise MalformedHello("legacy_session_id", f"length {sid_len} exceeds 32", sid)
    after = sid + 1 + sid_len
    if after > end:
        raise overrun("legacy_session_id", sid_len, end - sid - 1, sid)
    return sid, after


def locate_tail(buf: bytes, cs: int, end: int) -> tuple[int, int, int]:
    """`locate_fields` from cipher_suites on (DTLS has a cookie before them).

    Returns:
        Offsets of legacy_compression_methods and of the extensions length, and the
        end of the extensions block (both ``end`` without extensions).

    Raises:
        MalformedHello: a vector overruns the body, or bytes are left over.
    """
    if cs + 2 > end:
        raise MalformedHello("cipher_suites", "length missing", cs)
    cs_len = _u16(buf, cs)[0]
    if cs_len & 1:
        raise MalformedHello("cipher_suites", f"odd length {cs_len}", cs)
    comp = cs + 2 + cs_len
    if comp > end:
        raise overrun("cipher_suites", cs_len, end - cs - 2, cs)
    if comp + 1 > end:
        raise MalformedHello("legacy_compression_methods", "length missing", comp)
    ext = comp + 1 + buf[comp]
    if ext > end:
        raise overrun("legacy_compression_methods", buf[comp], end - comp - 1, comp)
    if ext == end:
        return comp, end, end
    if ext + 2 > end:
        raise MalformedHello("extensions", "1 trailing byte where the length should be", ext)
    ext_len = _u16(buf, ext)[0]
    ext_end = ext + 2 + ext_len
    if ext_end > end:
        raise overrun("extensions", ext_len, end - ext - 2, ext)
    if ext_end < end:
        raise MalformedHello("ClientHello", f"{end - ext_end} trailing bytes", ext_end)
    return comp, ext, ext_end


def overrun(field: str, length: int, available: int, offset: int) -> MalformedHello:
    return MalformedHello(
        field, f"length {length} overruns its block ({available} bytes left)", offset
    )


def decode_server_name(
    buf: bytes, start: int, end: int, index: int
) -> tuple[str, tuple[bytes, ...], tuple[str, ...]]:
    """Decode a server_name extension body (RFC 6066 §3).

    Returns:
        The first host_name (UTF-8, backslash escapes for other bytes; ``""`` if
        there is none), every host_name as sent, and what is odd about them.

    Raises:
        MalformedHello: the server_name_list or an entry overruns its block.
    """
    names: list[bytes] = []
    if start < end:
        if start + 2 > end:
            raise MalformedHello(_sn(index), "list length missing", start)
        list_len = _u16(buf, start)[0]
        pos, stop = start + 2, start + 2 + list_len
        if stop > end:
            raise overrun(_sn(index), list_len, end - pos, start)
        if stop < end:
            raise MalformedHello(_sn(index), f"{end - stop} trailing bytes", stop)
        entry = 0
        while pos < stop:
            if pos + 3 > stop:
                raise MalformedHello(
                    f"{_sn(index)} entry[{entry}]",
                    f"{stop - pos} bytes left, an entry needs 3",
                    pos,
                )
            name_type = buf[pos]
            name_len = _u16(buf, pos + 1)[0]
            if pos + 3 + name_len > stop:
                raise overrun(f"{_sn(index)} entry[{entry}]", name_len, stop - pos - 3, pos + 1)
            if name_type == 0:
                names.append(bytes(buf[pos + 3 : pos + 3 + name_len]))
            pos += 3 + name_len
            entry += 1
    if not names:
        return "", (), ("no host_name",)
    first = names[0]
    # The usual case, one plain host name, without building a list of problems.
    if (
        len(names) == 1
        and first
        and first.isascii()
        and not first.translate(None, HOSTNAME_CHARS)
        and not first.endswith(b".")
    ):
        return first.decode("ascii"), (first,), ()
    problems = []
    if len(names) > 1:
        problems.append("multiple host_names")
    if not first:
        problems.append("empty")
    elif not first.isascii():
        problems.append("non-ascii")
    elif first.translate(None, HOSTNAME_CHARS):
        problems.append("invalid characters")
    if first.endswith(b"."):
        problems.append("trailing dot")
    return first.decode("utf-8", "backslashreplace"), tuple(names), tuple(problems)


def _sn(index: int) -> str:
    return f"extensions[{index}] server_name"
