"""Link layers, IPv4/IPv6, TCP and UDP headers: one captured frame in, a segment or datagram out.

Decodes Ethernet (with 802.1Q/QinQ and PPPoE), Linux SLL/SLL2, BSD NULL/LOOP, raw
IPv4/IPv6 and PPP; IPv4 (unfragmented) and IPv6 with extension headers; then the TCP
or UDP header (and GTP-U tunnels, whose inner packet is decoded the same way).
`PacketDecoder.packet` does it inline, with no call per layer, because it runs for
every packet that the readers' fast paths cannot skip; a TCP segment goes to
`PacketDecoder.segment`, which the reassembler (`sniinspect.capture.tcp.FlowTable`)
implements, and a UDP datagram that may start a hello to `PacketDecoder.datagram`
(`sniinspect.capture.udp.DatagramTable`).
"""

from __future__ import annotations

from collections.abc import Callable

from sniinspect.capture.records import Problem

__all__ = [
    "PacketDecoder",
    "LINKTYPE_NULL",
    "LINKTYPE_ETHERNET",
    "LINKTYPE_PPP",
    "LINKTYPE_RAW_OPENBSD",
    "LINKTYPE_RAW_BSD",
    "LINKTYPE_PPP_HDLC",
    "LINKTYPE_PPP_ETHER",
    "LINKTYPE_RAW",
    "LINKTYPE_LOOP",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_IPV4",
    "LINKTYPE_IPV6",
    "LINKTYPE_LINUX_SLL2",
    "SKIP_UDP",
]

# Link-layer header types (https://www.tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW_OPENBSD = 12  # DLT_RAW on OpenBSD
LINKTYPE_RAW_BSD = 14  # DLT_RAW on BSD/OS
LINKTYPE_PPP_HDLC = 50
LINKTYPE_PPP_ETHER = 51  # PPPoE session payload starts with the PPPoE header
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

# By the first byte of a UDP payload: True if the datagram can neither start nor continue
# a hello, so it is skipped undecoded. Kept: QUIC long headers with the fixed bit (RFC
# 9000 §17.2) whose type bits are not 0b10, and DTLS content types 20-26 (RFC 6347
# §4.1). Skipped: QUIC short headers (the bulk of HTTP/3); type 0b10, a Handshake packet
# in v1 and the drafts and a 0-RTT packet in v2 (never an Initial or a Retry); long
# headers with the fixed bit clear (Version Negotiation, or RFC 9287's greased bit,
# which the QUIC reader does not follow); half of DNS; RTP.
SKIP_UDP: tuple[bool, ...] = tuple(
    not ((b & 0xC0 == 0xC0 and b & 0x30 != 0x20) or 20 <= b <= 26) for b in range(256)
)

_ETH_IPV4 = 0x0800
_ETH_IPV6 = 0x86DD
_ETH_VLAN = frozenset((0x8100, 0x88A8, 0x9100))  # 802.1Q, 802.1ad (QinQ), legacy QinQ
_ETH_PPPOE_SESSION = 0x8864
_NULL_IPV6_FAMILIES = frozenset((10, 24, 28, 30))  # AF_INET6 on Linux, NetBSD, FreeBSD, macOS

_TCP = 6
_UDP = 17
# GTP-U (3GPP TS 29.281) carries user IP packets over UDP port 2152: mobile-core
# captures hold their TLS inside it, and tshark decodes it.
_GTP_U_PORT = 2152
# IPv6 extension headers whose length is (hdr_ext_len + 1) * 8 (RFC 8200 §4).
_IPV6_EXT_GENERIC = frozenset((0, 43, 60, 135, 139, 140))
_IPV6_FRAGMENT = 44
_IPV6_AH = 51  # length is (payload_len + 2) * 4 (RFC 4302 §2.2)


class PacketDecoder:
    """Decodes frames of any supported link type down to TCP segments.

    Subclasses implement `segment`. Frames cut by the capture's snaplen and link types
    not supported are counted and reported once each in ``problems``.
    """

    # Takes the TCP segment of each frame: (key: src ip + dst ip + ports, v6, seq, flags,
    # payload, ts_ns, frame, truncated: cut by the snaplen). Implemented by the reassembler,
    # `sniinspect.capture.tcp.FlowTable.segment`.
    segment: Callable[[bytes, bool, int, int, bytes, int, int, bool], None]
    # Takes each UDP datagram that may carry a hello: (key: src ip + dst ip + ports, v6,
    # payload, ts_ns, frame, truncated). Set by the owner of the UDP flow table
    # (`sniinspect.capture.udp.DatagramTable.datagram`); None drops UDP.
    datagram: Callable[[bytes, bool, bytes, int, int, bool], None] | None = None

    def __init__(self, file: str = "") -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.snaplen_truncated = 0
        self.unsupported_linktypes: set[int] = set()
        self._tunnelled = False  # decoding the inner packet of a GTP-U tunnel

    def packet(self, linktype: int, data: bytes | memoryview, ts_ns: int, frame: int) -> None:
        """Decode one frame (any supported link type); pass on its TCP segment or UDP datagram.

        A TCP segment goes to `segment`; a UDP datagram whose first byte may start a
        QUIC or DTLS hello goes to `datagram` (see `_udp`).

        Problems (a frame cut short, an unsupported link type) go to ``self.problems``.
        """
        off, ethertype = self._link(linktype, data)
        if off < 0:
            return
        n = len(data)
        if ethertype == _ETH_IPV4:
            if off + 20 > n:
                return self._short(frame)
            b0 = data[off]
            if b0 >> 4 != 4:
                return
            ihl = (b0 & 0x0F) * 4
            total = (data[off + 2] << 8) | data[off + 3]
            if total == 0:  # TCP segmentation offload on the capturing host: length not set
                total = n - off
            proto = data[off + 9]
            if (proto != _TCP and proto != _UDP) or ihl < 20 or total < ihl:
                return
            if (data[off + 6] & 0x3F) or data[off + 7]:  # MF set or fragment offset != 0
                return
            end = off + total
            src = bytes(data[off + 12 : off + 16])
            dst = bytes(data[off + 16 : off + 20])
            tcp = off + ihl
            v6 = False
        elif ethertype == _ETH_IPV6:
            if off + 40 > n:
                return self._short(frame)
            if data[off] >> 4 != 6:
                return
            plen = (data[off + 4] << 8) | data[off + 5]
            nxt = data[off + 6]
            end = off + 40 + plen if plen else n  # 0 = jumbogram: trust the capture
            src = bytes(data[off + 8 : off + 24])
            dst = bytes(data[off + 24 : off + 40])
            tcp = off + 40
            for _ in range(8):  # bounded walk over extension headers
                if nxt in (_TCP, _UDP):
                    break
                if tcp + 8 > n:
                    return self._short(frame)
                if nxt in _IPV6_EXT_GENERIC:
                    nxt, tcp = data[tcp], tcp + (data[tcp + 1] + 1) * 8
                elif nxt == _IPV6_FRAGMENT:
                    if ((data[tcp + 2] << 8) | data[tcp + 3]) & 0xFFF9:  # offset or M flag
                        return
                    nxt, tcp = data[tcp], tcp + 8
                elif nxt == _IPV6_AH:
                    nxt, tcp = data[tcp], tcp + (data[tcp + 1] + 2) * 4
                else:
                    return
            if nxt != _TCP and nxt != _UDP:
                return
            proto = nxt
            v6 = True
        else:
            return
        if proto != _TCP:
            return self._udp(data, tcp, end, n, src, dst, v6, ts_ns, frame)
        if tcp + 20 > n:
            return self._short(frame)
        doff = (data[tcp + 12] >> 4) * 4
        if doff < 20:
            return
        cut = end > n
        if cut:
            self._short(frame)
            end = n
        key = src + dst + bytes(data[tcp : tcp + 4])
        seq = int.from_bytes(data[tcp + 4 : tcp + 8], "big")
        flags = data[tcp + 13]
        payload = bytes(data[tcp + doff : end]) if end > tcp + doff else b""
        self.segment(key, v6, seq, flags, payload, ts_ns, frame, cut)

    def _udp(
        self,
        data: bytes | memoryview,
        udp: int,
        end: int,
        n: int,
        src: bytes,
        dst: bytes,
        v6: bool,
        ts_ns: int,
        frame: int,
    ) -> None:
        """Pass a UDP datagram to `datagram` if its first byte can start a hello.

        A QUIC Initial is a long-header packet (first bit set); a DTLS record starts
        with its content type (20 to 26, RFC 6347 §4.1; handshake is 22). Anything else
        (`SKIP_UDP`: QUIC short-header packets, the bulk of HTTP/3; Handshake packets;
        half of DNS; RTP) stops at this one byte lookup, before any copy.
        """
        if self.datagram is None:
            return None
        if udp + 8 > n:
            return self._short(frame)
        if udp + 8 == n:
            return None  # no payload (or all of it cut by the snaplen): nothing to read
        ulen = (data[udp + 4] << 8) | data[udp + 5]
        if ulen >= 8 and udp + ulen < end:
            end = udp + ulen  # the IP packet has trailing bytes (Ethernet padding)
        sport = (data[udp] << 8) | data[udp + 1]
        dport = (data[udp + 2] << 8) | data[udp + 3]
        if (sport == _GTP_U_PORT or dport == _GTP_U_PORT) and not self._tunnelled:
            return self._gtp_u(data, udp + 8, min(end, n), ts_ns, frame)
        if SKIP_UDP[data[udp + 8]]:
            return None
        cut = end > n
        if cut:
            self._short(frame)
            end = n
        key = src + dst + bytes(data[udp : udp + 4])
        self.datagram(key, v6, bytes(data[udp + 8 : end]), ts_ns, frame, cut)
        return None

    def _gtp_u(self, data: bytes | memoryview, pos: int, end: int, ts_ns: int, frame: int) -> None:
        """Decode the IP packet inside a GTP-U G-PDU (3GPP TS 29.281 §5.1)."""
        if pos + 8 > end or data[pos] & 0xF0 != 0x30 or data[pos + 1] != 0xFF:
            return  # not GTP version 1 with PT=1, or not a G-PDU (echo, error indication)
        flags = data[pos]
        inner = pos + 8
        if flags & 0x07:  # E, S or PN: the optional 4 bytes are present
            if inner + 4 > end:
                return
            next_ext = data[inner + 3]
            inner += 4
            for _ in range(16):  # bounded walk over extension headers (each 4n bytes)
                if not flags & 0x04 or next_ext == 0:
                    break
                if inner >= end or data[inner] == 0:
                    return
                size = data[inner] * 4
                if inner + size > end:
                    return
                next_ext = data[inner + size - 1]
                inner += size
            else:
                return
        if inner >= end:
            return
        self._tunnelled = True
        try:
            self.packet(LINKTYPE_RAW, data[inner:end], ts_ns, frame)
        finally:
            self._tunnelled = False

    def _short(self, frame: int) -> None:
        self.snaplen_truncated += 1
        if self.snaplen_truncated == 1:
            self.problems.append(
                Problem(self.file, "packet cut short by the capture's snaplen", False, frame)
            )

    def _link(self, linktype: int, data: bytes | memoryview) -> tuple[int, int]:
        """(offset of the IP header, ethertype) or (-1, 0) for frames to skip."""
        n = len(data)
        if linktype == LINKTYPE_ETHERNET:
            if n < 14:
                return -1, 0
            off, et = 14, (data[12] << 8) | data[13]
            while et in _ETH_VLAN and off + 4 <= n:
                et = (data[off + 2] << 8) | data[off + 3]
                off += 4
            if et == _ETH_PPPOE_SESSION and off + 8 <= n:
                return self._ppp_proto(data, off + 6)
            return (off, et) if et in (_ETH_IPV4, _ETH_IPV6) else (-1, 0)
        if linktype == LINKTYPE_LINUX_SLL:
            return (16, (data[14] << 8) | data[15]) if n >= 16 else (-1, 0)
        if linktype == LINKTYPE_LINUX_SLL2:
            return (20, (data[0] << 8) | data[1]) if n >= 20 else (-1, 0)
        if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            if n < 4:
                return -1, 0
            fam = int.from_bytes(data[0:4], "big")
            if linktype == LINKTYPE_NULL and fam > 0xFFFF:  # host byte order: little endian
                fam = int.from_bytes(data[0:4], "little")
            if fam == 2:
                return 4, _ETH_IPV4
            return (4, _ETH_IPV6) if fam in _NULL_IPV6_FAMILIES else (-1, 0)
        if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_OPENBSD, LINKTYPE_RAW_BSD):
            if n < 1:
                return -1, 0
            v = data[0] >> 4
            return (0, _ETH_IPV4) if v == 4 else (0, _ETH_IPV6) if v == 6 else (-1, 0)
        if linktype == LINKTYPE_IPV4:
            return 0, _ETH_IPV4
        if linktype == LINKTYPE_IPV6:
            return 0, _ETH_IPV6
        if linktype in (LINKTYPE_PPP, LINKTYPE_PPP_HDLC):
            off = 2 if n >= 2 and data[0] == 0xFF and data[1] == 0x03 else 0
            return self._ppp_proto(data, off)
        if linktype == LINKTYPE_PPP_ETHER:
            return self._ppp_proto(data, 6)
        if linktype not in self.unsupported_linktypes:
            self.unsupported_linktypes.add(linktype)
            self.problems.append(
                Problem(
                    self.file, f"link type {linktype} not supported; its packets skipped", False
                )
            )
        return -1, 0

    @staticmethod
    def _ppp_proto(data: bytes | memoryview, off: int) -> tuple[int, int]:
        if off + 1 > len(data):
            return -1, 0
        if data[off] & 1:  # protocol field compressed to one byte (RFC 1661 §6.5)
            proto, off = data[off], off + 1
        elif off + 2 <= len(data):
            proto, off = (data[off] << 8) | data[off + 1], off + 2
        else:
            return -1, 0
        if proto == 0x21:
            return off, _ETH_IPV4
        return (off, _ETH_IPV6) if proto == 0x57 else (-1, 0)
