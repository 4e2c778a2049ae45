"""`sniinspect hello`: one ClientHello in, every field out, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import load

import clienthello
from sniinspect.main import cli

DATA = Path(__file__).parent / "data"


def run(*args: str, input: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["hello", *args], input=input)
    return result.exit_code, result.stdout, result.stderr


def test_text_output_names_every_part() -> None:
    code, out, _ = run(str(DATA / "chromium.bin"))
    assert code == 0
    hello = clienthello.parse(load("chromium"))
    assert f"server_name: {hello.server_name}" in out
    assert "X25519MLKEM768" in out  # a group shown by its IANA name
    assert "TLS_AES_128_GCM_SHA256" in out
    assert "encrypted_client_hello" in out
    assert f"ja3: {clienthello.ja3(hello)}" in out
    assert f"ja4: {clienthello.ja4(hello)}" in out


def test_json_matches_the_library() -> None:
    code, out, _ = run("--format", "json", str(DATA / "curl.bin"))
    assert code == 0
    info = json.loads(out)
    hello = clienthello.parse(load("curl"))
    assert info["server_name"] == "curl.test"
    assert [c["value"] for c in info["cipher_suites"]] == list(hello.cipher_suites)
    assert [e["type"] for e in info["extensions"]] == list(hello.extension_types)
    assert info["alpn_protocols"] == ["h2", "http/1.1"]
    assert info["ja4"] == clienthello.ja4(hello)


def test_hex_text_on_stdin_and_bare_handshake() -> None:
    data = load("openssl")
    code, out, _ = run("--format", "json", "-", input=data.hex().encode() + b"\n")
    assert code == 0 and json.loads(out)["server_name"] == "openssl.test"
    bare = data[5:]  # one record: the handshake message follows the 5-byte header
    code, out, _ = run("--format", "json", "-", input=bare)
    assert code == 0 and json.loads(out)["server_name"] == "openssl.test"


def test_tls_segments_as_several_files(tmp_path: Path) -> None:
    data = load("curl")
    first, second = tmp_path / "a.bin", tmp_path / "b.hex"
    first.write_bytes(data[:100])
    second.write_text(data[100:].hex())
    code, out, _ = run("--format", "json", str(first), str(second))
    assert code == 0 and json.loads(out)["server_name"] == "curl.test"
    code, _, err = run(str(first))
    assert code == 2 and "incomplete ClientHello (100 bytes" in err


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "not TLS"),
        (load("python")[:100], "incomplete"),
        # legacy_session_id longer than its 32-byte maximum
        (load("python")[:43] + b"\x21" + load("python")[44:], "legacy_session_id"),
    ],
    ids=["http", "truncated", "bad-session-id"],
)
def test_bad_input_is_one_line_and_exit_2(data: bytes, words: str) -> None:
    code, out, err = run("-", input=data)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0]


def test_missing_file_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sniinspect", "hello", "/nonexistent/hello.bin"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "cannot read /nonexistent/hello.bin" in proc.stderr
