"""The SSLv2-compatible CLIENT-HELLO (RFC 5246 appendix E.2) into a `ClientHello`.

Below both `_parse` and `_sni`: the full parse builds the model from it, and the SNI
hot path checks an SSLv2 hello's framing with it (such a hello has no extensions).
"""

from __future__ import annotations

import struct

from clienthello._errors import MalformedHello
from clienthello._model import ClientHello

__all__ = ["parse_sslv2"]


def parse_sslv2(raw: bytes) -> ClientHello:
    """An SSLv2 CLIENT-HELLO message (RFC 5246 appendix E.2), offsets from its type byte."""
    end = len(raw)
    if end < 9:
        raise MalformedHello("CLIENT-HELLO", f"{end} bytes, the header needs 9", 0)
    version, spec_len, sid_len, challenge_len = struct.unpack_from("!HHHH", raw, 1)
    if spec_len % 3:
        raise MalformedHello("cipher_specs", f"length {spec_len} is not a multiple of 3", 3)
    if sid_len > 32:
        raise MalformedHello("session_id", f"length {sid_len} exceeds 32", 5)
    if not 16 <= challenge_len <= 32:
        raise MalformedHello("challenge", f"length {challenge_len}, not 16 to 32", 7)
    need = 9 + spec_len + sid_len + challenge_len
    if need > end:
        raise MalformedHello("CLIENT-HELLO", f"lengths add up to {need}, the record holds {end}", 3)
    if need < end:
        raise MalformedHello("CLIENT-HELLO", f"{end - need} trailing bytes", need)
    specs = raw[9 : 9 + spec_len]
    cipher_suites = tuple(
        (specs[i] << 16) | (specs[i + 1] << 8) | specs[i + 2] for i in range(0, spec_len, 3)
    )
    session_id = raw[9 + spec_len : 9 + spec_len + sid_len]
    challenge = raw[9 + spec_len + sid_len : need]
    return ClientHello(
        legacy_version=version,
        random=challenge.rjust(32, b"\x00"),  # RFC 5246 E.2: right-justified, zero-padded
        legacy_session_id=session_id,
        cipher_suites=cipher_suites,
        legacy_compression_methods=b"\x00",
        raw=raw,
        sslv2=True,
    )
