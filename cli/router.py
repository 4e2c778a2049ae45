"""The router's public names where they used to live: see `sniinspect.route`."""

from sniinspect.route.connection import alert_record
from sniinspect.route.observe import ConnectionLog
from sniinspect.route.server import Router

__all__ = ["Router", "alert_record", "ConnectionLog"]
