"""sniinspect: the command line, the SNI router and the pcap analyzer, on `clienthello`."""

__version__ = "0.1.0"
