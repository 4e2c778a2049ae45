"""The capture engine over UDP: QUIC and DTLS flows (sniinspect.capture.udp), UDP and GTP-U
decoding (packets), partial hellos, and the command line's --transport, --summary, hello.

QUIC Initials are built with `clienthello.quic`'s builders around real hello bytes
(tests/data/quic/*.hs); frames with struct. The corpus (real captures) is checked in
test_captures.py and test_corpus_agreement.py; real clients in test_udp_traffic.py.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clienthello
from sniinspect.capture import FlowTable, HelloRecord, Limits
from sniinspect.capture.command import pcap
from sniinspect.main import cli

quic = pytest.importorskip("clienthello.quic")

DATA = Path(__file__).resolve().parent / "data"
HELLO = (DATA / "quic" / "chrome-ja4-quic.hs").read_bytes()  # Chrome, www.blogger.com
CLI, SRV = bytes([192, 0, 2, 10]), bytes([198, 51, 100, 20])
TCP_HELLO = (
    Path(__file__).resolve().parents[1] / "captures" / "hellos" / "python.bin"
).read_bytes()


def ip4(src: bytes, dst: bytes, proto: int, l4: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, src, dst) + l4


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def frame(payload: bytes, sport: int = 50000, dport: int = 443, back: bool = False) -> bytes:
    """Raw IPv4 (link type 228) carrying one UDP datagram, client to server or back."""
    if back:
        return ip4(SRV, CLI, 17, udp(dport, sport, payload))
    return ip4(CLI, SRV, 17, udp(sport, dport, payload))


def run_frames(frames: list[bytes], limits: Limits | None = None) -> list[HelloRecord]:
    t = FlowTable("t", limits)
    for i, f in enumerate(frames, 1):
        t.packet(228, f, 10**9 + i, i)
    t.finish()
    return t.out


def initials(
    hello: bytes, parts: int, dcid: bytes = b"\x11" * 8, scid: bytes = b"\x22" * 8, **kw: object
) -> list[bytes]:
    """The hello's CRYPTO data cut into ``parts`` Initial packets (one per datagram)."""
    step = -(-len(hello) // parts)
    return [
        quic.build_initial(
            kw.pop("version", 1) if i == 0 and "version" in kw else kw.get("v", 1),
            dcid, scid, [quic.crypto_frame(i * step, hello[i * step : (i + 1) * step])],
            packet_number=i, token=kw.get("token", b""),  # type: ignore[arg-type]
            original_destination_cid=kw.get("key_dcid"),  # type: ignore[arg-type]
        )
        for i in range(parts)
    ]  # fmt: skip


# -- QUIC ------------------------------------------------------------------------------
def test_quic_hello_over_three_initials() -> None:
    (rec,) = run_frames([frame(d) for d in initials(HELLO, 3)])
    assert (rec.transport, rec.sni, rec.error, rec.frame) == ("quic", "www.blogger.com", None, 3)
    assert rec.ja4 == "q13d0310h3_55b375c5d22e_cd85d2d88918"  # Suricata's, for this hello
    assert rec.quic_version == "v1" and rec.after is None and rec.ja3


def test_quic_v2_and_any_port() -> None:
    (rec,) = run_frames([frame(quic.build_initial(quic.QUIC_V2, b"\x01" * 8, b"", [
        quic.crypto_frame(0, HELLO)]), dport=8443)])  # fmt: skip
    assert (rec.sni, rec.quic_version, rec.dport) == ("www.blogger.com", "v2", 8443)


def test_quic_four_tuple_reused_by_a_new_connection() -> None:
    """Chromium reuses a 4-tuple: a new DCID that opens with its own keys is a new hello."""
    a = initials(HELLO, 1, dcid=b"\x01" * 8)
    b = initials(HELLO, 2, dcid=b"\x02" * 8, scid=b"\x33" * 8)
    recs = run_frames([frame(d) for d in a + b])
    assert [(r.frame, r.after) for r in recs] == [(1, None), (3, None)]


def test_quic_client_switches_dcid_mid_hello() -> None:
    """The rest of the hello sent to the server's connection ID, with the original keys."""
    first = initials(HELLO, 2, dcid=b"\x01" * 8)[0]
    half = -(-len(HELLO) // 2)
    second = quic.build_initial(
        1, b"\x09" * 8, b"\x22" * 8, [quic.crypto_frame(half, HELLO[half:])],
        packet_number=1, original_destination_cid=b"\x01" * 8,
    )  # fmt: skip
    recs = run_frames([frame(first), frame(second)])
    assert [(r.sni, r.frame, r.error) for r in recs] == [("www.blogger.com", 2, None)]


def test_quic_retry_from_the_server_marks_the_next_hello() -> None:
    odcid, new = b"\x01" * 8, b"\x0a" * 8
    retry = quic.build_retry(1, odcid, b"\x22" * 8, new, b"token")
    after = initials(HELLO, 1, dcid=new, token=b"token")
    recs = run_frames([frame(initials(HELLO, 1, dcid=odcid)[0]), frame(retry, back=True),
                       frame(after[0])])  # fmt: skip
    assert [(r.frame, r.after) for r in recs] == [(1, None), (3, "retry")]


def test_quic_retry_missed_by_the_capture_is_still_marked() -> None:
    """Same client SCID, a token and a new DCID: the client's hello after a Retry."""
    recs = run_frames([frame(d) for d in initials(HELLO, 1, dcid=b"\x01" * 8)
                       + initials(HELLO, 1, dcid=b"\x0a" * 8, token=b"t")])  # fmt: skip
    assert [r.after for r in recs] == [None, "retry"]


def _hello_retry_exchange(second: bytes) -> list[bytes]:
    """A hello, the server's HelloRetryRequest, the client's ACK, then ``second`` further
    on in the CRYPTO stream, to the server's connection ID in two Initials (end first)."""
    odcid, server_cid, scid = b"\x01" * 8, b"\x5e" * 8, b"\x22" * 8
    hrr = quic.build_initial(
        1, scid, server_cid, [quic.ack_frame(0), quic.crypto_frame(0, b"\x02\x00\x00\x02\x03\x03")],
        is_client=False, original_destination_cid=odcid,
    )  # fmt: skip

    def later(pn: int, frames: list[bytes]) -> bytes:
        return quic.build_initial(
            1, server_cid, scid, frames, packet_number=pn, original_destination_cid=odcid
        )

    half = len(second) // 2
    return [
        frame(initials(HELLO, 1, dcid=odcid)[0]),
        frame(hrr, back=True),
        frame(later(1, [quic.ack_frame(0)])),
        frame(later(2, [quic.crypto_frame(len(HELLO) + half, second[half:])])),
        frame(later(3, [quic.PING_FRAME, quic.crypto_frame(len(HELLO), second[:half])])),
    ]


def test_quic_second_hello_after_hello_retry_request() -> None:
    # Another client's hello stands in for the second (any hello will do for the
    # engine), so that the records tell the two apart.
    second = (DATA / "quic" / "curl-8.1.2.hs").read_bytes()
    recs = run_frames(_hello_retry_exchange(second))
    assert [(r.frame, r.sni, r.after, r.error) for r in recs] == [
        (1, "www.blogger.com", None, None),
        (5, "www.google.de", "hello_retry_request", None),
    ]
    assert recs[1].ja4 and recs[1].ja4.startswith("q13") and recs[1].quic_version == "v1"
    # The capture ends with the second hello's end only: no byte from its start, no record.
    frames = _hello_retry_exchange(second)
    assert [r.after for r in run_frames(frames[:4])] == [None]
    # It ends with the first half only: reported with what it holds, as tshark shows it.
    cut = run_frames([*frames[:3], frames[4]])
    assert [(r.after, r.error, r.sni) for r in cut] == [
        (None, None, "www.blogger.com"),
        ("hello_retry_request", "capture ended before the hello completed", "www.google.de"),
    ]


def test_quic_incomplete_and_cut_initials_are_errors() -> None:
    first = initials(HELLO, 3)[0]
    (rec,) = run_frames([frame(first)])
    assert rec.error == "capture ended before the hello completed" and rec.transport == "quic"
    # What the first Initial held is shown, as tshark shows it: the name comes early.
    assert rec.sni == "www.blogger.com" and rec.ciphers and rec.ja4 is None
    cut = FlowTable("t")
    cut.packet(228, frame(first)[:300], 1, 1)  # as if the snaplen were 300
    cut.finish()
    (rec,) = cut.out
    assert rec.error is not None and "snaplen" in rec.error and rec.quic_version == "v1"


def test_quic_server_initial_and_short_headers_are_not_hellos() -> None:
    server = quic.build_initial(1, b"\x22" * 8, b"\x33" * 8, [quic.crypto_frame(0, b"\x02" +
        HELLO[1:])], is_client=False, original_destination_cid=b"\x01" * 8)  # fmt: skip
    short = b"\x41" + b"\x22" * 8 + bytes(100)
    assert (
        run_frames([frame(server, back=True), frame(short), frame(b"\xc0\xff\xff\xff\xff")]) == []
    )


def test_skipped_first_bytes_never_start_an_initial_or_a_retry() -> None:
    # SKIP_UDP drops datagrams by their first byte alone: in no version we read may a
    # skipped byte be a client Initial or a server Retry, and short headers are skipped.
    from sniinspect.capture.packets import SKIP_UDP

    for spec in quic.VERSIONS.values():
        for kind in (quic.PacketType.INITIAL, quic.PacketType.RETRY):
            first = 0xC0 | spec.type_bits(kind) << 4
            assert not any(SKIP_UDP[first | low] for low in range(16)), (spec.name, kind)
    assert all(SKIP_UDP[b] for b in range(0x40, 0x80))  # short headers, fixed bit set
    assert not SKIP_UDP[22]  # a DTLS handshake record


def test_quic_flows_bounded() -> None:
    frames = [frame(initials(HELLO, 2, dcid=bytes([i]) * 8)[0], sport=1000 + i) for i in range(30)]
    recs = run_frames(frames, Limits(max_flows=10))
    assert len(recs) == 30 and all(r.error for r in recs)
    assert sum("too many flows" in (r.error or "") for r in recs) == 20


# -- DTLS ------------------------------------------------------------------------------
def dtls_records(
    hello: bytes, sizes: list[int], seq: int = 0, version: int = 0xFEFD
) -> list[bytes]:
    """A DTLS ClientHello (bare TLS handshake message) as one record per fragment."""
    body = hello[4:]
    out, off = [], 0
    for i, n in enumerate([*sizes, len(body)]):
        chunk = body[off : off + n]
        if not chunk:
            break
        hs = (b"\x01" + len(body).to_bytes(3, "big") + seq.to_bytes(2, "big")
              + off.to_bytes(3, "big") + len(chunk).to_bytes(3, "big") + chunk)  # fmt: skip
        out.append(struct.pack("!BHHQ", 22, version, 0, i)[:11] + struct.pack("!H", len(hs)) + hs)
        off += len(chunk)
    return out


def dtls_hello(cookie: bytes = b"") -> bytes:
    """A DTLS ClientHello handshake message (4-byte header form) with a cookie field."""
    tls = TCP_HELLO[5:]
    body = tls[4:]
    sid_end = 2 + 32 + 1 + body[34]
    body = body[:sid_end] + bytes([len(cookie)]) + cookie + body[sid_end:]
    body = b"\xfe\xfd" + body[2:]
    return b"\x01" + len(body).to_bytes(3, "big") + body


def test_dtls_fragments_out_of_order_and_hello_verify_request() -> None:
    first = dtls_records(dtls_hello(), [100, 150])
    second = dtls_records(dtls_hello(b"C" * 20), [400], seq=1)
    # Fragment 2 first, fragment 0 twice (a retransmission), then 1; then the second hello.
    order = [first[2], first[0], first[0], first[1], b"".join(second)]
    recs = run_frames([frame(d, dport=4433) for d in order])
    assert [(r.transport, r.sni, r.frame, r.after) for r in recs] == [
        ("dtls", "python.test", 4, None),
        ("dtls", "python.test", 5, "hello_verify_request"),
    ]
    assert recs[0].ja4 is not None and recs[0].ja4.startswith("d13d")  # it offers TLS 1.3


def test_dtls_malformed_is_an_error_record() -> None:
    (rec,) = dtls_records(dtls_hello()[:60] + b"\x00" * 3, [])
    recs = run_frames([frame(rec)])
    assert len(recs) == 1 and recs[0].error and recs[0].transport == "dtls"


# -- UDP decoding: IPv6, GTP-U; partial TCP hellos ----------------------------------------
def test_udp_over_ipv6_with_extension_header() -> None:
    payload = initials(HELLO, 1)[0]
    dgram = udp(50000, 443, payload)
    hop = bytes([17, 0]) + bytes(6)  # hop-by-hop options, next header UDP
    v6 = struct.pack("!IHBB16s16s", 6 << 28, len(hop) + len(dgram), 0, 64,
                     b"\x20\x01\x0d\xb8" + bytes(11) + b"\x01", b"\x20\x01\x0d\xb8" + bytes(11)
                     + b"\x02") + hop + dgram  # fmt: skip
    t = FlowTable("t")
    t.packet(229, v6, 1, 1)
    assert [(r.src, r.sni) for r in t.out] == [("2001:db8::1", "www.blogger.com")]


def test_tcp_inside_gtp_u() -> None:
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + TCP_HELLO
    inner = ip4(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 6, tcp)
    gtp = struct.pack("!BBHI", 0x30, 0xFF, len(inner), 1) + inner
    t = FlowTable("t")
    t.packet(228, ip4(CLI, SRV, 17, udp(2152, 2152, gtp)), 1, 1)
    t.finish()
    assert [(r.src, r.transport, r.sni) for r in t.out] == [("10.0.0.1", "tcp", "python.test")]


def test_partial_tcp_hello_keeps_its_fields() -> None:
    t = FlowTable("t")
    t.segment(CLI + SRV + struct.pack("!HH", 50000, 443), False, 1, 0x18, TCP_HELLO[:200], 1, 1)
    t.finish()
    (rec,) = t.out
    assert rec.error and rec.sni == "python.test" and rec.ciphers and rec.ja4 is None


# -- hypothesis: random and damaged datagrams never crash the engine ------------------------
SEEDS = [initials(HELLO, 2)[0], b"".join(dtls_records(dtls_hello(), [200]))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(
    st.binary(min_size=1, max_size=1400),
    st.sampled_from(SEEDS).flatmap(lambda s: st.tuples(
        st.just(s), st.lists(st.integers(0, len(s) * 8 - 1), max_size=4),
        st.integers(1, len(s)))).map(lambda t: bytes(
            b ^ (sum(1 << (i % 8) for i in t[1] if i // 8 == k) & 0xFF)
            for k, b in enumerate(t[0][: t[2]]))),
), min_size=1, max_size=6), st.booleans())  # fmt: skip
def test_random_datagrams_never_crash(payloads: list[bytes], back: bool) -> None:
    frames = [frame(p, back=back and i % 2 == 1) for i, p in enumerate(payloads)]
    for rec in run_frames(frames, Limits(max_flows=3, max_held=4000)):
        assert rec.transport in ("quic", "dtls")
        assert rec.error is None or isinstance(rec.error, str)


# -- the command line ------------------------------------------------------------------------
def _pcap_file(tmp: Path, frames: list[bytes]) -> Path:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 228)
    for i, f in enumerate(frames):
        out += struct.pack("<IIII", 1700000000, i, len(f), len(f)) + f
    path = tmp / "mixed.pcap"
    path.write_bytes(out)
    return path


def test_transport_filter_summary_and_table(tmp_path: Path) -> None:
    tcp = ip4(CLI, SRV, 6, struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
              + TCP_HELLO)  # fmt: skip
    path = _pcap_file(tmp_path, [tcp, frame(initials(HELLO, 1)[0])])
    runner = CliRunner()
    out = runner.invoke(pcap, ["--format", "jsonl", "--transport", "quic", str(path)]).output
    assert [json.loads(line)["transport"] for line in out.splitlines()] == ["quic"]
    summary = json.loads(runner.invoke(pcap, ["--summary", "--format", "json", str(path)]).output)
    assert summary["transports"] == {"quic": 1, "tcp": 1}
    table = runner.invoke(pcap, [str(path)]).output
    assert "PROTO" in table and "quic" in table and "tcp" in table
    bad = runner.invoke(pcap, ["--transport", "sctp", str(path)])
    assert bad.exit_code == 2 and "sctp" in bad.output


def test_hello_command_decrypts_a_quic_initial() -> None:
    datagram = initials(HELLO, 1)[0]
    result = CliRunner().invoke(cli, ["hello", "--format", "json", "-"], input=datagram.hex())
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["server_name"] == "www.blogger.com" and info["ja4"].startswith("q13")
    assert info["quic_version"].startswith("0x00000001")
    part = CliRunner().invoke(cli, ["hello", "-"], input=initials(HELLO, 2)[0])
    assert part.exit_code == 2 and "further Initial" in part.output


def test_hello_command_takes_a_hello_over_several_initials(tmp_path: Path) -> None:
    """Chrome's hello over three Initials: every datagram named, in any order."""
    paths = []
    for i, datagram in enumerate(initials(HELLO, 3)):
        paths.append(tmp_path / f"initial{i}.hex")
        paths[-1].write_text(datagram.hex())
    runner = CliRunner()
    for order in ([0, 1, 2], [2, 0, 1]):
        args = ["hello", "--format", "json", *(str(paths[i]) for i in order)]
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        info = json.loads(result.output)
        assert info["server_name"] == "www.blogger.com"
        assert info["ja4"] == "q13d0310h3_55b375c5d22e_cd85d2d88918"
        assert (info["quic_packets"], info["quic_crypto_frames"]) == (3, 3)
    short = runner.invoke(cli, ["hello", str(paths[0]), str(paths[1])])
    assert short.exit_code == 2 and "the 2 datagrams given hold" in short.output
    assert "Traceback" not in short.output
    twice = runner.invoke(cli, ["hello", "-", "-"], input=b"")
    assert twice.exit_code == 2 and "read once" in twice.output


def test_hello_command_decodes_the_transport_parameters() -> None:
    hello = clienthello.parse_handshake(HELLO)
    datagram = initials(HELLO, 1)[0]
    result = CliRunner().invoke(cli, ["hello", "--format", "json", "-"], input=datagram.hex())
    params = json.loads(result.output)["quic_transport_parameters"]
    assert [(p["id"], p["name"]) for p in params] == [
        (p.id, p.name) for p in hello.quic_transport_parameters or ()
    ]
    by_name = {p["name"]: p["value"] for p in params}
    assert by_name["max_idle_timeout"] == 30000 and by_name["max_udp_payload_size"] == 1472
    assert by_name["initial_source_connection_id"] == ""  # Chrome sends an empty SCID
    assert by_name["GREASE"] == "77c596ac"  # kept, its bytes as sent
    text = CliRunner().invoke(cli, ["hello", "-"], input=datagram.hex()).output
    assert "    0x0001  max_idle_timeout  30000" in text
    assert "initial_source_connection_id  (empty)" in text


def test_hello_command_shows_a_malformed_transport_parameter() -> None:
    """A parameter whose value has not its type's shape: the hello is still shown."""
    at = HELLO.index(bytes.fromhex("030245c0"))  # max_udp_payload_size = 1472
    bad = HELLO[: at + 2] + b"\x05" + HELLO[at + 3 :]  # a 1-byte varint, then a spare byte
    datagram = initials(bad, 1)[0]
    result = CliRunner().invoke(cli, ["hello", "--format", "json", "-"], input=datagram.hex())
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    (entry,) = [p for p in info["quic_transport_parameters"] if p["id"] == 0x03]
    assert entry == {
        "id": 3,
        "name": "max_udp_payload_size",
        "value": "05c0",
        "error": "1 trailing bytes",
    }
    assert info["server_name"] == "www.blogger.com"
    text = CliRunner().invoke(cli, ["hello", "-"], input=datagram.hex()).output
    assert "max_udp_payload_size  05c0  (malformed: 1 trailing bytes)" in text


def test_version_prefilter_covers_the_library_table() -> None:
    """The check made before importing clienthello.quic lets every known version by."""
    from sniinspect.capture.udp import _may_be_quic_version

    assert all(_may_be_quic_version(v) for v in quic.VERSIONS)
