"""UDP flows: the ClientHellos of QUIC connections and DTLS flows, found by content on any port.

A datagram reaches `DatagramTable.datagram` only if its first byte may start a hello
(`sniinspect.capture.packets` drops the rest: QUIC short headers, most DNS). Then:

- **QUIC**: a long-header packet of a version `clienthello.quic` knows, whose Initial
  opens with the Initial keys, starts a connection. Connections are keyed by the
  5-tuple *and* the client's Destination Connection ID, because Chromium reuses one
  4-tuple for a new connection; each has a `clienthello.quic.InitialReader`, fed every
  client datagram of that connection. A later Initial on the same 5-tuple with another
  DCID is tried against the connection still reading first (the client switched to
  the server's connection ID, or the capture missed the Retry), then as a new
  connection; one that opens neither way is remembered as the old connection's so it
  costs a lookup from then on. A Retry from the server (the reverse 5-tuple) re-keys
  the reader, or marks the next connection's hello ``after="retry"``.
- **DTLS**: a handshake record (type 22, version 0xfe.. or 0x0100) carrying a
  ClientHello starts a flow keyed by the 5-tuple with a `clienthello.DtlsReader`, which
  reassembles fragments and returns the second hello of a cookie exchange too.

Memory is bounded like the TCP reassembler's (`sniinspect.capture.tcp.Limits`): at
most ``max_flows`` flows (the oldest are evicted), ``max_held`` bytes fed to readers
whose hello is not complete, ``idle_timeout`` seconds of capture time per flow.
`clienthello.quic` (and with it `cryptography`) is imported on the first long-header
datagram, so a capture without one never pays for it.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from clienthello import ClientHello, MalformedHello, NotTLS
from clienthello.dtls import DTLS_VERSIONS, DtlsReader
from sniinspect.capture.records import (
    AFTER_HELLO_RETRY_REQUEST,
    AFTER_HELLO_VERIFY_REQUEST,
    AFTER_RETRY,
    EMPTY_FIELDS,
    HelloRecord,
    address_text,
    format_ts,
    hello_fields,
)

if TYPE_CHECKING:
    from clienthello.quic import InitialReader, QuicClientHello
    from sniinspect.capture.tcp import Limits

__all__ = ["DatagramTable"]

_DTLS_HANDSHAKE = 22
_DTLS_HEADER = 13  # RFC 6347 §4.1: type, version, epoch, sequence_number, length
_CLIENT_HELLO = 1
_UNDECRYPTABLE = "not decryptable"  # clienthello.quic's reason for an Initial that fails


def _may_be_quic_version(version: int) -> bool:
    """v1, v2 (RFC 9369) or a draft (0xff0000xx): the versions with Initial keys.

    Checked before `clienthello.quic` (and `cryptography`, 25 ms) is imported, so that
    a capture whose only long-header-looking datagrams are DNS never loads it; the
    library's own table (`clienthello.quic.VERSIONS`) decides after.
    """
    return version == 1 or version == 0x6B3343CF or version >> 8 == 0xFF0000


class _Flow:
    """One client's UDP flow: a QUIC connection or a DTLS 5-tuple."""

    __slots__ = (
        "after",
        "bytes_held",
        "dcids",
        "done",
        "dtls",
        "frames",
        "key",
        "kind",
        "last_frame",
        "last_ts",
        "more",
        "more_done",
        "prev_scid",
        "quic",
        "scid",
        "v6",
    )  # fmt: skip

    def __init__(self, kind: str, key: bytes, v6: bool, ts: int, frame: int) -> None:
        self.kind = kind  # "quic" or "dtls"
        self.key = key
        self.v6 = v6
        self.last_ts = ts
        self.last_frame = frame
        self.frames: list[int] = []  # the frame of each datagram fed, by feed index
        self.bytes_held = 0  # bytes fed while the hello is incomplete (an upper bound)
        self.done = False  # the hello was reported (QUIC), or the flow failed
        self.after: str | None = None  # what made this connection's hello a repeat
        self.quic: InitialReader | None = None
        # QUIC, once the hello is read: the reader of a hello after a HelloRetryRequest
        # (made on the next client Initial), None before that and after it is done.
        self.more: InitialReader | None = None
        self.more_done = False  # QUIC: a second hello was read, or cannot come any more
        self.dtls: DtlsReader | None = None
        self.dcids: list[bytes] = []  # QUIC: the DCIDs this connection is filed under
        self.scid = b""  # QUIC: the client's SCID, once its hello is read
        self.prev_scid = b""  # QUIC: the SCID of the connection before on this 5-tuple


class DatagramTable:
    """Finds the ClientHellos of QUIC connections and DTLS flows in UDP datagrams.

    Sans-I/O like `sniinspect.capture.tcp.FlowTable`, which owns one and hands it its
    datagrams: `datagram` takes one UDP payload with its flow key, time and frame
    number and passes each record it completes to ``emit``; `finish` reports the
    hellos still incomplete at the end of the input.

    Args:
        file: the input's name, for records.
        limits: the bounds shared with the TCP reassembler.
        emit: called with each `HelloRecord`.
    """

    def __init__(self, file: str, limits: Limits, emit: Callable[[HelloRecord], None]) -> None:
        self.file = file
        self.limits = limits
        self.emit = emit
        # QUIC connections by 5-tuple key + DCID (every DCID a connection was seen under).
        self.quic: dict[bytes, _Flow] = {}
        # The latest QUIC connection of each client 5-tuple (DCID switches, Retries).
        self.latest: dict[bytes, _Flow] = {}
        # A Retry seen after the hello completed: 5-tuple key + the Retry's SCID (the
        # client's next DCID) of the connection to mark ``after="retry"``.
        self.retries: dict[bytes, None] = {}
        self.dtls: dict[bytes, _Flow] = {}
        self.held = 0
        self._quic_mod: ModuleType | None = None
        self._count = 0
        self._sweep_at = 65536
        self._now = 0

    # -- entry -------------------------------------------------------------------------
    def datagram(
        self, key: bytes, v6: bool, payload: bytes, ts_ns: int, frame: int, truncated: bool
    ) -> None:
        """Read one UDP payload of the flow ``key`` (src ip, dst ip, ports)."""
        if ts_ns > self._now:
            self._now = ts_ns
        self._count += 1
        if self._count >= self._sweep_at:  # expire idle flows now and then (amortised)
            self._sweep_at = self._count + 65536
            self._sweep()
        if payload[0] & 0x80:
            self._quic_datagram(key, v6, payload, ts_ns, frame, truncated)
        else:
            self._dtls_datagram(key, v6, payload, ts_ns, frame, truncated)

    # -- QUIC --------------------------------------------------------------------------
    def _quic_module(self) -> ModuleType:
        if self._quic_mod is None:
            from clienthello import quic

            self._quic_mod = quic
        return self._quic_mod

    def _quic_datagram(
        self, key: bytes, v6: bool, payload: bytes, ts: int, frame: int, truncated: bool
    ) -> None:
        n = len(payload)
        if n < 7 or not payload[0] & 0x40:  # a long header needs the fixed bit (RFC 9000 §17.2)
            return
        version = int.from_bytes(payload[1:5], "big")
        if not _may_be_quic_version(version):  # Version Negotiation, forcing VN, DNS
            return
        quic = self._quic_module()
        if version not in quic.VERSIONS:
            return
        dlen = payload[5]
        if dlen > 20 or 6 + dlen > n:
            return
        dcid = payload[6 : 6 + dlen]
        fl = self.quic.get(key + dcid)
        if fl is not None:
            fl.last_ts = ts
            if not fl.done:
                self._feed_quic(fl, payload, ts, frame, truncated, known=True)
            elif not fl.more_done and quic.is_client_initial(payload):
                self._feed_more(fl, payload, ts, frame, truncated)
            return
        reverse = self._reverse(key, v6)
        server_of = self.latest.get(reverse)
        if server_of is not None:  # the server's side of a connection we follow
            self._server_packet(server_of, reverse, payload)
            return
        if not quic.is_client_initial(payload):
            if truncated:
                self._cut_initial(key, v6, payload, dcid, version, ts, frame)
            return
        prev = self.latest.get(key)
        # The client switched to the server's DCID, or this is a new connection.
        if prev is not None and (
            self._feed_quic(prev, payload, ts, frame, truncated, known=False)
            if not prev.done
            else self._feed_more(prev, payload, ts, frame, truncated)
        ):
            self._file_dcid(prev, dcid)
            return
        fl = _Flow("quic", key, v6, ts, frame)
        fl.quic = quic.InitialReader(max_crypto_bytes=self.limits.max_hello)
        if key + dcid in self.retries:
            del self.retries[key + dcid]
            fl.after = AFTER_RETRY
        if prev is not None:
            fl.prev_scid = prev.scid
        if not self._feed_quic(fl, payload, ts, frame, truncated, known=False):
            if prev is not None:  # one of prev's packets (e.g. an ACK to the new DCID)
                self._file_dcid(prev, dcid)
            return
        self._file_dcid(fl, dcid)
        self._add_latest(fl)

    def _add_latest(self, fl: _Flow) -> None:
        self.latest.pop(fl.key, None)  # re-inserted last: eviction goes oldest first
        self.latest[fl.key] = fl
        if len(self.latest) > self.limits.max_flows:
            self._evict(next(iter(self.latest.values())), "flow evicted (too many flows)")

    def _cut_initial(
        self, key: bytes, v6: bool, payload: bytes, dcid: bytes, version: int, ts: int, frame: int
    ) -> None:
        """A client Initial cut by the snaplen cannot be opened: say so, once per DCID."""
        quic = self._quic_module()
        kind = quic.VERSIONS[version].packet_types[(payload[0] >> 4) & 3]
        if kind is not quic.PacketType.INITIAL:
            return
        fl = _Flow("quic", key, v6, ts, frame)
        self._file_dcid(fl, dcid)
        self._add_latest(fl)
        fl.done = True
        name = self._version_name(version)
        error = (
            f"QUIC Initial cut by the capture's snaplen ({len(payload)} bytes captured): "
            "not decryptable, the hello cannot be read"
        )
        self._record(fl, None, error, ts, frame, "quic", None, name)

    def _feed_quic(
        self, fl: _Flow, payload: bytes, ts: int, frame: int, truncated: bool, known: bool
    ) -> bool:
        """Feed ``fl``'s reader; False if the datagram is not this connection's.

        ``known``: the datagram's DCID is filed under ``fl``, so a packet that does not
        open is a damaged one of this connection (skipped), not another connection's.
        """
        reader = fl.quic
        assert reader is not None  # internal invariant, not input
        try:
            found = reader.feed(payload)
        except MalformedHello as exc:
            if _UNDECRYPTABLE in exc.reason:
                return known
            if reader.version is None:
                return False  # never opened an Initial: not a QUIC client
            self._quic_error(fl, str(exc), ts, frame, truncated)
            return True
        except NotTLS:
            if reader.version is None:
                return False
            self._quic_error(fl, "QUIC CRYPTO stream is not a ClientHello", ts, frame, truncated)
            return True
        fl.frames.append(frame)
        fl.last_ts, fl.last_frame = ts, frame
        if found is None:
            self._hold(fl, len(payload))
            return True
        self._quic_hello(fl, found, ts, frame)
        return True

    def _feed_more(self, fl: _Flow, payload: bytes, ts: int, frame: int, truncated: bool) -> bool:
        """Feed a client Initial of a connection whose hello was read to the reader of a
        second hello (after a HelloRetryRequest); False if it is not this connection's."""
        if fl.more_done:
            return False
        reader = fl.more
        if reader is None:
            first = fl.quic
            if first is None or first.result is None:
                fl.more_done = True  # the connection failed: no hello to follow
                return False
            reader = fl.more = first.after_hello()
        try:
            found = reader.feed(payload)
        except MalformedHello as exc:
            if _UNDECRYPTABLE in exc.reason:
                return False
            self._more_error(fl, str(exc), ts, frame, truncated)
            return True
        except NotTLS:  # CRYPTO data that is no second hello: nothing more to read
            self._end_more(fl)
            return True
        if found is not None:
            self._end_more(fl)  # one HelloRetryRequest at most (RFC 8446)
            name = self._version_name(found.version)
            self._record(fl, found.hello, None, ts, frame, "quic", AFTER_HELLO_RETRY_REQUEST, name)
            return True
        if reader.crypto_bytes:  # a second hello has begun: its bytes count as held
            self._hold(fl, len(payload))
        return True

    def _end_more(self, fl: _Flow) -> None:
        self._release(fl)
        fl.more, fl.more_done = None, True

    def _more_error(self, fl: _Flow, error: str, ts: int, frame: int, truncated: bool) -> None:
        """A second hello that failed or never completed: a record if it had begun."""
        reader = fl.more
        self._end_more(fl)
        hello = None if reader is None else reader.partial()
        if hello is not None:  # else no bytes from its start: nothing anyone would miss
            after = AFTER_HELLO_RETRY_REQUEST
            self._reader_error(fl, reader, hello, error, ts, frame, truncated, after)

    def _quic_hello(self, fl: _Flow, found: QuicClientHello, ts: int, frame: int) -> None:
        self._release(fl)
        fl.done = True
        fl.scid = found.source_connection_id
        after = fl.after
        if after is None and (
            found.retry_seen
            # A Retry the capture missed: the client's SCID of the connection before
            # on this 5-tuple, now with a token and a new DCID.
            or (found.token and fl.prev_scid and found.source_connection_id == fl.prev_scid)
        ):
            after = AFTER_RETRY
        self._record(
            fl, found.hello, None, ts, frame, "quic", after, self._version_name(found.version)
        )

    def _quic_error(self, fl: _Flow, error: str, ts: int, frame: int, truncated: bool) -> None:
        self._release(fl)
        fl.done = True
        reader = fl.quic
        # The fields read before the first missing CRYPTO byte, as tshark shows them.
        hello = None if reader is None else reader.partial()
        self._reader_error(fl, reader, hello, error, ts, frame, truncated, fl.after)

    def _reader_error(
        self,
        fl: _Flow,
        reader: InitialReader | None,
        hello: ClientHello | None,
        error: str,
        ts: int,
        frame: int,
        truncated: bool,
        after: str | None,
    ) -> None:
        """The record of a QUIC hello that failed or was cut, with what was read of it."""
        if truncated:
            error += f" (packet {frame} was cut by the snaplen)"
        name = None if reader is None else self._version_name(reader.version)
        self._record(fl, hello, error, ts, frame, "quic", after, name)

    def _version_name(self, version: int | None) -> str | None:
        """A QUIC version as records name it: ``"v1"``, ``"v2"``, ``"draft-29"``."""
        if version is None:
            return None
        name: str = self._quic_module().version_name(version)
        return name

    def _server_packet(self, fl: _Flow, client_key: bytes, payload: bytes) -> None:
        """A long-header packet from the server of ``fl``: only a Retry matters."""
        quic = self._quic_module()
        spec = quic.VERSIONS[int.from_bytes(payload[1:5], "big")]
        if spec.packet_types[(payload[0] >> 4) & 3] is not quic.PacketType.RETRY:
            return  # the server's Initial or Handshake: its type bits say so, no parse needed
        try:
            header = quic.pull_quic_header(payload)
        except MalformedHello:
            return
        if not fl.done and fl.quic is not None:
            fl.quic.feed_server(payload)
            return
        self.retries[client_key + header.source_cid] = None
        if len(self.retries) > self.limits.max_flows:
            del self.retries[next(iter(self.retries))]

    def _file_dcid(self, fl: _Flow, dcid: bytes) -> None:
        if len(fl.dcids) >= 8:  # a connection is filed under a few DCIDs at most
            return
        fl.dcids.append(dcid)
        self.quic[fl.key + dcid] = fl
        if len(self.quic) > self.limits.max_done:
            # Finished connections are kept for their later packets' sake only: forget
            # the older half (their packets then cost one failed decryption each).
            for k in list(self.quic)[: len(self.quic) // 2]:
                if self.quic[k].done:
                    del self.quic[k]

    @staticmethod
    def _reverse(key: bytes, v6: bool) -> bytes:
        a = 16 if v6 else 4
        return key[a : 2 * a] + key[:a] + key[2 * a + 2 : 2 * a + 4] + key[2 * a : 2 * a + 2]

    # -- DTLS --------------------------------------------------------------------------
    def _dtls_datagram(
        self, key: bytes, v6: bool, payload: bytes, ts: int, frame: int, truncated: bool
    ) -> None:
        fl = self.dtls.get(key)
        if fl is None:
            # A handshake record of a DTLS version whose first fragment is a ClientHello.
            if (
                len(payload) <= _DTLS_HEADER
                or payload[0] != _DTLS_HANDSHAKE
                or payload[_DTLS_HEADER] != _CLIENT_HELLO
                or (payload[1] << 8 | payload[2]) not in DTLS_VERSIONS
            ):
                return
            fl = _Flow("dtls", key, v6, ts, frame)
            fl.dtls = DtlsReader(max_size=self.limits.max_hello)
            self.dtls[key] = fl
            if len(self.dtls) > self.limits.max_flows:
                self._evict(next(iter(self.dtls.values())), "flow evicted (too many flows)")
        fl.last_ts = ts
        if fl.done:
            return
        reader = fl.dtls
        assert reader is not None  # internal invariant, not input
        if reader.hellos and len(payload) > 4 and (payload[3] or payload[4]):
            # Epoch > 0: the handshake is encrypted from here on, no more hellos.
            self._finish_dtls(fl)
            return
        try:
            found = reader.feed(payload)
        except (NotTLS, MalformedHello) as exc:
            self._finish_dtls(fl)
            if not reader.hellos and isinstance(exc, NotTLS):
                return  # it only looked like DTLS
            error = str(exc)
            if truncated:
                error += f" (packet {frame} was cut by the snaplen)"
            self._record(fl, None, error, ts, frame, "dtls", None, None)
            return
        fl.frames.append(frame)
        fl.last_frame = frame
        while found is not None:
            self._release(fl)
            hello = found.hello
            after = None
            if found.message_seq > 0 or len(reader.hellos) > 1:
                after = AFTER_HELLO_VERIFY_REQUEST if hello.cookie else AFTER_HELLO_RETRY_REQUEST
            self._record(fl, hello, None, ts, frame, "dtls", after, None)
            found = reader.next_hello()
        if len(reader.hellos) >= self.limits.max_hellos:
            self._finish_dtls(fl)
            return
        self._hold(fl, len(payload))

    def _finish_dtls(self, fl: _Flow) -> None:
        """Stop reading a DTLS flow; it stays in the table so its datagrams cost a lookup."""
        self._release(fl)
        fl.done = True

    # -- records and ends of flows -----------------------------------------------------
    def _record(
        self,
        fl: _Flow,
        hello: ClientHello | None,
        error: str | None,
        ts: int,
        frame: int,
        transport: str,
        after: str | None,
        quic_version: str | None,
    ) -> None:
        key = fl.key
        a = 16 if fl.v6 else 4
        fields: dict[str, Any] = (
            hello_fields(hello, transport) if hello is not None else dict(EMPTY_FIELDS)
        )
        if error is not None:
            fields["error"] = error
        self.emit(
            HelloRecord(
                ts=format_ts(ts),
                src=address_text(key[:a]),
                sport=(key[2 * a] << 8) | key[2 * a + 1],
                dst=address_text(key[a : 2 * a]),
                dport=(key[2 * a + 2] << 8) | key[2 * a + 3],
                transport=transport,
                frame=frame,
                file=self.file,
                hello=hello,
                after=after,
                quic_version=quic_version,
                **fields,
            )
        )

    def _hold(self, fl: _Flow, n: int) -> None:
        """Count ``n`` bytes fed to ``fl``'s reader for a hello not complete yet."""
        fl.bytes_held += n
        self.held += n
        if self.held > self.limits.max_held:
            self._evict_for_memory()

    def _release(self, fl: _Flow) -> None:
        self.held -= fl.bytes_held
        fl.bytes_held = 0

    def _incomplete(self, fl: _Flow, why: str) -> None:
        """Report a flow whose hello was started but never completed."""
        if fl.more is not None:
            self._more_error(fl, why, fl.last_ts, fl.last_frame, False)
        if fl.done or not fl.frames:
            return
        if fl.kind == "quic":
            self._quic_error(fl, why, fl.last_ts, fl.last_frame, False)
        elif fl.dtls is not None and not fl.dtls.hellos:
            hello = fl.dtls.partial()
            self._finish_dtls(fl)
            self._record(fl, hello, why, fl.last_ts, fl.last_frame, "dtls", None, None)

    def _drop(self, fl: _Flow) -> None:
        self._release(fl)
        fl.done = True
        if fl.kind == "dtls":
            self.dtls.pop(fl.key, None)
            return
        for dcid in fl.dcids:
            self.quic.pop(fl.key + dcid, None)
        if self.latest.get(fl.key) is fl:
            del self.latest[fl.key]

    def _evict(self, fl: _Flow, why: str) -> None:
        self._incomplete(fl, why)
        self._drop(fl)

    def _evict_for_memory(self) -> None:
        for fl in [*self.latest.values(), *self.dtls.values()]:
            if self.held <= self.limits.max_held * 3 // 4:
                break
            if fl.bytes_held:
                self._evict(fl, "flow evicted (memory cap)")

    def _sweep(self) -> None:
        horizon = self._now - int(self.limits.idle_timeout * 1e9)
        for fl in [*self.latest.values(), *self.dtls.values()]:
            if fl.last_ts < horizon:
                self._evict(fl, "flow idle, hello never completed")
        for key in [k for k, f in self.quic.items() if f.last_ts < horizon]:
            del self.quic[key]

    def finish(self) -> None:
        """End of input: report every hello still incomplete."""
        for fl in [*self.latest.values(), *self.dtls.values()]:
            self._incomplete(fl, "capture ended before the hello completed")
