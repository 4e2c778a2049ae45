"""The capture engine's old flat name, kept for importers: `sniinspect.capture` re-exported.

New code imports `sniinspect.capture`; ``from sniinspect.pcap import iter_records`` and
every other name in ``sniinspect.capture.__all__`` keep working.
"""

from __future__ import annotations

# The package's public names, exactly (a second list here would drift from it).
from sniinspect.capture import *  # noqa: F403
from sniinspect.capture import __all__ as __all__
