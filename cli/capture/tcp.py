"""TCP reassembly: each direction's segments into ordered bytes, and the ClientHellos in them.

- **Reassembling** each TCP connection per direction (out of order, retransmitted,
  overlapping, missing SYN) into ordered stream bytes, locating ClientHellos by content
  (so TLS after STARTTLS, HTTP CONNECT or SOCKS5 is found) and feeding them to
  `clienthello.Reader`. Where segments overlap, the bytes seen first win. Without a SYN
  a stream starts at the first segment seen; a later segment with a lower sequence
  number (up to ``max_scan`` bytes before) is put in front while nothing has been
  decided yet. A stream is read as: TLS records from its first byte (an SSLv2
  CLIENT-HELLO is recognised only there), else searched (at most ``max_scan`` bytes) for
  a handshake record header starting a ClientHello. After a hello, ChangeCipherSpec
  records are skipped and a further ClientHello (after a HelloRetryRequest) is read;
  any other record ends the direction.
- **Bounding memory**: a direction stops being buffered once it has shown its hellos or
  that it is not TLS; bytes per direction, out-of-order segments, flows and total held
  bytes are capped, idle flows expire, FIN/RST evict. Directions that are finished are
  remembered by a 4-tuple key so their bulk data costs one dict lookup per packet.

Time, limits and addresses are parameters (see `Limits`); nothing here prints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import clienthello
from clienthello import ClientHello, MalformedHello, NotTLS
from sniinspect.capture.packets import PacketDecoder
from sniinspect.capture.records import (
    AFTER_HELLO_RETRY_REQUEST,
    EMPTY_FIELDS,
    HelloRecord,
    address_text,
    format_ts,
    hello_fields,
)
from sniinspect.capture.udp import DatagramTable

__all__ = ["FlowTable", "Limits"]

_FIN, _SYN, _RST = 0x01, 0x02, 0x04

# A TLS handshake record that starts a ClientHello: content type 22, version 3.x, a
# record length that fits RFC 8446 §5.2 (<= 2^14 + 2048), handshake type 1.
_HELLO_PATTERN = re.compile(rb"\x16\x03[\x00-\x04][\x00-\x48][\x00-\xff]\x01", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Limits:
    """Memory and time bounds of the reassembler (all per input file).

    Attributes:
        max_hello: largest ClientHello accepted (`clienthello.Reader` ``max_size``).
        max_scan: bytes of non-TLS data searched for a hello at the start of a
            direction (STARTTLS, HTTP CONNECT, SOCKS5 all fit) before giving up.
        max_flow_bytes: stream bytes examined per direction, all hellos included.
        max_hellos: ClientHellos looked for per direction (2 cover HelloRetryRequest).
        max_pending: out-of-order segments held per direction.
        max_flows: directions being reassembled at once; the oldest are evicted.
        max_done: finished directions remembered for the fast path.
        max_held: bytes held across all directions (pending segments, partial
            hellos); past it the oldest directions are evicted.
        idle_timeout: seconds of capture time after which a quiet direction expires.
    """

    max_hello: int = 65536
    max_scan: int = 16384
    max_flow_bytes: int = 262144
    max_hellos: int = 4
    max_pending: int = 256
    max_flows: int = 50_000
    max_done: int = 200_000
    max_held: int = 48 << 20
    idle_timeout: float = 300.0


# What a direction is doing with the bytes it receives.
_EXPECT = 0  # at a TLS record boundary: skip ChangeCipherSpec, start a hello, or stop
_SCAN = 1  # searching non-TLS bytes for a hello record header
_HELLO = 2  # feeding a clienthello.Reader


class _Flow:
    """One direction of one TCP connection, from its first byte to its last hello."""

    __slots__ = (
        "buf",
        "delivered",
        "fin",
        "first_frame",
        "head",
        "hellos",
        "key",
        "last_frame",
        "last_ts",
        "mode",
        "next_seq",
        "origin",
        "pending",
        "pending_bytes",
        "reader",
        "reader_bytes",
        "scan_from",
        "scanned",
        "skip",
        "syn",
        "truncated_frame",
        "v6",
    )  # fmt: skip

    def __init__(self, key: bytes, v6: bool, next_seq: int, syn: bool, ts: int, frame: int):
        self.key = key
        self.v6 = v6
        self.syn = syn
        self.next_seq = next_seq
        self.pending: dict[int, bytes] = {}
        self.pending_bytes = 0
        self.mode = _EXPECT
        self.buf = bytearray()
        self.scan_from = 0
        self.scanned = 0
        self.skip = 0
        self.reader: clienthello.Reader | None = None
        self.reader_bytes = 0
        self.origin = "start"  # where the current hello was found: start|after|scan
        self.delivered = 0
        # Without a SYN the stream starts at the first segment seen; keep its first bytes
        # so that a segment arriving later with a lower seq can still be put in front.
        self.head: bytearray | None = None if syn else bytearray()
        self.hellos = 0
        self.last_ts = ts
        self.fin = False
        self.truncated_frame = 0
        self.first_frame = frame
        self.last_frame = frame

    @property
    def held(self) -> int:
        return self.pending_bytes + self.reader_bytes + len(self.buf) + len(self.head or b"")


def _seq_diff(a: int, b: int) -> int:
    """a - b in TCP sequence space (RFC 793 modular arithmetic), signed."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d & 0x80000000 else d


class FlowTable(PacketDecoder):
    """Reassembles TCP directions and turns their bytes into `HelloRecord`s.

    Sans-I/O: `packet` takes one link-layer frame with its time and number and returns
    the records it completed; `finish` flushes what is left at the end of the input.
    ``done`` maps the key of every finished direction (``src ip + dst ip + ports`` as
    bytes, exactly the 12 bytes at IPv4 offset 12 when the header has no options) so a
    reader loop can skip their packets before decoding them.
    """

    def __init__(self, file: str = "", limits: Limits | None = None) -> None:
        super().__init__(file)
        self.limits = limits or Limits()
        self.flows: dict[bytes, _Flow] = {}
        self.done: dict[bytes, None] = {}
        self.out: list[HelloRecord] = []
        self.held = 0
        self._now = 0
        self._sweep_at = 0
        self._sweeps = 0
        self._ts = 0
        self._frame = 0
        # UDP (QUIC, DTLS) has its own table; its records join ours in ``out``.
        self.udp = DatagramTable(file, self.limits, self._add_record)
        self.datagram = self.udp.datagram

    def _add_record(self, rec: HelloRecord) -> None:
        self.out.append(rec)

    # -- reassembly ------------------------------------------------------------------
    def segment(
        self,
        key: bytes,
        v6: bool,
        seq: int,
        flags: int,
        payload: bytes,
        ts_ns: int,
        frame: int,
        truncated: bool = False,
    ) -> None:
        """Feed one TCP segment of the direction ``key`` (src ip, dst ip, ports)."""
        self._ts, self._frame = ts_ns, frame
        if ts_ns > self._now:
            self._now = ts_ns
        self._sweeps += 1
        if self._sweeps >= self._sweep_at:  # expire idle flows now and then (amortised)
            self._sweep_at = self._sweeps + 65536
            self._sweep()
        fl = self.flows.get(key)
        if flags & _SYN:
            if key in self.done:
                del self.done[key]
            if (
                fl is not None
                and fl.syn
                and _seq_diff(seq + 1, fl.next_seq) <= 0
                and fl.delivered == 0
            ):
                pass  # a retransmitted SYN
            else:
                if fl is not None:
                    self._close(fl, "connection reused before the hello completed")
                fl = self._new_flow(key, v6, (seq + 1) & 0xFFFFFFFF, True, ts_ns, frame)
            seq = (seq + 1) & 0xFFFFFFFF  # payload on a SYN (TCP Fast Open) follows the ISN
        elif fl is None:
            if key in self.done:
                if flags & (_FIN | _RST):
                    del self.done[key]
                return
            if not payload:
                return
            fl = self._new_flow(key, v6, seq, False, ts_ns, frame)
        fl.last_ts = ts_ns
        if payload or flags & (_SYN | _FIN | _RST):  # not pure ACKs: readers may skip those
            fl.last_frame = frame
        if payload:
            if truncated:
                fl.truncated_frame = frame
            self._insert(fl, seq, payload)
            current = self.flows.get(key)  # rebuilt (rebase), or finished by this segment
            if current is None:
                if flags & (_FIN | _RST):
                    self.done.pop(key, None)
                return
            fl = current
        if flags & _RST or (flags & _FIN and not fl.pending):
            self._close(fl, "connection closed before the hello completed")
        elif flags & _FIN:
            fl.fin = True
        elif fl.fin and not fl.pending:
            self._close(fl, "connection closed before the hello completed")
        if self.held > self.limits.max_held:
            self._evict_for_memory()

    def _new_flow(self, key: bytes, v6: bool, seq: int, syn: bool, ts: int, frame: int) -> _Flow:
        fl = _Flow(key, v6, seq, syn, ts, frame)
        self.flows[key] = fl
        if len(self.flows) > self.limits.max_flows:
            oldest = next(iter(self.flows))
            self._close(self.flows[oldest], "flow evicted (too many flows)")
        return fl

    def _insert(self, fl: _Flow, seq: int, payload: bytes) -> None:
        d = _seq_diff(seq, fl.next_seq)
        if d < 0 and fl.head is not None and fl.hellos == 0 and fl.delivered == len(fl.head):
            before = -_seq_diff(seq, (fl.next_seq - fl.delivered) & 0xFFFFFFFF)
            if 0 < before <= self.limits.max_scan:  # starts before the first byte we saw
                fl = self._rebase(fl, seq)
                d = 0
        if d == 0:
            self._deliver(fl, payload)
        elif d < 0:
            if -d >= len(payload):
                return  # a retransmission (or a segment from before a missed SYN)
            self._deliver(fl, payload[-d:])  # overlaps what we have: only the new tail
        else:
            if d > self.limits.max_flow_bytes:
                return  # beyond anything this direction will examine
            old = fl.pending.get(seq)
            if len(fl.pending) >= self.limits.max_pending and old is None:
                return
            if old is None or len(old) < len(payload):
                fl.pending[seq] = payload
                grow = len(payload) - (len(old) if old else 0)
                fl.pending_bytes += grow
                self.held += grow
            return
        self._drain(fl)

    def _drain(self, fl: _Flow) -> None:
        progress = True
        while fl.pending and progress and fl.key in self.flows:
            progress = False
            for s in list(fl.pending):
                d = _seq_diff(s, fl.next_seq)
                if d > 0:
                    continue
                p = fl.pending.pop(s)
                fl.pending_bytes -= len(p)
                self.held -= len(p)
                if -d < len(p):
                    self._deliver(fl, p[-d:])
                    progress = True
                    break

    def _rebase(self, fl: _Flow, seq: int) -> _Flow:
        """A segment older than the first one seen (no SYN): restart the stream from it."""
        head = bytes(fl.head or b"")
        old_seq = (fl.next_seq - len(head)) & 0xFFFFFFFF
        self.held -= fl.held
        new = _Flow(fl.key, fl.v6, seq, False, fl.last_ts, fl.first_frame)
        new.truncated_frame = fl.truncated_frame
        new.last_frame = fl.last_frame
        new.pending = dict(fl.pending)
        new.pending_bytes = fl.pending_bytes
        if head:
            new.pending[old_seq] = head
            new.pending_bytes += len(head)
        self.flows[fl.key] = new
        self.held += new.held
        return new

    def _deliver(self, fl: _Flow, data: bytes) -> None:
        """New in-order stream bytes for ``fl``."""
        fl.next_seq = (fl.next_seq + len(data)) & 0xFFFFFFFF
        if fl.key not in self.flows:
            return
        room = self.limits.max_flow_bytes - fl.delivered
        if room <= 0:
            return self._finish_flow(fl, "hello not complete within the per-flow byte cap")
        data = data[:room]
        fl.delivered += len(data)
        if fl.head is not None:
            if fl.delivered <= self.limits.max_scan:
                fl.head += data
                self.held += len(data)
            else:
                self.held -= len(fl.head)
                fl.head = None
        if fl.mode == _HELLO:
            self._feed(fl, data)
        else:
            self.held += len(data)
            fl.buf += data
        self._run(fl)

    def _feed(self, fl: _Flow, data: bytes) -> None:
        reader = fl.reader
        assert reader is not None  # internal invariant, not input
        try:
            hello = reader.feed(data)
        except (NotTLS, MalformedHello) as exc:
            fl.reader = None
            self.held -= fl.reader_bytes
            fl.reader_bytes = 0
            # The pattern matched by chance, or the stream does not start with TLS:
            # search on, from the byte after the one tried.
            if fl.origin == "scan" or (isinstance(exc, NotTLS) and fl.origin == "start"):
                fl.mode = _SCAN
                fl.buf = bytearray(reader.buffered)
                fl.scan_from = 1
                self.held += len(fl.buf)
                return
            self._emit(fl, _partial(reader.buffered, exc), str(exc))
            return self._finish_flow(fl, None)
        self.held += len(data)
        fl.reader_bytes += len(data)
        if hello is None:
            return
        self._emit(fl, hello, None)
        rest = reader.buffered[reader.consumed :]
        fl.reader = None
        self.held -= fl.reader_bytes
        fl.reader_bytes = 0
        fl.hellos += 1
        if fl.hellos >= self.limits.max_hellos:
            return self._finish_flow(fl, None)
        fl.mode = _EXPECT
        fl.buf = bytearray(rest)
        self.held += len(rest)

    def _start_hello(self, fl: _Flow, origin: str) -> None:
        data = bytes(fl.buf)
        self.held -= len(fl.buf)
        fl.buf = bytearray()
        fl.mode = _HELLO
        fl.origin = origin
        fl.reader = clienthello.Reader(max_size=self.limits.max_hello)
        self._feed(fl, data)

    def _run(self, fl: _Flow) -> None:
        """Advance the hello state machine over ``fl.buf`` as far as it goes."""
        while fl.key in self.flows:
            buf = fl.buf
            if fl.mode == _EXPECT:
                if fl.skip:
                    n = min(fl.skip, len(buf))
                    del buf[:n]
                    self.held -= n
                    fl.skip -= n
                    if fl.skip:
                        return
                at_start = fl.hellos == 0
                if len(buf) < 6:
                    if not buf or not at_start:
                        return
                    # Too short to judge as TLS, but may already rule it out.
                    if buf[0] != 0x16 and not buf[0] & 0x80 and buf[0] not in (20, 21, 23):
                        fl.mode = _SCAN
                        continue
                    return
                b0, b1 = buf[0], buf[1]
                if b0 == 0x16 and b1 == 3 and buf[5] == 1:
                    self._start_hello(fl, "start" if at_start else "after")
                    continue
                if at_start and b0 & 0x80 and buf[2] == 1:  # SSLv2 CLIENT-HELLO record
                    self._start_hello(fl, "start")
                    continue
                if b1 == 3 and b0 in (20, 21, 22, 23):
                    if b0 == 20:  # ChangeCipherSpec (sent before a second hello, RFC 8446 D.4)
                        fl.skip = 5 + ((buf[3] << 8) | buf[4])
                        continue
                    return self._finish_flow(fl, None)  # TLS, but past the hellos
                if not at_start:
                    return self._finish_flow(fl, None)
                fl.mode = _SCAN
                fl.scan_from = 1
                continue
            if fl.mode == _SCAN:
                m = _HELLO_PATTERN.search(buf, fl.scan_from)
                if m is not None:
                    i = m.start()
                    fl.scanned += i
                    del buf[:i]
                    self.held -= i
                    self._start_hello(fl, "scan")
                    continue
                keep = min(len(buf), 5)  # a header may straddle the next segment
                drop = len(buf) - keep
                fl.scanned += drop
                del buf[:drop]
                self.held -= drop
                fl.scan_from = 0
                if fl.scanned > self.limits.max_scan:
                    return self._finish_flow(fl, None)
                return
            return  # _HELLO: fed as bytes arrive

    # -- ends of flows -----------------------------------------------------------------
    def _emit(
        self, fl: _Flow, hello: ClientHello | None, error: str | None, at_end: bool = False
    ) -> None:
        key = fl.key
        # A hello completes with the current packet; one left incomplete is dated by the
        # flow's last packet (FIN, RST, data), as pure ACKs may never reach us.
        frame, ts = (fl.last_frame, fl.last_ts) if at_end else (self._frame, self._ts)
        alen = 16 if fl.v6 else 4
        src, dst = address_text(key[:alen]), address_text(key[alen : 2 * alen])
        sport = (key[2 * alen] << 8) | key[2 * alen + 1]
        dport = (key[2 * alen + 2] << 8) | key[2 * alen + 3]
        fields = hello_fields(hello) if hello is not None else dict(EMPTY_FIELDS)
        if error is not None:
            fields["error"] = error
        self.out.append(
            HelloRecord(
                ts=format_ts(ts),
                src=src,
                sport=sport,
                dst=dst,
                dport=dport,
                transport="tcp",
                frame=frame,
                file=self.file,
                hello=hello,
                after=AFTER_HELLO_RETRY_REQUEST if fl.hellos and error is None else None,
                **fields,
            )
        )

    def _finish_flow(self, fl: _Flow, incomplete: str | None) -> None:
        """Stop looking at ``fl``: remember it as done; report a hello left half-read."""
        if fl.mode == _HELLO and fl.reader is not None and incomplete:
            try:
                hello = fl.reader.feed(b"")
            except (NotTLS, MalformedHello) as exc:
                reason = str(exc)
                if fl.truncated_frame:
                    reason += f" (packet {fl.truncated_frame} was cut by the snaplen)"
                elif fl.pending:
                    reason += " (segments missing from the capture)"
                if fl.origin != "scan":
                    partial = _partial(fl.reader.buffered, exc)
                    self._emit(fl, partial, f"{incomplete}: {reason}", at_end=True)
            else:
                if hello is not None:
                    self._emit(fl, hello, None, at_end=True)
        self.held -= fl.held
        fl.reader = None
        fl.reader_bytes = fl.pending_bytes = 0
        fl.pending = {}
        fl.buf = bytearray()
        fl.head = None
        fl.mode = _EXPECT
        if self.flows.pop(fl.key, None) is not None:
            self.done[fl.key] = None
            if len(self.done) > self.limits.max_done:
                for k in list(self.done)[: len(self.done) // 2]:
                    del self.done[k]

    def _close(self, fl: _Flow, why: str) -> None:
        self._finish_flow(fl, why)
        self.done.pop(fl.key, None)

    def _sweep(self) -> None:
        horizon = self._now - int(self.limits.idle_timeout * 1e9)
        for fl in [f for f in self.flows.values() if f.last_ts < horizon]:
            self._close(fl, "flow idle, hello never completed")

    def _evict_for_memory(self) -> None:
        for fl in list(self.flows.values()):
            if self.held <= self.limits.max_held * 3 // 4:
                break
            self._close(fl, "flow evicted (memory cap)")

    def finish(self) -> None:
        """End of input: report every hello still incomplete (TCP and UDP)."""
        for fl in list(self.flows.values()):
            self._close(fl, "capture ended before the hello completed")
        self.udp.finish()


def _partial(data: bytes, error: Exception) -> ClientHello | None:
    """What a hello cut short or malformed holds (`clienthello.parse` ``partial=True``).

    None when not even the start of a hello can be read (then the record's fields are
    empty, as they are for an SSLv2 hello that failed).
    """
    try:
        hello = clienthello.parse(data, partial=True)
    except (NotTLS, MalformedHello):
        return None
    return None if hello.sslv2 and not hello.complete else hello
