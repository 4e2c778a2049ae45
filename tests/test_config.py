"""Configuration: TOML and flags give the same options; errors name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sniinspect.route.config import (
    ALERTS,
    ConfigError,
    ListenerConfig,
    build_config,
    load_config,
    parse_listen,
    parse_route,
)
from sniinspect.route.table import Backend

BASE: dict[str, Any] = {"listen": ["127.0.0.1:8443"], "default": "127.0.0.1:9000"}

FULL_TOML = """
listen = ["127.0.0.1:8443", "[::1]:8443"]
default = ["127.0.0.1:9000", "127.0.0.1:9001"]
default_proxy_protocol = "v1"
hello_timeout = 2.5
max_hello_size = 32768
connect_timeout = 1
idle_timeout = 60
max_connections = 500
max_pending = 100
max_pending_per_client = 5
drain_timeout = 3
relay = "copy"
workers = 2
metrics = "127.0.0.1:9100"
log_file = "/tmp/router.log"
connection_log = true

[actions]
unknown_name = "alert"
not_tls = "127.0.0.1:8080"
timeout = "close"

[[listener]]
address = "0.0.0.0:8080"
http_host = true
accept_proxy = true

[[route]]
name = "web"
names = ["example.com", "*.example.com", ".example.org", "~^api-[0-9]+\\\\.example\\\\.net$"]
backends = ["10.0.0.1:443", "[2001:db8::1]:443", "unix:/run/web.sock"]
proxy_protocol = 2

[[route]]
names = "mail.example.net"
backend = "10.0.0.9:993"
"""


def test_full_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "router.toml"
    path.write_text(FULL_TOML)
    cfg = load_config(path)
    assert cfg.listeners == (
        ListenerConfig("127.0.0.1", 8443),
        ListenerConfig("::1", 8443),
        ListenerConfig("0.0.0.0", 8080, accept_proxy=True, http_host=True),
    )
    assert cfg.default is not None and cfg.default.proxy_protocol == 1
    assert cfg.default.backends == (Backend("127.0.0.1", 9000), Backend("127.0.0.1", 9001))
    assert (cfg.hello_timeout, cfg.max_hello_size, cfg.connect_timeout) == (2.5, 32768, 1.0)
    assert (cfg.idle_timeout, cfg.max_connections, cfg.max_pending) == (60.0, 500, 100)
    assert (cfg.max_pending_per_client, cfg.drain_timeout, cfg.relay) == (5, 3.0, "copy")
    assert (cfg.workers, cfg.metrics, cfg.log_file) == (2, ("127.0.0.1", 9100), "/tmp/router.log")
    web, mail = cfg.table.routes
    assert web.label == "web" and web.proxy_protocol == 2
    assert web.backends[2] == Backend(path="/run/web.sock")
    assert mail.backends == (Backend("10.0.0.9", 993),)
    assert cfg.actions["unknown_name"].kind == "alert"
    assert cfg.actions["unknown_name"].alert == ALERTS["unknown_name"] == 112
    assert cfg.actions["not_tls"].kind == "backend"
    assert cfg.actions["not_tls"].route.backends == (Backend("127.0.0.1", 8080),)  # type: ignore[union-attr]
    assert cfg.actions["timeout"].kind == "close"
    assert cfg.actions["no_sni"].kind == "backend"  # the default, when one is set
    assert cfg.table.lookup("API-7.example.NET").route is web


def test_flags_and_toml_give_the_same_options(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        'listen = ["127.0.0.1:1"]\nhello_timeout = 3\nmax_hello_size = 20000\n'
        '[[route]]\nnames = ["a.com"]\nbackends = ["127.0.0.1:2", "[::1]:3"]\nproxy_protocol = 2\n'
        '[actions]\nno_sni = "close"\n'
    )
    from_file = load_config(path)
    from_flags = build_config(
        {},
        {
            "listen": ["127.0.0.1:1"],
            "hello_timeout": 3,
            "max_hello_size": 20000,
            "route": ["a.com=127.0.0.1:2,[::1]:3;proxy_protocol=2"],
            "actions": {"no_sni": "close"},
        },
    )
    for attr in ("listeners", "hello_timeout", "max_hello_size", "actions", "default"):
        assert getattr(from_file, attr) == getattr(from_flags, attr), attr
    assert from_file.table.routes[0].backends == from_flags.table.routes[0].backends
    assert (
        from_file.table.routes[0].proxy_protocol == from_flags.table.routes[0].proxy_protocol == 2
    )


def test_flags_override_scalars_and_add_listeners_and_routes(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        'listen = "127.0.0.1:1"\nhello_timeout = 3\n'
        '[[route]]\nnames = ["a.com"]\nbackends = "127.0.0.1:2"\n'
    )
    cfg = load_config(path, {"hello_timeout": 7, "listen": ["[::1]:5"], "route": ["b.com=[::1]:9"]})
    assert cfg.hello_timeout == 7
    assert [lst.address for lst in cfg.listeners] == ["127.0.0.1:1", "[::1]:5"]
    assert [r.rules[0].text for r in cfg.table.routes] == ["a.com", "b.com"]


def test_defaults() -> None:
    cfg = build_config({"listen": "127.0.0.1:0", "route": [{"names": "a", "backends": "h:1"}]})
    assert (cfg.hello_timeout, cfg.max_hello_size) == (10.0, 16384)
    # Without a default backend: TLS clients learn why (alert), others are closed.
    kinds = {reason: action.kind for reason, action in cfg.actions.items()}
    assert kinds == {
        "no_sni": "alert",
        "unknown_name": "alert",
        "not_tls": "close",
        "malformed": "alert",
        "too_large": "alert",
        "timeout": "close",
    }
    assert {r: a.alert for r, a in cfg.actions.items() if a.kind == "alert"} == {
        "no_sni": 112,
        "unknown_name": 112,
        "malformed": 50,
        "too_large": 40,
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"listen": "127.0.0.1:1", "hello_timout": 3},
            "hello_timout: unknown key (did you mean 'hello_timeout'?)",
        ),
        ({"hello_timeout": "3"}, "hello_timeout: expected a number of seconds, got '3'"),
        ({"hello_timeout": True}, "hello_timeout: expected a number of seconds, got True"),
        ({"max_hello_size": 100_000}, "max_hello_size: 100000 is out of range (512 to 65536)"),
        ({"max_hello_size": 1.5}, "max_hello_size: expected an integer"),
        ({"workers": 0}, "workers: 0 is out of range"),
        ({"listen": ["localhost"]}, "listen[0]"),
        ({"listen": ["example.com:443"]}, "is not an IP address"),
        (
            {"listen": ["127.0.0.1:1;accept_prxy"]},
            "accept_prxy: unknown key (did you mean 'accept_proxy'?)",
        ),
        ({"listener": [{"address": "127.0.0.1:1", "http": True}]}, "listener[0].http: unknown key"),
        (
            {"listener": [{"address": "127.0.0.1:1", "accept_proxy": "yes"}]},
            "listener[0].accept_proxy: expected true or false",
        ),
        ({"listener": [{}]}, "listener[0].address: missing"),
        ({"route": [{"names": ["a.com"]}]}, "route[0].backends: missing"),
        ({"route": [{"backends": "h:1"}]}, "route[0].names: missing"),
        ({"route": [{"names": ["a.com", "*.*.b"], "backends": "h:1"}]}, "route[0].names[1]"),
        ({"route": [{"names": ["~("], "backends": "h:1"}]}, "bad regular expression"),
        ({"route": [{"names": "a", "backends": ["h:1", "h"]}]}, "route[0].backends[1]"),
        (
            {"route": [{"names": "a", "backends": "h:1", "proxy_protocol": 3}]},
            "route[0].proxy_protocol: expected 0, 1 or 2",
        ),
        (
            {"route": [{"names": "a", "backends": "h:1", "weight": 3}]},
            "route[0].weight: unknown key",
        ),
        ({"route": {"names": "a"}}, "route: expected an array of tables"),
        (
            {
                "actions": {"no_sni": "default"},
                "default": None,
                "route": [{"names": "a", "backends": "h:1"}],
            },
            "actions.no_sni: 'default' needs a default backend",
        ),
        ({"actions": {"no_sni": "bounce"}}, "actions.no_sni: expected 'default', 'alert', 'close'"),
        ({"actions": {"nosni": "close"}}, "actions.nosni: unknown key (did you mean 'no_sni'?)"),
        ({"relay": "zerocopy"}, "relay: expected 'auto', 'splice' or 'copy'"),
        ({"metrics": "9100"}, "metrics"),
        ({"listen": []}, "listen: no listener"),
        ({"listen": ["127.0.0.1:1", "127.0.0.1:1"]}, "given twice"),
    ],
)
def test_errors_name_the_key(data: dict[str, Any], message: str) -> None:
    merged = {k: v for k, v in {**BASE, **data}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        build_config(merged)
    assert message in str(info.value)


def test_no_route_and_no_default_is_an_error() -> None:
    with pytest.raises(ConfigError, match="nothing could ever be forwarded"):
        build_config({"listen": "127.0.0.1:1"})


def test_toml_syntax_and_missing_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("listen = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    path.write_text('listen = "127.0.0.1:1"\n[[route]]\nnames = "a"\nbackends = "nope"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: route[0].backends[0]")


@pytest.mark.parametrize(
    ("text", "names", "backends", "extra"),
    [
        ("a.com=127.0.0.1:1", ["a.com"], ["127.0.0.1:1"], {}),
        ("a.com=h:1,[::1]:2", ["a.com"], ["h:1", "[::1]:2"], {}),
        ("~^a(?=b).*=h:1", ["~^a(?=b).*"], ["h:1"], {}),
        ("~x{1,3}=h:1;proxy_protocol=1", ["~x{1,3}"], ["h:1"], {"proxy_protocol": "1"}),
        ("*.a.com=unix:/run/x.sock", ["*.a.com"], ["unix:/run/x.sock"], {}),
    ],
)
def test_parse_route_flag(
    text: str, names: list[str], backends: list[str], extra: dict[str, str]
) -> None:
    assert parse_route(text) == {"names": names, "backends": backends, **extra}


@pytest.mark.parametrize("bad", ["a.com", "=h:1", "a.com="])
def test_parse_route_flag_rejects(bad: str) -> None:
    with pytest.raises(ConfigError, match="expected NAME=HOST:PORT"):
        parse_route(bad)


def test_parse_listen_flag() -> None:
    assert parse_listen("[::]:443;accept_proxy;http_host") == ListenerConfig(
        "::", 443, accept_proxy=True, http_host=True
    )
    assert parse_listen("*:80") == ListenerConfig("0.0.0.0", 80)


def test_warnings_include_unreachable_rules() -> None:
    cfg = build_config(
        {
            "listen": "127.0.0.1:1",
            "route": [{"names": ["a.com", "~a\\.com"], "backends": "h:1"}],
            "actions": {"not_tls": "alert"},
        }
    )
    warnings = cfg.warnings()
    assert any("'~a\\.com' can never match" in w for w in warnings)
    assert any("not_tls" in w for w in warnings)
