"""TLS termination settings and certificate selection, without sockets: the new configuration
keys and their errors, the selection rules of `CertificateStore`, and PROXY v2's SSL TLV."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("cryptography")

from test_router import hello_bytes
from tlscerts import CA, NOW

import clienthello
from sniinspect.route.config import ConfigError, build_config, load_config
from sniinspect.route.proxyproto import (
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_SSL,
    PP2_TYPE_SSL,
    ProxyHeaderParser,
    ProxyProtocolError,
    SSLInfo,
    build_v2,
)
from sniinspect.route.terminate import (
    CertificateError,
    CertificateStore,
    context_for,
    load_certificate,
    load_store,
)
from sniinspect.route.tlsconfig import BackendTLS, Termination, TLSPolicy

BASE: dict[str, Any] = {"listen": ["127.0.0.1:8443"]}


def route(**extra: Any) -> dict[str, Any]:
    return {"names": ["a.example"], "backends": ["127.0.0.1:9000"], **extra}


# ---------------------------------------------------------------------- configuration


def test_toml_keys_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text(
        """
listen = ["127.0.0.1:8443"]
[tls]
certificates = ["certs/*.pem", "/abs/one.pem"]
default = "certs/default.pem"

[[route]]
names = ["app.example"]
backends = ["127.0.0.1:9000"]
proxy_protocol = 2
terminate = { cert = "app.pem", key = "keys/app.key" }
alpn = ["h2", "http/1.1"]
client_ca = "clients.pem"
client_cert = "optional"
backend_tls = { verify = true, ca = "backend-ca.pem", server_name = "app.internal" }

[[route]]
names = ["*.pool.example"]
backends = ["127.0.0.1:9001"]
terminate = true

[[route]]
names = ["pass.example"]
backends = ["127.0.0.1:9002"]
"""
    )
    cfg = load_config(path)
    assert cfg.tls.certificates == (str(tmp_path / "certs/*.pem"), "/abs/one.pem")
    assert cfg.tls.default == str(tmp_path / "certs/default.pem")
    app, pool, passthrough = cfg.table.routes
    assert app.terminate == Termination(
        cert=str(tmp_path / "app.pem"),
        key=str(tmp_path / "keys/app.key"),
        policy=TLSPolicy(("h2", "http/1.1"), str(tmp_path / "clients.pem"), "optional"),
        backend_tls=BackendTLS(True, str(tmp_path / "backend-ca.pem"), "app.internal"),
    )
    assert pool.terminate == Termination()  # chosen by SNI, http/1.1, plain TCP behind
    assert passthrough.terminate is None
    assert cfg.terminates


def test_defaults_keep_passthrough() -> None:
    cfg = build_config({**BASE, "route": [route()]})
    assert cfg.table.routes[0].terminate is None and not cfg.terminates
    cfg = build_config({**BASE, "route": [route(terminate=False)]})
    assert cfg.table.routes[0].terminate is None


def test_client_ca_alone_means_required() -> None:
    cfg = build_config(
        {**BASE, "tls": {"default": "/d.pem"}, "route": [route(terminate=True, client_ca="/c")]}
    )
    term = cfg.table.routes[0].terminate
    assert term is not None and term.policy.client_cert == "required"


TLS = {"tls": {"certificates": ["/certs/*.pem"]}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"route": [route(alpn=["h2"])]}, "route[0].alpn: only for a route that terminates"),
        ({"route": [route(client_ca="/ca.pem")]}, "route[0].client_ca: only for a route that"),
        ({"route": [route(backend_tls=True)]}, "route[0].backend_tls: only for a route that"),
        ({"route": [route(terminate=True)]}, "route[0].terminate: true needs certificates"),
        ({"route": [route(terminate="yes")]}, "route[0].terminate: expected true or"),
        ({"route": [route(terminate={"key": "k"})]}, "route[0].terminate.cert: missing"),
        ({"route": [route(terminate={"cert": "c", "kee": "k"})]}, "did you mean 'key'"),
        ({**TLS, "route": [route(terminate=True, alpn=[])]}, "route[0].alpn: expected a non-empty"),
        ({**TLS, "route": [route(terminate=True, alpn=["h2", "h2"])]}, "'h2' is given twice"),
        ({**TLS, "route": [route(terminate=True, alpn=["x" * 256])]}, "route[0].alpn[0]"),
        (
            {**TLS, "route": [route(terminate=True, client_cert="required")]},
            "route[0].client_cert: needs client_ca",
        ),
        (
            {**TLS, "route": [route(terminate=True, client_ca="/c", client_cert="maybe")]},
            "expected 'required' or 'optional'",
        ),
        (
            {**TLS, "route": [route(terminate=True, backend_tls={"verify": False, "ca": "/c"})]},
            "route[0].backend_tls.ca: given with verify = false",
        ),
        (
            {**TLS, "route": [route(terminate=True, backend_tls={"sni": "x"})]},
            "route[0].backend_tls.sni: unknown key",
        ),
        ({"tls": {"certificate": ["x"]}, "route": [route()]}, "tls.certificate: unknown key"),
        ({"tls": {"certificates": 3}, "route": [route()]}, "tls.certificates: expected a list"),
        ({"tls": {"default": ""}, "route": [route()]}, "tls.default: expected a file name"),
    ],
)
def test_errors_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_config({**BASE, **data})


def test_warning_when_the_default_certificate_cannot_reach_clients_without_sni() -> None:
    cfg = build_config({**BASE, "tls": {"default": "/d.pem"}, "route": [route()]})
    assert any("tls.default is not served" in w for w in cfg.warnings())
    cfg = build_config(
        {**BASE, "default": "127.0.0.1:9", "tls": {"default": "/d.pem"}, "route": [route()]}
    )
    assert not any("tls.default" in w for w in cfg.warnings())


# ---------------------------------------------------------------------- selection


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA("Selection Root")


def test_exact_beats_wildcard_and_wildcards_cover_one_label(ca: CA, tmp_path: Path) -> None:
    exact = ca.write_pair(tmp_path, "exact", ["app.example.com"])[0]
    wild = ca.write_pair(tmp_path, "wild", ["*.example.com", "example.com"])[0]
    deep = ca.write_pair(tmp_path, "deep", ["*.b.example.com"])[0]
    store = CertificateStore.from_files([str(tmp_path / "*.pem")])
    paths = {name: (c.path if (c := store.select(name)) else None) for name in (
        "app.example.com", "APP.example.com.", "x.example.com", "example.com",
        "a.b.example.com", "b.example.com", "a.a.example.com", "other.org", "", "com",
    )}  # fmt: skip
    assert paths == {
        "app.example.com": str(exact),
        "APP.example.com.": str(exact),
        "x.example.com": str(wild),
        "example.com": str(wild),
        "a.b.example.com": str(deep),  # the most specific wildcard: the parent's
        "b.example.com": str(wild),
        "a.a.example.com": None,  # a wildcard covers exactly one label
        "other.org": None,
        "": None,
        "com": None,
    }


def test_two_files_for_one_name_latest_not_before_wins(ca: CA, tmp_path: Path) -> None:
    old = ca.write_pair(tmp_path, "a-old", ["x.test"], not_before=NOW - dt.timedelta(days=9))
    new = ca.write_pair(tmp_path, "b-new", ["x.test"], not_before=NOW - dt.timedelta(days=1))
    store = CertificateStore.from_files([str(tmp_path / "*.pem")])
    chosen = store.select("x.test")
    assert chosen is not None and chosen.serial == new[2]
    warnings = store.warnings(NOW)
    assert any("'x.test' is claimed by" in w and str(new[0]) in w for w in warnings)
    assert old[2] != new[2]


def test_cn_when_there_is_no_san_and_expiry_warnings(ca: CA, tmp_path: Path) -> None:
    ca.write_pair(tmp_path, "cn", [], cn="legacy.test", days=5)
    store = CertificateStore.from_files([str(tmp_path / "cn.pem")])
    cert = store.select("legacy.test")
    assert cert is not None and cert.names == ("legacy.test",)
    assert any("expires in 4 days" in w for w in store.warnings(NOW))
    assert any("expired on" in w for w in store.warnings(NOW + dt.timedelta(days=6)))


def test_key_beside_the_certificate_and_errors_name_the_file(ca: CA, tmp_path: Path) -> None:
    chain, key, _ = ca.write_pair(tmp_path, "split", ["s.test"], combined=False)
    assert key is not None
    cert = load_certificate(str(chain))  # finds split.key by HAProxy's convention
    assert cert.key_path == str(key) and cert.key_alg == "EC256"
    key.unlink()
    with pytest.raises(CertificateError, match=f"^{chain}: no private key"):
        load_certificate(str(chain))
    with pytest.raises(CertificateError, match="cannot read"):
        load_certificate(str(tmp_path / "missing.pem"))


def test_context_for_a_hello_is_cached_and_selects_like_the_router(ca: CA, tmp_path: Path) -> None:
    wild = ca.write_pair(tmp_path, "w", ["*.ctx.test"])
    default = ca.write_pair(tmp_path / "d", "default", ["default.test"])
    store = CertificateStore.from_files([str(tmp_path / "*.pem")], str(default[0]))
    reader = clienthello.Reader()
    hello = reader.feed(hello_bytes("a.ctx.test"))
    assert hello is not None
    ctx = context_for(hello, store)
    assert isinstance(ctx, ssl.SSLContext) and ctx is store.context_for(hello)
    assert store.context_for(hello, TLSPolicy(("h2",))) is not ctx
    no_sni = clienthello.Reader().feed(hello_bytes(None))
    other = clienthello.Reader().feed(hello_bytes("elsewhere.test"))
    chosen = store.choose(None)
    assert chosen is not None and chosen.serial == default[2]
    assert store.context_for(no_sni) is store.context_for(other)  # both: the default
    assert store.select("a.ctx.test").serial == wild[2]  # type: ignore[union-attr]
    assert CertificateStore.from_files([str(tmp_path / "*.pem")]).context_for(other) is None


def test_reload_keeps_unchanged_certificates_and_failed_ones(ca: CA, tmp_path: Path) -> None:
    a = ca.write_pair(tmp_path, "a", ["a.test"])
    b = ca.write_pair(tmp_path, "b", ["b.test"])
    settings = build_config(
        {**BASE, "tls": {"certificates": [str(tmp_path / "*.pem")]}, "route": [route()]}
    ).tls
    first = load_store(settings, ())
    assert first.problems == []
    b[0].write_text("garbage")
    ca.write_pair(tmp_path, "c", ["c.test"])
    second = load_store(settings, (), previous=first.store)
    assert [p for p, _ in second.problems] == [str(b[0])]
    assert second.store.select("a.test") is first.store.select("a.test")  # same object
    assert second.store.select("b.test").serial == b[2]  # type: ignore[union-attr]
    assert second.store.select("c.test") is not None
    assert a[2] != b[2]
    empty = load_store(build_config({**BASE, "tls": {"certificates": ["/nowhere/*.pem"]},
                                     "route": [route()]}).tls, ())  # fmt: skip
    assert empty.problems == [] and empty.notes == [
        "tls.certificates: '/nowhere/*.pem' matches no file"
    ]


# ---------------------------------------------------------------------- PROXY v2 SSL TLV


def test_ssl_tlv_round_trip_and_strict_parsing() -> None:
    info = SSLInfo(
        client=PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN,
        verify=0,
        version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256",
        client_cn="client-1",
        sig_alg="ecdsa-with-SHA256",
        key_alg="EC256",
    )
    header = build_v2(("192.0.2.1", 1000), ("192.0.2.2", 443), authority="a.test", alpn=b"h2",
                      ssl=info)  # fmt: skip
    parsed = ProxyHeaderParser().feed(header + b"rest")
    assert parsed is not None and parsed.ssl == info and parsed.ssl.client_verified
    assert parsed.alpn == b"h2" and parsed.authority == "a.test"
    assert SSLInfo.decode(SSLInfo().encode()) == SSLInfo()
    # A sub-TLV that overruns its TLV fails the whole header, with an offset.
    bad = bytearray(header)
    at = bytes(bad).index(bytes([PP2_TYPE_SSL])) + 3 + 5 + 1  # first sub-TLV's length
    bad[at : at + 2] = (0xFFF).to_bytes(2, "big")
    with pytest.raises(ProxyProtocolError, match="SSL sub-TLV 0x21 overruns"):
        ProxyHeaderParser().feed(bytes(bad))
