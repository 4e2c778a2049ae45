"""`sniinspect.capture` against expected answers: our captures/ and the public corpus (tshark).

- captures/*: every record of ``<capture>.expected.jsonl`` (made by captures/make.py from
  how the capture was built), and make.py reproduces every file byte for byte.
- ../shared/corpus/public/*: the ClientHellos we report (TCP, QUIC and DTLS) are exactly
  tshark's (same connection and frame, SNI, ALPN, versions, ciphers, extensions, groups,
  sig_algs, JA3), but for differences listed with their reasons (DTLS fragments and
  retransmissions tshark lists as hellos; hellos after a QUIC Retry that tshark folds;
  an Initial tshark fails to decrypt). JA4 is checked against FoxIO's ja4-python
  answers shipped with the origin captures.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sniinspect.capture import Capture

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT / "captures"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "public"
ORIGIN = CORPUS / "origin-expected"

COMPARED = ("sni", "alpn", "versions", "ciphers", "extensions", "groups", "sig_algs", "ja3")
_HELLO_FIELDS = (*COMPARED, "ja4")


def _captures() -> list[Path]:
    return sorted(
        p for p in CAPTURES.iterdir() if (p.parent / (p.name + ".expected.jsonl")).exists()
    )


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("path", _captures(), ids=lambda p: p.name)
def test_capture_matches_expected(path: Path) -> None:
    expected = _jsonl(path.parent / (path.name + ".expected.jsonl"))
    cap = Capture(path)
    got = [r.to_dict() for r in cap]
    assert len(got) == len(expected), got
    for exp, rec in zip(expected, got, strict=True):
        for key, value in exp.items():
            if key == "error" and value:  # the expected message is a prefix of ours
                assert (rec["error"] or "").startswith(value), rec["error"]
            elif exp.get("error") and key in _HELLO_FIELDS and value in ([], None):
                # make.py writes an error record's hello fields empty; the engine now
                # fills in what the partial parse read before the cut (checked below).
                continue
            else:
                assert rec[key] == value, (key, rec[key], value)
    if path.name == "snaplen.pcap":  # a hello cut by the snaplen: its start is still read
        assert [(r["sni"], r["ja4"]) for r in got] == [("python.test", None)]
    fatal = [p for p in cap.problems if p.fatal]
    assert bool(fatal) == (path.name == "truncated.pcap"), cap.problems
    if path.name == "snaplen.pcap":
        assert any("snaplen" in p.message for p in cap.problems)


def test_captures_cover_the_issue_list() -> None:
    names = {p.name for p in _captures()}
    assert {
        "one-segment.pcap",
        "three-segments.pcap",
        "five-records.pcap",
        "one-byte-segments.pcap",
        "out-of-order.pcap",
        "no-sni.pcap",
        "ipv6.pcap",
        "vlan.pcap",
        "sll.pcap",
        "truncated.pcap",
        "hrr.pcap",
        "starttls.pcap",
        "noise.pcap",
        # QUIC and DTLS (captures/make_udp.py)
        "quic-v1.pcap",
        "quic-v2.pcap",
        "quic-chaos.pcap",
        "quic-0rtt.pcap",
        "quic-retry.pcap",
        "quic-reuse.pcap",
        "quic-hrr.pcap",
        "dtls-fragmented.pcap",
        "dtls-hvr.pcap",
        "dtls13.pcap",
    } <= names


def test_make_py_reproduces_every_file() -> None:
    sys.path.insert(0, str(CAPTURES))
    try:
        import make  # captures/make.py
    finally:
        sys.path.remove(str(CAPTURES))
    files = make.build()
    assert files, "make.py built nothing"
    for name, data in files.items():
        assert (CAPTURES / name).read_bytes() == data, f"{name} differs from make.py's output"
    again = make.build()
    assert again == files  # deterministic within a run too (no clock, no unseeded random)


# -- the public corpus ----------------------------------------------------------------------

# Differences that are tshark's, not ours: (file, frame) -> why. For these we check
# that we report the same connection with an error (a hello tshark also flags malformed).
TSHARK_MALFORMED = {
    ("tls_cipher_lens.pcap", 2): "cipher_suites length 134 overruns the hello; tshark "
    "decodes garbage, we report the framing error",
    ("tls_cipher_lens.pcap", 3): "odd cipher_suites length 133; tshark reads extension bytes "
    "as cipher suites",
    ("tls_cipher_lens.pcap", 5): "extensions length 65472 overruns the hello; tshark still "
    "computes a JA3 over the empty fields",
}
# Where tshark and we agree on the connection but differ on some fields, with the reason.
TSHARK_FIELD_DIFFS: dict[tuple[str, int], tuple[set[str], str]] = {}

# Lines tshark writes that are not hellos of their own: (file, frame) -> why. The test
# checks the reason holds (a fragment line has no cipher suites and our record of the
# whole hello covers its frame; a retransmission repeats a hello we reported earlier).
DTLS_FRAGMENT = (
    "tshark lists each fragment of a fragmented DTLS ClientHello as a hello (with no "
    "cipher suites); we report the reassembled hello once, at the frame completing it"
)
DTLS_RETRANSMISSION = (
    "a retransmission (same message_seq, same bytes, new record sequence number) of a "
    "DTLS ClientHello already reported: tshark lists every copy, we report the hello "
    "once, as for TCP retransmissions"
)
TSHARK_NOT_HELLOS: dict[tuple[str, int], str] = {
    ("tls-dtls1_0.pcap", 1): DTLS_FRAGMENT,
    ("tls-dtls1_0.pcap", 4): DTLS_FRAGMENT,
    ("tls-dtls1_2.pcap", 1): DTLS_FRAGMENT,
    ("tls-dtls1_2.pcap", 4): DTLS_FRAGMENT,
    ("dtls_old_version.pcapng", 2): DTLS_RETRANSMISSION,
    ("dtls_old_version.pcapng", 4): DTLS_RETRANSMISSION,
    **{("tls-dtls13-cid.pcap", f): DTLS_RETRANSMISSION for f in (2, 3, 20, 21, 22, 24, 25)},
}
# Hellos we report that tshark does not: (file, frame) -> why.
QUIC_AFTER_RETRY = (
    "the client's hello after a QUIC Retry (new DCID and keys, with the token): tshark "
    "folds it into the first hello's line; Suricata reports both (sv-quic-retry.pcap: "
    "pcap_cnt 2 and 6); we report it marked after='retry'"
)
TSHARK_UNDECRYPTED = (
    "tshark ties this v1 Initial to the connection frame 1 opened with a version that "
    "forces Version Negotiation, and fails to decrypt it ('Decryption (checktag) "
    "failed'); it opens with the RFC 9001 Initial keys (the AEAD tag checks), so the "
    "hello is real"
)
OURS_ONLY: dict[tuple[str, int], str] = {
    ("sv-quic-retry.pcap", 6): QUIC_AFTER_RETRY,
    ("quic-interop-quic-go_quic-go-retry.pcap", 7): QUIC_AFTER_RETRY,
    ("quic-forcing-vn-with-data.pcapng", 3): TSHARK_UNDECRYPTED,
    ("quic-forcing-vn-with-data.pcapng", 5): TSHARK_UNDECRYPTED + "; " + QUIC_AFTER_RETRY,
}


def _corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(
        p
        for p in CORPUS.iterdir()
        if p.is_file()
        and not p.name.endswith(".jsonl")
        and (CORPUS / (p.name + ".expected.jsonl")).exists()
    )


needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus absent: {CORPUS}")
_Key = tuple[str, int, str, int, int]


def _key(x: Any) -> _Key:
    return (x["src"], x["sport"], x["dst"], x["dport"], x["frame"])


def _check_not_hello(name: str, exp: dict[str, Any], got: dict[_Key, dict[str, Any]]) -> None:
    """A tshark line listed in TSHARK_NOT_HELLOS: check that its reason holds."""
    why = TSHARK_NOT_HELLOS[(name, exp["frame"])]
    flow = [r for k, r in got.items() if k[:4] == _key(exp)[:4]]
    if why == DTLS_FRAGMENT:
        assert exp["ciphers"] == [] and exp["proto"] == "dtls", why
        assert any(r["frame"] > exp["frame"] and r["ciphers"] for r in flow), why
    else:
        earlier = [r for r in flow if r["frame"] < exp["frame"]]
        assert any(all(r[f] == exp[f] for f in COMPARED) for r in earlier), why


@needs_corpus
@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: p.name)
def test_corpus_hellos_agree_with_tshark(path: Path) -> None:
    """TCP, QUIC and DTLS: the same hellos as tshark, field by field, but for the
    listed differences (TSHARK_NOT_HELLOS, OURS_ONLY), whose reasons are checked."""
    expected = _jsonl(CORPUS / (path.name + ".expected.jsonl"))
    cap = Capture(path)
    got = {_key(r.to_dict()): r.to_dict() for r in cap}
    assert not [p for p in cap.problems if p.fatal], cap.problems
    want = {}
    for e in expected:
        if (path.name, e["frame"]) in TSHARK_NOT_HELLOS:
            _check_not_hello(path.name, e, got)
        else:
            want[_key(e)] = e
    extra = {k for k in set(got) - set(want) if (path.name, k[4]) in OURS_ONLY}
    for k in extra:
        rec = got[k]
        assert rec["error"] is None and rec["transport"] == "quic", rec
        if QUIC_AFTER_RETRY in OURS_ONLY[(path.name, k[4])]:
            assert rec["after"] == "retry", OURS_ONLY[(path.name, k[4])]
    assert set(got) - extra == set(want), (
        sorted(set(got) - extra - set(want)),
        sorted(set(want) - set(got)),
    )
    for key, exp in want.items():
        rec = got[key]
        known = (path.name, exp["frame"])
        assert rec["transport"] == (exp["transport"] if exp["transport"] == "tcp" else exp["proto"])
        if known in TSHARK_MALFORMED:
            assert exp["malformed"] and rec["error"], (rec, TSHARK_MALFORMED[known])
            continue
        assert rec["error"] is None, rec["error"]
        skip, _why = TSHARK_FIELD_DIFFS.get(known, (set(), ""))
        for field in COMPARED:
            if field not in skip:
                assert rec[field] == exp[field], (field, rec[field], exp[field])
        assert rec["ts"] == exp["ts"]
        assert rec["ja4"] is not None and rec["ja4"][0] == rec["transport"][0]


@needs_corpus
def test_corpus_totals() -> None:
    """The whole corpus at once: every hello tshark lists is ours too, but the listed ones."""
    counts: Counter[str] = Counter()
    for path in _corpus_files():
        expected = _jsonl(CORPUS / (path.name + ".expected.jsonl"))
        for e in expected:
            proto = "tcp" if e["transport"] == "tcp" else e["proto"]
            if (path.name, e["frame"]) in TSHARK_NOT_HELLOS:
                counts["tshark lines that are no hello of their own"] += 1
            else:
                counts[proto] += 1
        for rec in Capture(path):
            counts["reported " + rec.transport] += 1
    ours_only = Counter(
        "quic" for name, _frame in OURS_ONLY if (CORPUS / name).exists()
    )  # every OURS_ONLY entry is a QUIC hello
    for proto in ("tcp", "quic", "dtls"):
        assert counts["reported " + proto] == counts[proto] + ours_only[proto], counts
    assert counts["quic"] > 150 and counts["dtls"] > 10 and counts["tcp"] > 100, counts


# ja4-python (FoxIO's reference) answers that differ from the current JA4 spec, with why.
JA4_KNOWN = {
    ("tls-non-ascii-alpn.pcapng", 0): "ALPN '\\xba\\xad' is not alphanumeric: ja4-python "
    "writes '99', the current spec (and clienthello.ja4) the first and last hex digits 'bd'",
}


def _ja4_cases() -> list[tuple[Path, dict[str, Any]]]:
    if not ORIGIN.is_dir():
        return []
    cases = []
    for f in sorted(ORIGIN.glob("*.ja4-python.json")):
        capture = CORPUS / f.name.removesuffix(".ja4-python.json")
        for stream in json.loads(f.read_text()):
            if any(k.startswith("JA4.") for k in stream) and capture.exists():
                cases.append((capture, stream))
    return cases


@needs_corpus
@pytest.mark.parametrize(
    ("capture", "stream"),
    _ja4_cases(),
    ids=lambda v: v.name if isinstance(v, Path) else str(v["stream"]),
)
def test_ja4_agrees_with_ja4_python(capture: Path, stream: dict[str, Any]) -> None:
    recs = [
        r
        for r in Capture(capture)
        if (r.src, str(r.sport), r.dst, str(r.dport))
        == (stream["src"], stream["srcport"], stream["dst"], stream["dstport"])
    ]
    expected = [stream[k] for k in sorted(k for k in stream if k.startswith("JA4."))]
    got = [r.ja4 for r in recs]
    if (capture.name, stream["stream"]) in JA4_KNOWN:
        assert got != expected and [g[:8] + g[10:] for g in got if g] == [
            e[:8] + e[10:] for e in expected
        ]  # only the ALPN characters differ
        return
    assert got == expected
