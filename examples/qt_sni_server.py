"""SNI for a Qt server that has none: one certificate per name, two ways (PySide6).

``QSslSocket`` sets the server name only in client mode and installs no servername
callback, and ``QSslServer`` takes one configuration for every connection. Two ways round:

1. `PlainBehindRouter`: a plain ``QTcpServer`` behind ``sniinspect route`` with
   ``terminate`` and ``proxy_protocol = 2``. The router ends TLS with the certificate for the
   name; the server reads the PROXY v2 header, which says which name was asked for
   (PP2_TYPE_AUTHORITY), the protocol (PP2_TYPE_ALPN) and the TLS version and cipher.
2. `SniSslServer`: the server does it itself. Each ``QSslSocket`` stays in unencrypted mode
   while ``peek()`` (which does not consume) shows the ClientHello to a
   ``clienthello.Reader``; then the certificate for its SNI is set and
   ``startServerEncryption()`` runs the handshake over the very bytes that were peeked.

Both answer every chunk with ``<name>:<chunk>``. Run one::

    python examples/qt_sni_server.py --listen 127.0.0.1:8443 --certs 'certs/*.pem'
    python examples/qt_sni_server.py --listen 127.0.0.1:9000 --behind-router
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

from PySide6.QtCore import QCoreApplication
from PySide6.QtNetwork import (
    QHostAddress,
    QSsl,
    QSslCertificate,
    QSslKey,
    QSslSocket,
    QTcpServer,
    QTcpSocket,
)

import clienthello
from sniinspect.route.proxyproto import ProxyHeaderParser, ProxyInfo, ProxyProtocolError
from sniinspect.route.terminate import CertificateStore

# RFC 8446 §6: a fatal unrecognized_name (112) alert record, for a name no certificate covers.
ALERT_UNRECOGNIZED_NAME = bytes((0x15, 3, 1, 0, 2, 2, 112))


@dataclass(eq=False)
class _Pending:
    sock: QSslSocket
    reader: clienthello.Reader = field(default_factory=clienthello.Reader)
    fed: int = 0  # bytes of the peeked buffer already given to the reader
    name: str | None = None
    started: bool = False


class SniSslServer(QTcpServer):
    """A TLS server that picks its certificate by the client's SNI (way 2).

    Args:
        store: the certificates (`CertificateStore.from_files`), chosen by the same rules
            as the router's: exact SAN, then the parent's wildcard, then the default.
    """

    def __init__(self, store: CertificateStore) -> None:
        super().__init__()
        self.store = store
        self.served: list[tuple[str | None, int]] = []  # (SNI, serial of the certificate)
        self._pending: set[_Pending] = set()

    def incomingConnection(self, handle: int) -> None:
        sock = QSslSocket(self)
        if not sock.setSocketDescriptor(handle):
            sock.deleteLater()
            return
        state = _Pending(sock)
        self._pending.add(state)
        sock.readyRead.connect(lambda: self._ready(state))
        sock.disconnected.connect(lambda: self._gone(state))

    def _gone(self, state: _Pending) -> None:
        self._pending.discard(state)
        state.sock.deleteLater()

    def _ready(self, state: _Pending) -> None:
        sock = state.sock
        if state.started:
            if sock.isEncrypted():  # decrypted application data
                data = sock.readAll().data()
                sock.write(f"{state.name}:".encode() + data)
            return
        # Unencrypted mode: peek() looks into the socket's buffer without taking anything,
        # so the handshake started below still reads the whole ClientHello.
        seen = sock.peek(max(sock.bytesAvailable(), 1)).data()
        try:
            hello = state.reader.feed(seen[state.fed :])
        except clienthello.ClientHelloError:
            sock.abort()  # not TLS, or a hello that does not parse
            return
        state.fed = len(seen)
        if hello is None:
            return  # more of the hello to come: readyRead fires again
        cert = self.store.choose(hello.server_name)
        if cert is None:
            sock.write(ALERT_UNRECOGNIZED_NAME)
            sock.disconnectFromHost()
            return
        config = sock.sslConfiguration()
        config.setLocalCertificateChain(
            QSslCertificate.fromData(cert.chain_pem, QSsl.EncodingFormat.Pem)
        )
        config.setPrivateKey(
            QSslKey(cert.private_key_pem, _key_algorithm(cert.key_alg), QSsl.EncodingFormat.Pem)
        )
        sock.setSslConfiguration(config)
        state.name, state.started = hello.server_name, True
        self.served.append((hello.server_name, cert.serial))
        sock.startServerEncryption()


def _key_algorithm(key_alg: str) -> QSsl.KeyAlgorithm:
    if key_alg.startswith("EC"):
        return QSsl.KeyAlgorithm.Ec
    if key_alg.startswith("RSA"):
        return QSsl.KeyAlgorithm.Rsa
    return QSsl.KeyAlgorithm.Opaque


class PlainBehindRouter(QTcpServer):
    """A plain TCP server behind ``sniinspect route`` (way 1): the name comes in PROXY v2."""

    def __init__(self) -> None:
        super().__init__()
        self.infos: list[ProxyInfo] = []
        self._sockets: set[QTcpSocket] = set()

    def incomingConnection(self, handle: int) -> None:
        sock = QTcpSocket(self)
        if not sock.setSocketDescriptor(handle):
            sock.deleteLater()
            return
        parser = ProxyHeaderParser()
        self._sockets.add(sock)
        sock.readyRead.connect(lambda: self._ready(sock, parser))
        sock.disconnected.connect(lambda: (self._sockets.discard(sock), sock.deleteLater()))

    def _ready(self, sock: QTcpSocket, parser: ProxyHeaderParser) -> None:
        data = sock.readAll().data()
        if parser.info is None:
            try:
                info = parser.feed(data)
            except ProxyProtocolError:
                sock.abort()
                return
            if info is None:
                return
            self.infos.append(info)
            data = parser.remainder
            if not data:
                return
        sock.write(f"{parser.info.authority}:".encode() + data)


def main() -> int:
    """Listen and serve until interrupted."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1:8443")
    p.add_argument("--certs", action="append", default=[], help="glob of chain+key PEM files")
    p.add_argument("--default", help="certificate for a hello without a known name")
    p.add_argument("--behind-router", action="store_true", help="way 1: plain, PROXY v2 first")
    args = p.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QCoreApplication(sys.argv[:1])
    host, _, port = args.listen.rpartition(":")
    server: QTcpServer
    if args.behind_router:
        server = PlainBehindRouter()
    else:
        server = SniSslServer(CertificateStore.from_files(args.certs, args.default))
    if not server.listen(QHostAddress(host.strip("[]")), int(port)):
        print(f"cannot listen on {args.listen}: {server.errorString()}", file=sys.stderr)
        return 1
    return int(app.exec())


if __name__ == "__main__":
    sys.exit(main())
