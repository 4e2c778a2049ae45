"""The exceptions clienthello raises, and only these.

::

    ClientHelloError(Exception)      base; not raised itself
    ├── NeedMoreData                 input ends before the hello does; .needed
    ├── NotTLS                       the first bytes are not a TLS/SSL ClientHello
    └── MalformedHello(ValueError)   framing is wrong; .offset, .field, .reason
        └── HelloTooLarge            declared or buffered size is over the limit

Incomplete and malformed are told apart by which length ran out: an outer record or
handshake length that promises more bytes than were given is incomplete
(`NeedMoreData`); an inner length that overruns the block enclosing it is malformed.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ClientHelloError",
    "NeedMoreData",
    "NotTLS",
    "MalformedHello",
    "HelloTooLarge",
]


class ClientHelloError(Exception):
    """Base of every error clienthello raises; catch this to catch them all."""

    def __new__(cls, *args: Any, **kwargs: Any) -> ClientHelloError:
        if cls is ClientHelloError:
            raise TypeError("ClientHelloError is abstract; raise a subclass")
        return super().__new__(cls)


class NeedMoreData(ClientHelloError):
    """The input ends before the ClientHello does.

    Attributes:
        needed: the least number of further bytes known to be required (at least 1).
    """

    def __init__(self, needed: int) -> None:
        self.needed = max(1, needed)
        super().__init__(f"need at least {self.needed} more byte(s)")


class NotTLS(ClientHelloError):
    """The input does not start with a TLS (or SSLv2-compatible) ClientHello.

    Attributes:
        offset: where the deciding byte is, counted from the start of the input.
        reason: what was seen instead.
    """

    def __init__(self, reason: str, offset: int = 0) -> None:
        self.reason = reason
        self.offset = offset
        super().__init__(f"not TLS: {reason} at offset {offset}")


class MalformedHello(ClientHelloError, ValueError):
    """The input is a ClientHello whose framing is wrong.

    Attributes:
        offset: where the fault is, counted from the start of the caller's bytes.
        field: the field at fault, e.g. ``"extensions[3] supported_groups"``.
        reason: what is wrong with it, e.g. ``"2 trailing bytes"``.
    """

    def __init__(self, field: str, reason: str, offset: int) -> None:
        self.field = field
        self.reason = reason
        self.offset = offset
        super().__init__(f"{reason} in {field} at offset {offset}")

    def moved(self, offset: int) -> MalformedHello:
        """The same error at another offset (used to map into the caller's bytes)."""
        return type(self)(self.field, self.reason, offset)


class HelloTooLarge(MalformedHello):
    """The ClientHello declares or needs more bytes than the limit allows."""
