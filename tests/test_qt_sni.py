"""SNI for a Qt server that has none: both ways of ``examples/qt_sni_server.py``, with PySide6.

Qt runs headless (``QT_QPA_PLATFORM=offscreen``) in this thread's ``QCoreApplication``
event loop; the verifying Python ``ssl`` clients run in a second thread, one connection
per name, each name with its own certificate.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytest.importorskip("cryptography")
try:
    from PySide6.QtCore import QCoreApplication, QTimer
    from PySide6.QtNetwork import QHostAddress, QSslSocket
except ImportError as exc:  # pragma: no cover - depends on the test extra
    pytest.skip(
        f"PySide6 is not importable ({exc}); install PySide6-Essentials", allow_module_level=True
    )

from test_router import HOST, RouterThread
from test_terminate import talk, verifying
from tlscerts import CA

from sniinspect.route.terminate import CertificateStore

T = TypeVar("T")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "qt_sni_server.py"


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("qt_sni_server", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app() -> QCoreApplication:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if not QSslSocket.supportsSsl():
        pytest.skip("Qt found no TLS backend (OpenSSL 3) on this system")
    instance = QCoreApplication.instance() or QCoreApplication([])
    assert isinstance(instance, QCoreApplication)
    return instance


def run_in_qt(app: QCoreApplication, work: Callable[[], T], timeout: float = 30) -> T:
    """Run ``work`` in a thread while Qt's event loop runs here; return its result."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = work()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target)
    poll = QTimer()
    poll.setInterval(5)
    poll.timeout.connect(lambda: None if thread.is_alive() else app.quit())
    guard = QTimer()
    guard.setSingleShot(True)
    guard.timeout.connect(app.quit)
    thread.start()
    poll.start()
    guard.start(int(timeout * 1000))
    app.exec()
    poll.stop()
    guard.stop()
    thread.join(timeout)
    if "error" in result:
        raise result["error"]
    return result["value"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, int]]:
    folder = tmp_path_factory.mktemp("qt")
    root = CA("Qt Root")
    serials = {
        "alpha.qt.test": root.write_pair(folder / "certs", "alpha", ["alpha.qt.test"])[2],
        "beta.qt.test": root.write_pair(folder / "certs", "beta", ["beta.qt.test"])[2],
    }
    return root.write(folder / "ca.pem"), folder / "certs", serials


@pytest.fixture(scope="module")
def example() -> Iterator[Any]:
    yield _example()
    sys.modules.pop("qt_sni_server", None)


def test_inside_qt_peek_the_hello_then_start_server_encryption(
    app: QCoreApplication, certs: tuple[Path, Path, dict[str, int]], example: Any
) -> None:
    ca, folder, serials = certs
    server = example.SniSslServer(CertificateStore.from_files([str(folder / "*.pem")]))
    assert server.listen(QHostAddress(HOST), 0), server.errorString()
    port = server.serverPort()
    try:
        answers = run_in_qt(app, lambda: {n: talk(port, n, verifying(ca)) for n in serials})
    finally:
        server.close()
    for name, serial in serials.items():
        assert answers[name].serial == serial  # each name its own certificate, verified
        assert answers[name].data == f"{name}:ping".encode()
    assert sorted(server.served) == sorted(serials.items())


def test_plain_qt_server_behind_the_router_learns_the_name(
    app: QCoreApplication, certs: tuple[Path, Path, dict[str, int]], example: Any
) -> None:
    ca, folder, serials = certs
    server = example.PlainBehindRouter()
    assert server.listen(QHostAddress(HOST), 0), server.errorString()
    rt = RouterThread(
        {
            "listen": [f"{HOST}:0"],
            "tls": {"certificates": [str(folder / "*.pem")]},
            "route": [
                {
                    "names": [".qt.test"],
                    "backends": [f"{HOST}:{server.serverPort()}"],
                    "terminate": True,
                    "proxy_protocol": 2,
                }
            ],
        }
    )
    try:
        answers = run_in_qt(app, lambda: {n: talk(rt.port, n, verifying(ca)) for n in serials})
    finally:
        rt.stop()
        server.close()
    for name, serial in serials.items():
        assert answers[name].serial == serial
        assert answers[name].data == f"{name}:ping".encode()
    assert sorted(info.authority for info in server.infos) == sorted(serials)
    assert all(info.ssl is not None and info.ssl.version == "TLSv1.3" for info in server.infos)
