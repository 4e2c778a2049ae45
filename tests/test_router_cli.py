"""``sniinspect route`` as a process: --check-config, errors, signals, workers, metrics."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_router import (
    HOST,
    TIMEOUT,
    BioClient,
    RawBackend,
    Server,
    cert,  # noqa: F401  (the fixture)
    hello_bytes,
    raw_exchange,
    tls_backend,
    tls_request,
)

from sniinspect.route.config import ConfigError  # noqa: F401  (the package must import)

# The command without depending on the lead's entry point being installed.
COMMAND = [
    sys.executable,
    "-c",
    "import sys; from sniinspect.route.command import route; "
    "sys.argv[0] = 'sniinspect route'; route()",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(get: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    value = get()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = get()
    return value


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, timeout=timeout)


class RouterProcess:
    """``sniinspect route`` in a subprocess; stderr goes to a file we can read."""

    def __init__(self, args: list[str], log_dir: Path, wait_for: int = 1) -> None:
        self.stderr_path = log_dir / f"stderr-{time.monotonic_ns()}.log"
        self.stderr = open(self.stderr_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*COMMAND, *args], stderr=self.stderr, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while self.text().count("listening on") < wait_for:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"router did not start:\n{self.text()}")
            time.sleep(0.05)

    def text(self) -> str:
        return self.stderr_path.read_text()

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines() if line.startswith("{")]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.stderr.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., RouterProcess]]:
    made: list[RouterProcess] = []

    def make(*args: str, wait_for: int = 1) -> RouterProcess:
        p = RouterProcess(list(args), tmp_path, wait_for)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def backends(request: pytest.FixtureRequest) -> Iterator[dict[str, Server]]:
    cert_files = request.getfixturevalue("cert")  # the session certificate from test_router
    made = {name: tls_backend(name, cert_files) for name in "AB"}
    yield made
    for server in made.values():
        server.close()


# ---------------------------------------------------------------------- no process kept


def test_help_teaches_with_examples() -> None:
    out = run("--help")
    assert out.returncode == 0
    for text in ("--listen", "--route", "--check-config", "Examples:", "*.example.org", "SIGHUP"):
        assert text in out.stdout


def test_check_config_ok_and_warnings(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        'listen = ["127.0.0.1:8443"]\n'
        '[[route]]\nnames = ["a.example.com", "*.example.com"]\nbackends = "127.0.0.1:9"\n'
        '[[route]]\nnames = ["~b\\\\.example\\\\.com"]\nbackends = "127.0.0.1:10"\n'
    )
    out = run("--config", str(path), "--check-config")
    assert out.returncode == 0
    assert "configuration OK: 1 listener(s), 2 route(s), 1 warning(s)" in out.stdout
    assert "warning: route '~b\\.example\\.com'" in out.stderr
    assert "can never match" in out.stderr and "'*.example.com'" in out.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--listen", "127.0.0.1:1", "--route", "a.com"], 2, "expected NAME=HOST:PORT"),
        (
            ["--listen", "127.0.0.1:1", "--route", "a.com=h:1", "--hello-timeout", "-1"],
            2,
            "hello_timeout: -1.0 is out of range",
        ),
        (["--listen", "nowhere", "--route", "a.com=h:1"], 2, "listen"),
        (["--route", "a.com=h:1"], 2, "listen: no listener"),
        (
            ["--listen", "127.0.0.1:1", "--route", "a.com=h:1", "--on", "nosni=close"],
            2,
            "actions.nosni: unknown key (did you mean 'no_sni'?)",
        ),
        (["--config", "/nonexistent/r.toml"], 1, "cannot read"),
    ],
)
def test_bad_input_is_one_line_without_traceback(args: list[str], code: int, message: str) -> None:
    out = run(*args, "--check-config")
    assert out.returncode == code
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_toml_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('listen = "127.0.0.1:1"\n[[route]]\nnames = "a"\nbackends = ["h:1", "h"]\n')
    out = run("--config", str(path))
    assert out.returncode == 1
    assert f"{path}: route[0].backends[1]" in out.stderr
    assert "Traceback" not in out.stderr


def test_port_in_use_is_a_readable_error(procs: Callable[..., RouterProcess]) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        out = run("--listen", f"{HOST}:{busy.getsockname()[1]}", "--route", "a=127.0.0.1:9")
    assert out.returncode == 1
    assert "Address already in use" in out.stderr and "Traceback" not in out.stderr


# ---------------------------------------------------------------------- running


def test_sighup_reload_keeps_connections_and_switches_routes(
    procs: Callable[..., RouterProcess], backends: dict[str, Server], tmp_path: Path
) -> None:
    port = free_port()
    path = tmp_path / "r.toml"

    def write(target: str) -> None:
        path.write_text(
            f'listen = "{HOST}:{port}"\n[[route]]\nnames = "r.example.com"\n'
            f'backends = "{HOST}:{backends[target].port}"\n'
        )

    write("A")
    p = procs("--config", str(path))
    assert tls_request(port, "r.example.com") == b"A:ping"
    held = BioClient(port, "r.example.com", lambda s, d: s.sendall(d))
    write("B")
    p.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "configuration reloaded" not in p.text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tls_request(port, "r.example.com") == b"B:ping"
    assert held.request(b"still") == b"A:still"
    held.close()
    # A broken file is refused; the running configuration stays.
    path.write_text("listen = [\n")
    p.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload failed" not in p.text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reload failed" in p.text()
    assert tls_request(port, "r.example.com") == b"B:ping"


def test_sigterm_drains_then_exits(
    procs: Callable[..., RouterProcess], backends: dict[str, Server]
) -> None:
    port = free_port()
    p = procs(
        "--listen",
        f"{HOST}:{port}",
        "--route",
        f"a.example.com={HOST}:{backends['A'].port}",
        "--drain-timeout",
        "20",
    )
    held = BioClient(port, "a.example.com", lambda s, d: s.sendall(d))
    assert held.request(b"one") == b"A:one"
    p.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while "stopping" not in p.text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.proc.poll() is None  # still draining our connection
    with pytest.raises(OSError):
        socket.create_connection((HOST, port), timeout=2).close()
    assert held.request(b"two") == b"A:two"
    held.close()
    assert p.proc.wait(15) == 0
    assert p.logs()[-1]["outcome"] == "routed"


def test_workers_share_a_port_and_metrics_are_served(
    procs: Callable[..., RouterProcess], tmp_path: Path
) -> None:
    backend = RawBackend("W")
    try:
        port, metrics_port = free_port(), free_port()
        log_file = tmp_path / "conn.log"
        p = procs(
            "--listen",
            f"{HOST}:{port}",
            "--route",
            f"w.example.com={HOST}:{backend.port}",
            "--workers",
            "2",
            "--metrics",
            f"{HOST}:{metrics_port}",
            "--log-file",
            str(log_file),
            wait_for=2,
        )
        children = Path(f"/proc/{p.proc.pid}/task/{p.proc.pid}/children").read_text().split()
        assert len(children) == 2
        hello = hello_bytes("w.example.com")
        for _ in range(20):
            assert raw_exchange(port, hello, shut=True) == b"W"
        # The log line is written just after the close the client saw: wait for it.
        lines = wait_until(
            lambda: [json.loads(x) for x in log_file.read_text().splitlines()],
            lambda got: len(got) >= 20,
        )
        assert len(lines) == 20 and {x["outcome"] for x in lines} == {"routed"}
        assert len({x["worker"] for x in lines}) == 2  # both workers took connections
        text = scrape(metrics_port)
        assert 'sniinspect_connections_total{outcome="routed",reason=""} 20.0' in text
        p.proc.send_signal(signal.SIGHUP)  # forwarded to every worker
        text = wait_until(p.text, lambda t: t.count("configuration reloaded") == 2)
        assert text.count("configuration reloaded") == 2
        os.kill(int(children[0]), signal.SIGKILL)  # a crashed worker is replaced
        deadline = time.monotonic() + 10
        while "restarting" not in p.text() and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(5):
            assert raw_exchange(port, hello, shut=True) == b"W"
        p.proc.send_signal(signal.SIGTERM)
        assert p.proc.wait(15) == 0
    finally:
        backend.close()


def test_metrics_single_process(
    procs: Callable[..., RouterProcess], backends: dict[str, Server]
) -> None:
    port, metrics_port = free_port(), free_port()
    procs(
        "--listen",
        f"{HOST}:{port}",
        "--route",
        f"a.example.com={HOST}:{backends['A'].port}",
        "--metrics",
        f"{HOST}:{metrics_port}",
        "--no-connection-log",
    )
    assert tls_request(port, "a.example.com") == b"A:ping"
    raw_exchange(port, b"hello?")
    routed = 'sniinspect_connections_total{outcome="routed",reason=""} 1.0'
    not_tls = 'sniinspect_connections_total{outcome="closed",reason="not_tls"} 1.0'
    # A connection is counted when it ends, and the router may see the routed one
    # end after the raw one (the backend's close travels one more hop): wait for both.
    text = wait_until(lambda: scrape(metrics_port), lambda t: routed in t and not_tls in t)
    assert routed in text
    assert not_tls in text
    assert "sniinspect_backend_connect_seconds_count" in text


def test_sighup_reopens_the_log_file(
    procs: Callable[..., RouterProcess], backends: dict[str, Server], tmp_path: Path
) -> None:
    port = free_port()
    log_file = tmp_path / "conn.log"
    p = procs(
        "--listen",
        f"{HOST}:{port}",
        "--route",
        f"a.example.com={HOST}:{backends['A'].port}",
        "--log-file",
        str(log_file),
    )
    assert tls_request(port, "a.example.com") == b"A:ping"
    wait_until(log_file.read_text, lambda text: text.count("\n") == 1)
    log_file.rename(tmp_path / "conn.log.1")  # as logrotate does
    p.proc.send_signal(signal.SIGHUP)
    wait_until(p.text, lambda text: "configuration reloaded" in text)
    assert tls_request(port, "a.example.com") == b"A:ping"
    lines = wait_until(
        lambda: log_file.read_text() if log_file.exists() else "",
        lambda text: text.count("\n") == 1,
    )
    assert json.loads(lines)["outcome"] == "routed"
    assert (tmp_path / "conn.log.1").read_text().count("\n") == 1


def test_out_of_file_descriptors_is_survived(tmp_path: Path, backends: dict[str, Server]) -> None:
    port = free_port()
    limit = 48

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [
                *COMMAND,
                "--listen",
                f"{HOST}:{port}",
                "--route",
                f"a.example.com={HOST}:{backends['A'].port}",
            ],
            stderr=stderr,
            stdout=subprocess.DEVNULL,
            preexec_fn=low_limit,
        )
        silent: list[socket.socket] = []
        try:
            wait_until(stderr_path.read_text, lambda text: "listening on" in text)
            for _ in range(limit + 10):  # more than the router can hold descriptors for
                silent.append(socket.create_connection((HOST, port), timeout=TIMEOUT))
            text = wait_until(stderr_path.read_text, lambda t: "retrying in" in t)
            assert "Too many open files" in text and proc.poll() is None
        finally:
            for s in silent:
                s.close()
        try:
            # Once descriptors are back, the router serves again: never fatal.
            answer = wait_until(lambda: _try_request(port), lambda a: a == b"A:ping")
            assert answer == b"A:ping"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    assert "Traceback" not in stderr_path.read_text()


def _try_request(port: int) -> bytes:
    try:
        return tls_request(port, "a.example.com")
    except OSError:
        return b""
