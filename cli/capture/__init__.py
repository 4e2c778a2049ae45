"""The capture engine: capture files (or live frames) in, one `HelloRecord` per ClientHello out.

    >>> from sniinspect.capture import iter_records
    >>> for rec in iter_records("capture.pcapng.gz"):
    ...     print(rec.ts, rec.src, rec.sni, rec.ja4)

Its rooms, from the bytes up: `files` (pcap/pcapng/gzip readers), `packets` (link
layers, IP, TCP headers), `tcp` (reassembly, finding hellos), `records` (what comes
out); `live` reads an interface instead of a file, and `command` holds the click
commands ``sniinspect pcap`` and ``sniinspect live`` (the only room that imports click).
"""

from __future__ import annotations

from sniinspect.capture.files import Capture, iter_records
from sniinspect.capture.packets import LINKTYPE_ETHERNET, PacketDecoder
from sniinspect.capture.records import (
    RECORD_KEYS,
    CaptureError,
    HelloRecord,
    Problem,
    format_ts,
    hello_fields,
)
from sniinspect.capture.tcp import FlowTable, Limits

__all__ = [
    "HelloRecord",
    "Problem",
    "CaptureError",
    "Limits",
    "RECORD_KEYS",
    "iter_records",
    "Capture",
    "FlowTable",
    "PacketDecoder",
    "hello_fields",
    "format_ts",
    "LINKTYPE_ETHERNET",
]
