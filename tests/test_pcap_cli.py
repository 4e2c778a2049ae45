"""The ``sniinspect pcap`` command: formats, filters, summary, exit codes, no tracebacks.

In-process with click's CliRunner, and as a real subprocess of the installed command.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sniinspect.capture import RECORD_KEYS, Capture
from sniinspect.capture.command import pcap
from sniinspect.output import RecordWriter, render_table, summarize

CAPTURES = Path(__file__).resolve().parents[1] / "captures"
ONE = CAPTURES / "one-segment.pcap"
MULTI = CAPTURES / "multi-interface.pcapng.gz"


def run(*args: str, input: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(pcap, list(args), input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result.exit_code, result.stdout, result.stderr


def test_jsonl_has_the_record_keys() -> None:
    code, out, err = run("--format", "jsonl", str(ONE), str(MULTI))
    assert code == 0 and err == ""
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["sni"] for r in lines] == ["python.test", "python.test", "chromium.test"]
    for rec in lines:
        assert list(rec)[: len(RECORD_KEYS)] == list(RECORD_KEYS)


def test_json_and_csv() -> None:
    code, out, _ = run("--format", "json", str(MULTI))
    assert code == 0 and [r["src"] for r in json.loads(out)] == ["192.0.2.10", "2001:db8::10"]
    code, out, _ = run("--format", "csv", str(MULTI))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["sni"] for r in rows] == ["python.test", "chromium.test"]
    assert rows[0]["alpn"] == "h2;http/1.1"
    code, out, _ = run("--format", "json", str(CAPTURES / "noise.pcap"), "--sni", "nomatch")
    assert code == 0 and json.loads(out) == []


def test_table_default_and_width() -> None:
    code, out, _ = run(str(MULTI))
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["TIME", "(UTC)", "CLIENT", "SERVER"]
    assert "chromium.test" in out and "[2001:db8::10]:50018" in out
    records = list(Capture(MULTI))
    rows = [
        dict(
            time="2023-11-14 22:13:20.000100",
            client="192.0.2.10:50017",
            server="198.51.100.20:443",
            sni=r.sni or "",
            ja4=r.ja4 or "",
        )
        for r in records
    ]
    cols = (
        ("time", "TIME", 19, 9),
        ("client", "CLIENT", 12, 0),
        ("server", "SERVER", 12, 8),
        ("sni", "SNI", 12, 0),
        ("ja4", "JA4", 10, 2),
    )
    for width in (200, 100, 80, 60, 40):
        lines = render_table(rows, cols, width)
        assert len(lines) == 3 and all(len(line) <= max(width, 40) for line in lines), lines


def test_streaming_table_fits_terminal() -> None:
    out = io.StringIO()
    w = RecordWriter(out, "table", width=70, streaming=True)
    for r in Capture(MULTI):
        w.write(r)
    w.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and all(len(line) <= 70 for line in lines)
    assert "…" in out.getvalue() or "chromium.test" in out.getvalue()


def test_long_table_streams_after_a_sample() -> None:
    out = io.StringIO()
    w = RecordWriter(out, "table", width=120)
    (rec,) = list(Capture(ONE))
    bad = dict(rec.to_dict(), error="x" * 50, sni=None)
    for i in range(2500):
        w.write(bad if i == 2000 else rec)
        if i == 998:
            assert out.getvalue() == ""  # still sizing the columns
        if i == 999:
            assert out.getvalue().count("\n") == 1001  # header + 1000 rows; then streamed
    w.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2501 and lines[0].rstrip().endswith("ERROR")
    assert "xxxxxxxx" in lines[2001]  # a late error still has its column
    assert len({len(line.rstrip()) for line in lines[1:2000]}) == 1


def test_filters() -> None:
    code, out, _ = run("--format", "jsonl", "--sni", "CHROM*", str(MULTI))
    assert code == 0 and [json.loads(x)["sni"] for x in out.splitlines()] == ["chromium.test"]
    code, out, _ = run("--format", "jsonl", "--host", "2001:db8:1::/48", str(MULTI))
    assert [json.loads(x)["dst"] for x in out.splitlines()] == ["2001:db8:1::20"]
    code, out, _ = run("--format", "jsonl", "--host", "192.0.2.10", str(MULTI))
    assert [json.loads(x)["sni"] for x in out.splitlines()] == ["python.test"]


def test_summary() -> None:
    files = [str(ONE), str(MULTI), str(CAPTURES / "vlan.pcap")]
    code, out, _ = run("--summary", "--format", "json", *files)
    data = json.loads(out)
    assert code == 0 and data["hellos"] == 4
    assert data["sni"][0] == {"sni": "python.test", "hellos": 3, "clients": 1}
    assert {c["client"]: c["hellos"] for c in data["clients"]} == {
        "192.0.2.10": 3,
        "2001:db8::10": 1,
    }
    code, out, _ = run("--summary", *files)
    assert code == 0 and "python.test" in out and "4 hellos" in out
    assert summarize([])["hellos"] == 0


def test_stdin_gzip_and_streaming() -> None:
    code, out, _ = run("--format", "jsonl", "-", input=gzip.compress(ONE.read_bytes()))
    assert code == 0 and json.loads(out)["sni"] == "python.test"


def test_exit_1_for_missing_garbage_truncated_but_rest_analysed(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pcap"
    garbage.write_bytes(b"this is not a capture at all\n" * 10)
    code, out, err = run(
        "--format",
        "jsonl",
        str(tmp_path / "missing.pcap"),
        str(garbage),
        str(CAPTURES / "truncated.pcap"),
        str(ONE),
    )
    assert code == 1
    assert [json.loads(x)["sni"] for x in out.splitlines()] == ["python.test", "python.test"]
    lines = err.splitlines()
    assert any("missing.pcap" in x and "No such file" in x for x in lines)
    assert any("garbage.pcap" in x and "not a pcap" in x for x in lines)
    assert any("truncated.pcap" in x and "cut short" in x for x in lines)
    assert "Traceback" not in err


def test_snaplen_warning_keeps_exit_0() -> None:
    code, out, err = run("--format", "jsonl", str(CAPTURES / "snaplen.pcap"))
    assert code == 0 and "warning" in err and "snaplen" in err
    assert json.loads(out)["error"].startswith("capture ended before the hello completed")


def test_usage_errors_exit_2() -> None:
    assert run()[0] == 2
    assert run("--format", "xml", str(ONE))[0] == 2
    assert run("--host", "not-an-address", str(ONE))[0] == 2


def test_progress_bar_on_request_only() -> None:
    code, out, err = run("--progress", "--format", "jsonl", str(ONE))
    assert code == 0 and "one-segment.pcap [" in err and "%" in err
    assert json.loads(out)["sni"] == "python.test"  # the bar never goes to stdout
    code, _out, err = run("--format", "jsonl", str(ONE))  # stderr is not a terminal here
    assert code == 0 and err == ""


def test_help_has_examples() -> None:
    code, out, _ = run("--help")
    assert code == 0 and "Examples:" in out and "tcpdump" in out


# -- the installed command, as a user runs it -----------------------------------------------
def _installed() -> list[str]:
    exe = shutil.which("sniinspect")
    if exe is None:
        pytest.skip("the sniinspect command is not installed (pip install -e .)")
    probe = subprocess.run([exe, "pcap", "--help"], capture_output=True, check=False, timeout=60)
    if probe.returncode != 0:
        pytest.skip(
            f"`sniinspect pcap` not wired into the command group yet: {probe.stderr[-200:]!r}"
        )
    return [exe, "pcap"]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (None, 1),
        (b"", 1),
        (b"\x00" * 3, 1),
        (b"garbage" * 100, 1),
        (b"\xd4\xc3\xb2\xa1" + b"\x00" * 30, 1),
        (gzip.compress(b"x" * 100), 1),
    ],
    ids=["missing", "empty", "tiny", "garbage", "bad-pcap", "gzip-garbage"],
)
def test_subprocess_bad_input_one_line_no_traceback(
    tmp_path: Path, content: bytes | None, code: int
) -> None:
    cmd = _installed()
    path = tmp_path / "input.pcap"
    if content is not None:
        path.write_bytes(content)
    proc = subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) >= 1


def test_subprocess_truncated_and_stdin(tmp_path: Path) -> None:
    cmd = _installed()
    proc = subprocess.run(
        [*cmd, "--format", "jsonl", str(CAPTURES / "truncated.pcap")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["sni"] == "python.test"
    proc = subprocess.run(
        [*cmd, "--format", "jsonl", "-"], input=MULTI.read_bytes(), capture_output=True, timeout=60
    )
    assert proc.returncode == 0
    assert [json.loads(x)["sni"] for x in proc.stdout.splitlines()] == [
        "python.test",
        "chromium.test",
    ]


def test_subprocess_usage_error_exit_2() -> None:
    cmd = _installed()
    proc = subprocess.run([*cmd, "--format", "yaml", str(ONE)], capture_output=True, timeout=60)
    assert proc.returncode == 2


def test_stdin_prints_records_as_they_arrive() -> None:
    """With ``-``, a record is printed while the input is still open (as from tcpdump -w -)."""
    # The command module itself, so this runs whether or not the group is installed.
    cmd = [sys.executable, "-c", "from sniinspect.capture.command import pcap; pcap()"]
    data = ONE.read_bytes()
    proc = subprocess.Popen(
        [*cmd, "--format", "jsonl", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(data)  # the whole connection, but the pipe stays open
        proc.stdin.flush()
        line = proc.stdout.readline()  # blocks until the record is printed
        assert json.loads(line)["sni"] == "python.test"
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
