"""Agreement with tshark, FoxIO ja4-python, suricata-verify and zeek on the public corpus.

For every TCP ClientHello in ../shared/corpus/public/*.expected.jsonl the hello bytes
are pulled from the capture (helpers.corpus_hellos: TCP reassembly by sequence number,
hello found by content, matched to tshark's lines by 4-tuple and order) and parsed;
each field must equal tshark 4.0.17's. JA4 (which tshark 4.0 lacks) is checked against
the origin projects' own expected outputs. Where we disagree on purpose the table
DISAGREE says so and why.

QUIC and DTLS hellos (UDP) are checked through the capture engine (`sniinspect.capture`:
QUIC Initials decrypted by `clienthello.quic`, DTLS reassembled by `clienthello.dtls`):
every tshark line is one of our records with the same fields, or is shown to be a DTLS
fragment or retransmission tshark lists as a hello (its reason checked); JA4 and the
extension lists are checked against Suricata's expected QUIC events, server names
against Zeek's ssl.log.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    CORPUS,
    ORIGIN_EXPECTED,
    CorpusHello,
    corpus_files,
    corpus_hellos,
    tshark_alpn,
    udp_lines,
)

import clienthello
from clienthello import ClientHello, MalformedHello
from sniinspect.capture import Capture, HelloRecord

pytestmark = pytest.mark.skipif(
    not CORPUS.is_dir(), reason=f"public corpus not found at {CORPUS} (../shared is absent)"
)

HELLOS: list[CorpusHello] = [h for cap in corpus_files() for h in corpus_hellos(cap)]
TCP_IN_CORPUS = 104  # TCP lines in the .expected.jsonl files as shipped (tshark 4.0.17)

# Where we disagree with an oracle on purpose: (file, line or None, field) -> why.
DISAGREE: dict[tuple[str, int | None, str], str] = {
    ("tls-non-ascii-alpn.pcapng", None, "ja4"): (
        "ja4-python (FoxIO python/ja4.py at 0e54bc83) writes '99' when the first ALPN value "
        "is not alphanumeric ASCII; the current JA4 spec (FoxIO technical_details/JA4.md) "
        "takes the first and last characters of the hex of the value: 0xbaad -> 'bd'. "
        "The ja4_r/ja4 hashes are unaffected, only the ALPN slot of the prefix."
    ),
}


def _disagree(h: CorpusHello, field: str) -> str | None:
    return DISAGREE.get((h.file, h.index, field)) or DISAGREE.get((h.file, None, field))


def _parse(h: CorpusHello) -> ClientHello:
    assert h.data is not None, f"{h.id}: no ClientHello bytes found in the capture"
    return clienthello.parse(h.data)


def test_corpus_is_complete() -> None:
    """The extractor finds a hello for every TCP line tshark wrote."""
    assert len(HELLOS) == TCP_IN_CORPUS
    missing = [h.id for h in HELLOS if h.data is None]
    assert missing == []


# ---- QUIC and DTLS, through the capture engine ------------------------------------


@functools.cache
def _engine(name: str) -> tuple[HelloRecord, ...]:
    """Our UDP records for one corpus capture (read once per test session)."""
    return tuple(r for r in Capture(CORPUS / name) if r.transport != "tcp")


UDP_LINES: list[tuple[str, dict[str, Any]]] = (
    [(cap.name, x) for cap in corpus_files() for x in udp_lines(cap)] if CORPUS.is_dir() else []
)


def test_udp_lines_found() -> None:
    """The corpus holds QUIC and DTLS hellos (each checked below, one test per line)."""
    protos = {x["proto"] for _name, x in UDP_LINES}
    assert protos == {"quic", "dtls"} and len(UDP_LINES) > 150


@pytest.mark.parametrize(("name", "x"), UDP_LINES, ids=[f"{n}-{x['frame']}" for n, x in UDP_LINES])
def test_udp_hello_equals_tshark(name: str, x: dict[str, Any]) -> None:
    flow = [
        r for r in _engine(name) if (r.src, r.sport, r.dst, r.dport) == (
            x["src"], x["sport"], x["dst"], x["dport"])
    ]  # fmt: skip
    ours = [r for r in flow if r.frame == x["frame"]]
    if not ours:
        if x["proto"] == "dtls" and not x["ciphers"]:
            # tshark lists each fragment of a fragmented DTLS hello as a hello of its own
            # (corpus README); ours is the reassembled hello, completed by a later frame.
            assert any(r.frame > x["frame"] and r.ciphers for r in flow)
            return
        # Else a retransmission (same message_seq and bytes) of a DTLS hello tshark
        # lists again: we reported it once, earlier on the same flow.
        assert x["proto"] == "dtls"
        assert any(
            r.frame < x["frame"] and r.ciphers == x["ciphers"]
            and r.extensions == x["extensions"] and r.ja3 == x["ja3"] for r in flow
        ), f"{name} frame {x['frame']}: no record, and not a retransmission"  # fmt: skip
        return
    rec = ours[0]
    assert rec.transport == x["proto"] and rec.error is None and rec.ts == x["ts"]
    hello = rec.hello
    assert hello is not None
    assert hello.server_name == rec.sni == x["sni"]
    assert [n.decode("utf-8", "backslashreplace") for n in hello.server_name_raw or ()] == x[
        "sni_all"
    ]
    assert tshark_alpn(hello.alpn_protocols or ()) == rec.alpn == x["alpn"]
    assert [p.hex() for p in hello.alpn_protocols or ()] == x["alpn_hex"]
    assert rec.versions == x["versions"] and hello.legacy_version == x["legacy_version"]
    assert rec.ciphers == x["ciphers"] and rec.extensions == x["extensions"]
    assert rec.groups == x["groups"] and rec.sig_algs == x["sig_algs"]
    assert hello.grease is x["grease"]
    assert clienthello.ja3_string(hello) == x["ja3_full"] and rec.ja3 == x["ja3"]
    assert rec.ja4 == clienthello.ja4(hello, transport=rec.transport)
    assert rec.ja4 is not None and rec.ja4[0] == {"quic": "q", "dtls": "d"}[rec.transport]
    if x["proto"] == "quic":
        assert rec.quic_version is not None


TSHARK_MALFORMED = [h for h in HELLOS if h.expected["malformed"]]
WELL_FORMED = [h for h in HELLOS if not h.expected["malformed"]]


@pytest.mark.parametrize("h", WELL_FORMED, ids=lambda h: h.id)
def test_fields_equal_tshark(h: CorpusHello) -> None:
    x = h.expected
    hello = _parse(h)
    assert hello.sslv2 is x["sslv2"]
    assert hello.server_name == x["sni"]
    assert [n.decode("utf-8", "backslashreplace") for n in hello.server_name_raw or ()] == x[
        "sni_all"
    ]
    assert clienthello.sni(h.data) == x["sni"]  # type: ignore[arg-type]
    assert tshark_alpn(hello.alpn_protocols or ()) == x["alpn"]
    assert [p.hex() for p in hello.alpn_protocols or ()] == x["alpn_hex"]
    assert list(hello.supported_versions or ()) == x["versions"]
    assert hello.legacy_version == x["legacy_version"]
    assert list(hello.cipher_suites) == x["ciphers"]
    assert list(hello.extension_types) == x["extensions"]
    assert list(hello.supported_groups or ()) == x["groups"]
    assert list(hello.signature_algorithms or ()) == x["sig_algs"]
    assert hello.grease is x["grease"]


@pytest.mark.parametrize("h", WELL_FORMED, ids=lambda h: h.id)
def test_ja3_equals_tshark(h: CorpusHello) -> None:
    x = h.expected
    if x["ja3"] is None:
        assert x["sslv2"], "tshark omits JA3 only for SSLv2 hellos here"
        pytest.skip("tshark 4.0 computes no JA3 for an SSLv2-compatible hello")
    hello = _parse(h)
    assert clienthello.ja3_string(hello) == x["ja3_full"]
    assert clienthello.ja3(hello) == x["ja3"]


@pytest.mark.parametrize("h", TSHARK_MALFORMED, ids=lambda h: h.id)
def test_tshark_malformed_is_malformed(h: CorpusHello) -> None:
    """tshark marks these frames [Malformed Packet] and shows what it could decode
    (tls_cipher_lens.pcap: cipher-suite lengths that overrun the hello). We do not
    guess: the hello is refused with MalformedHello, by parse and sni alike."""
    assert h.data is not None
    with pytest.raises(MalformedHello):
        clienthello.parse(h.data)
    with pytest.raises(MalformedHello):
        clienthello.sni(h.data)


# ---- JA4 from FoxIO's ja4-python expected outputs ---------------------------------


def _ja4_expectations() -> list[tuple[CorpusHello, str, str, str, str | None]]:
    """(hello, oracle file, JA4, JA4_r, domain) for each JA4.n of a TCP stream."""
    out = []
    by_key: dict[tuple[str, str, int, str, int], list[CorpusHello]] = {}
    for h in HELLOS:
        x = h.expected
        by_key.setdefault((h.file, x["src"], x["sport"], x["dst"], x["dport"]), []).append(h)
    for path in sorted(ORIGIN_EXPECTED.glob("*.ja4-python.json")):
        capture = path.name.removesuffix(".ja4-python.json")
        for entry in json.loads(path.read_text()):
            key = (
                capture,
                entry["src"],
                int(entry["srcport"]),
                entry["dst"],
                int(entry["dstport"]),
            )
            n = 1
            while f"JA4.{n}" in entry:
                hellos = by_key.get(key, [])
                if len(hellos) >= n:  # else not a TCP stream
                    out.append(
                        (
                            hellos[n - 1],
                            path.name,
                            entry[f"JA4.{n}"],
                            entry[f"JA4_r.{n}"],
                            entry.get("domain"),
                        )
                    )
                n += 1
    return out


JA4_CASES = _ja4_expectations() if CORPUS.is_dir() else []


def test_ja4_cases_found() -> None:
    """Every TCP JA4.n in the ja4-python files pairs with an extracted hello."""
    assert len(JA4_CASES) >= 60


@pytest.mark.parametrize(
    ("h", "oracle", "ja4", "ja4_r", "domain"),
    JA4_CASES,
    ids=[f"{c[0].id}-{c[1]}" for c in JA4_CASES],
)
def test_ja4_equals_ja4_python(
    h: CorpusHello, oracle: str, ja4: str, ja4_r: str, domain: str | None
) -> None:
    hello = _parse(h)
    if domain is not None:
        assert hello.server_name == domain
    why = _disagree(h, "ja4")
    if why is None:
        assert clienthello.ja4(hello) == ja4
        assert clienthello.ja4_r(hello) == ja4_r
        return
    # Documented disagreement in the ALPN slot (chars 9-10) only; the rest must match.
    ours, theirs = clienthello.ja4(hello), ja4
    assert ours[:8] + ours[10:] == theirs[:8] + theirs[10:], why
    assert ours[8:10] != theirs[8:10], "the oracle now agrees: drop the DISAGREE entry"
    alpn = (hello.alpn_protocols or (b"",))[0]
    assert ours[8:10] == alpn.hex()[0] + alpn.hex()[-1], why
    ours_r = clienthello.ja4_r(hello)
    assert ours_r[:8] + ours_r[10:] == ja4_r[:8] + ja4_r[10:]


# ---- suricata-verify and zeek expected outputs ---------------------------------------


def _suricata_values(path: Any) -> dict[str, str]:
    """``tls.<key>: value`` lines of a suricata-verify test.yaml (no YAML parser needed)."""
    found = re.findall(
        r"^\s*(tls\.(?:sni|ja3\.hash|ja4)):\s*\"?([^\"\n]+)\"?\s*$", path.read_text(), flags=re.M
    )
    return dict(found)


SURICATA = sorted(ORIGIN_EXPECTED.glob("*.suricata-test.yaml")) if CORPUS.is_dir() else []


# The files with tls.* values (the others hold QUIC events: test_suricata_quic_events).
SURICATA_TLS = [p for p in SURICATA if _suricata_values(p)]


@pytest.mark.parametrize("path", SURICATA_TLS, ids=lambda p: p.name)
def test_suricata_values(path: Any) -> None:
    capture = path.name.removesuffix(".suricata-test.yaml")
    values = _suricata_values(path)
    hellos = [h for h in HELLOS if h.file == capture]
    if not values or not hellos:
        pytest.skip(f"{path.name}: no TLS-over-TCP ClientHello value to compare")
    assert len(hellos) == 1
    hello = _parse(hellos[0])
    if "tls.sni" in values:
        assert hello.server_name == values["tls.sni"]
    if "tls.ja3.hash" in values:
        assert clienthello.ja3(hello) == values["tls.ja3.hash"]
    if "tls.ja4" in values:
        assert clienthello.ja4(hello) == values["tls.ja4"]


# Suricata's names for the extension types in its QUIC events.
_SURICATA_EXTENSIONS = {
    "server_name": 0, "status_request": 5, "supported_groups": 10, "ec_point_formats": 11,
    "signature_algorithms": 13, "alpn": 16, "signed_certificate_timestamp": 18,
    "compress_certificate": 27, "pre_shared_key": 41, "early_data": 42,
    "supported_versions": 43, "psk_key_exchange_modes": 45, "key_share": 51,
    "quic_transport_parameters": 57,
}  # fmt: skip


def _suricata_quic_filters(path: Path) -> list[dict[str, str]]:
    """The ``match`` blocks of a suricata-verify test.yaml whose event_type is quic,
    with their ``count`` (read line by line: no YAML parser needed)."""
    out: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in path.read_text().splitlines():
        text = line.strip()
        if text.startswith("- filter:"):
            current = {}
            out.append(current)
        elif current is not None and ":" in text and not text.endswith(":"):
            k, _, v = text.partition(":")
            current[k.strip()] = v.strip().strip('"')
    return [f for f in out if f.get("event_type") == "quic"]


def _frame_source(capture: Path, number: int) -> str:
    """The source address of a capture's packet ``number`` (1-based), read with scapy."""
    import scapy.layers.inet6
    import scapy.layers.l2
    from scapy.utils import PcapReader

    ip = (scapy.layers.inet.IP, scapy.layers.inet6.IPv6)

    with PcapReader(str(capture)) as packets:
        for i, pkt in enumerate(packets, 1):
            if i == number:
                layer = pkt.getlayer(ip[0]) or pkt.getlayer(ip[1])
                return str(layer.src)
    raise AssertionError(f"{capture.name} has no packet {number}")


SURICATA_QUIC = [
    (p, f) for p in SURICATA for f in _suricata_quic_filters(p)
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "match"),
    SURICATA_QUIC,
    ids=[f"{p.name}-{i}" for i, (p, _) in enumerate(SURICATA_QUIC)],
)
def test_suricata_quic_events(path: Path, match: dict[str, str]) -> None:
    """Suricata's QUIC events: JA4, extension order, SNI and ALPN values per hello.
    Suricata logs the server's hello too (its supported_versions first): such an event
    must come from the server, and we (reporting client hellos) have no record there."""
    capture = CORPUS / path.name.removesuffix(".suricata-test.yaml")
    records = [r for r in _engine(capture.name) if r.transport == "quic"]
    if "pcap_cnt" in match:
        records = [r for r in records if r.frame == int(match["pcap_cnt"])]
        if not records:
            clients = {r.src for r in _engine(capture.name)}
            assert _frame_source(capture, int(match["pcap_cnt"])) not in clients
            return

    def fits(r: HelloRecord) -> bool:
        for key, value in match.items():
            m = re.fullmatch(r"quic\.extensions\[(\d+)\]\.(name|values\[0\])", key)
            if key == "quic.ja4" and r.ja4 != value:
                return False
            if m and m.group(2) == "name":
                i = int(m.group(1))
                if len(r.extensions) <= i or r.extensions[i] != _SURICATA_EXTENSIONS[value]:
                    return False
            elif m:
                ext = r.extensions[int(m.group(1))]
                if value != ({0: r.sni, 16: (r.alpn or [None])[0]}.get(ext)):
                    return False
        return True

    assert sum(1 for r in records if fits(r)) == int(match.get("count", "1")), [
        (r.frame, r.ja4, r.extensions) for r in records
    ]


ZEEK = sorted(ORIGIN_EXPECTED.glob("*.zeek-ssl.log")) if CORPUS.is_dir() else []


@pytest.mark.parametrize("path", ZEEK, ids=lambda p: p.name)
def test_zeek_server_name(path: Any) -> None:
    capture = path.name.removesuffix(".zeek-ssl.log")
    fields: list[str] = []
    rows: list[dict[str, str]] = []
    for line in path.read_text().splitlines():
        if line.startswith("#fields"):
            fields = line.split("\t")[1:]
        elif line and not line.startswith("#"):
            rows.append(dict(zip(fields, line.split("\t"), strict=True)))
    checked = 0
    for row in rows:
        key = (row["id.orig_h"], int(row["id.orig_p"]), row["id.resp_h"], int(row["id.resp_p"]))
        for h in HELLOS:
            x = h.expected
            if h.file == capture and (x["src"], x["sport"], x["dst"], x["dport"]) == key:
                name = row["server_name"]
                assert _parse(h).server_name == (None if name == "-" else name)
                checked += 1
        for rec in _engine(capture):
            if (rec.src, rec.sport, rec.dst, rec.dport) == key:  # QUIC: through the engine
                name = row["server_name"]
                assert rec.sni == (None if name == "-" else name)
                checked += 1
    assert checked > 0, f"{path.name}: no hello of ours on its connections"
