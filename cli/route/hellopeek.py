"""What the fast path reads from a ClientHello: the name to route by, and its shape.

Both walk the hello in place, without the model `clienthello.parse` builds: the fast path
needs only the name before the backend is dialled, and the log needs only a cache key
(the JA4 and the versions are worked out once per shape, with the full parse).
"""

from __future__ import annotations

import struct

__all__ = ["NEED_MORE", "hello_shape", "routing_name"]

_headers = struct.Struct("!BBxHBBH").unpack_from
_u16x2 = struct.Struct("!HH").unpack_from
_u16_u8_u16 = struct.Struct("!HBH").unpack_from
# The bytes of a host name the parser reports without a problem (clienthello._sni).
_HOSTNAME = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._"
NEED_MORE = ""  # routing_name: the record is not all here yet


def routing_name(data: bytes) -> str | None:
    """The server name of a hello in one complete record, if it is a plain one.

    Walks every extension header to the end of the hello (so a framing the parser
    rejects is never routed here) and decodes the server_name only if it holds exactly
    one host_name of plain hostname bytes without a trailing dot.

    Returns:
        The name; ``""`` while the first record is incomplete; None for anything else
        (not TLS, several records, no name, an odd name, a framing fault): the
        general path decides those.
    """
    try:
        ctype, major, rec_len, hs_type, hs_hi, hs_lo = _headers(data)
    except struct.error:
        return NEED_MORE if len(data) < 9 and data[:1] == b"\x16" else None
    if ctype != 22 or major != 3 or hs_type != 1 or rec_len > 16384:
        return None
    if len(data) < 5 + rec_len:
        return NEED_MORE
    hs_end = 9 + ((hs_hi << 16) | hs_lo)
    if hs_end != 5 + rec_len or data[43] > 32:
        return None
    try:
        cs = 44 + data[43]
        comp = cs + 2 + ((data[cs] << 8) | data[cs + 1])
        if (comp - cs) & 1 or comp - cs < 4:
            return None
        ext = comp + 1 + data[comp]
        ext_end = ext + 2 + ((data[ext] << 8) | data[ext + 1])
        if ext_end != hs_end:
            return None
        pos = ext + 2
        name = None
        while pos < ext_end:
            ext_type, ext_len = _u16x2(data, pos)
            if ext_type == 0:
                if name is not None or ext_len < 5:
                    return None
                list_len, name_type, name_len = _u16_u8_u16(data, pos + 4)
                if name_type != 0 or not list_len == ext_len - 2 == name_len + 3:
                    return None
                raw = data[pos + 9 : pos + 4 + ext_len]
                if not raw or raw.translate(None, _HOSTNAME) or raw.endswith(b"."):
                    return None
                name = raw.decode("ascii")
            pos += 4 + ext_len
    except (IndexError, struct.error):
        return None
    if pos != ext_end:
        return None
    return name


# Extensions whose bodies change from one connection to the next without saying anything
# about the client (RFC 8446 §4.2: key_share, pre_shared_key, cookie, early_data; RFC 7685
# padding; RFC 5077 session_ticket; ECH): only their type goes into the shape.
_VOLATILE = frozenset({0, 21, 35, 41, 42, 44, 51, 0xFE0D})


def hello_shape(data: bytes) -> bytes | None:
    """What the log fields of a one-record hello depend on, as a cache key.

    Returns:
        The legacy version, cipher suites, compression methods and every extension
        (only the type of the per-connection ones), or None for another framing.
    """
    try:
        cs = 44 + data[43]
        comp = cs + 2 + ((data[cs] << 8) | data[cs + 1])
        ext = comp + 1 + data[comp]
        end = ext + 2 + ((data[ext] << 8) | data[ext + 1])
        parts = [data[9:11], data[cs:ext]]
        pos = ext + 2
        while pos < end:
            ext_type, ext_len = _u16x2(data, pos)
            nxt = pos + 4 + ext_len
            parts.append(data[pos : pos + 2] if ext_type in _VOLATILE else data[pos:nxt])
            pos = nxt
    except (IndexError, struct.error):
        return None
    return b"".join(parts)
