"""The capture engine: capture files (or live frames) in, one `HelloRecord` per ClientHello out.

    >>> from sniinspect.capture import iter_records
    >>> for rec in iter_records("capture.pcapng.gz"):
    ...     print(rec.ts, rec.src, rec.sni, rec.ja4)

Its rooms, from the bytes up: `files` (pcap/pcapng/gzip readers), `packets` (link
layers, IP, TCP headers), `tcp` (reassembly, finding hellos), `records` (what comes
out); `live` reads an interface instead of a file, and `command` holds the click
commands ``sniinspect pcap`` and ``sniinspect live`` (the only room that imports click).
`analyze` runs many files or big ones on every core or a Dask cluster (`split` plans
the tasks, `parallel` runs them, `analysis` puts the results in order, `parquet`
writes them):

    >>> from sniinspect.capture import analyze
    >>> analyze(["day1.pcap", "day2.pcap"], jobs=0).to_parquet("hellos/")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from sniinspect.capture.analysis import Analysis, analyze

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
    "analyze",
    "Analysis",
]


def __getattr__(name: str) -> object:
    # The parallel engine is imported on first use: `sniinspect pcap` and `live` start
    # without it.
    if name in ("analyze", "Analysis"):
        from sniinspect.capture import analysis

        return getattr(analysis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
