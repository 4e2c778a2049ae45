"""The route table on its own: matching, precedence, backends, unreachable rules (no sockets)."""

from __future__ import annotations

import itertools
import random

import pytest

from sniinspect.route.table import (
    Backend,
    ConfigError,
    Route,
    RouteTable,
    RuleKind,
    normalize_name,
    parse_backend,
    parse_backends,
    parse_rule,
)


def table(*routes: tuple[str, list[str]]) -> RouteTable:
    """RouteTable from (label, rules); each route gets its own backend port."""
    return RouteTable(
        Route(tuple(parse_rule(r) for r in rules), (Backend("127.0.0.1", 1000 + i),), 0, label)
        for i, (label, rules) in enumerate(routes)
    )


def winner(t: RouteTable, name: str) -> str | None:
    hit = t.match(name)
    return None if hit is None else hit[0].label


# ------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Example.COM", "example.com"), ("example.com.", "example.com"), ("a.b.", "a.b"), ("", "")],
)
def test_normalize_name(raw: str, expected: str) -> None:
    assert normalize_name(raw) == expected


@pytest.mark.parametrize(
    ("text", "kind", "key"),
    [
        ("Example.com", RuleKind.EXACT, "example.com"),
        ("example.com.", RuleKind.EXACT, "example.com"),
        ("*.Example.com", RuleKind.ONE_LABEL, "example.com"),
        (".example.com", RuleKind.SUBTREE, "example.com"),
        ("~^api[0-9]+\\.x$", RuleKind.REGEX, "^api[0-9]+\\.x$"),
    ],
)
def test_parse_rule(text: str, kind: RuleKind, key: str) -> None:
    rule = parse_rule(text)
    assert (rule.kind, rule.key) == (kind, key)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "  ",
        "*",
        "*.",
        "a.*.com",
        "*x.com",
        "**.a.com",
        "..a",
        "~",
        "~(unclosed",
        "a..b",
        "foo*.com",
    ],
)
def test_parse_rule_rejects(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_rule(bad)


# ------------------------------------------------------------------ matching


def test_exact_is_case_insensitive_and_ignores_one_trailing_dot() -> None:
    t = table(("a", ["Example.com"]))
    for name in ("example.com", "EXAMPLE.COM", "example.com.", "eXample.Com."):
        assert winner(t, name) == "a"
    for name in ("www.example.com", "example.co", "example.com..", "xexample.com"):
        assert winner(t, name) is None


def test_one_label_wildcard_matches_exactly_one_more_label() -> None:
    t = table(("w", ["*.example.com"]))
    assert winner(t, "a.example.com") == "w"
    assert winner(t, "A-1.Example.Com.") == "w"
    assert winner(t, "example.com") is None
    assert winner(t, "a.b.example.com") is None
    assert winner(t, ".example.com") is None
    assert winner(t, "aexample.com") is None


def test_subtree_wildcard_matches_name_and_every_subdomain() -> None:
    t = table(("s", [".example.com"]))
    for name in ("example.com", "a.example.com", "a.b.c.example.com", "EXAMPLE.com."):
        assert winner(t, name) == "s"
    for name in ("aexample.com", "example.org", "com"):
        assert winner(t, name) is None


def test_regex_is_anchored_and_case_insensitive() -> None:
    t = table(("r", ["~api[0-9]+\\.example\\.com"]))
    assert winner(t, "api7.example.com") == "r"
    assert winner(t, "API12.EXAMPLE.COM.") == "r"
    assert winner(t, "xapi7.example.com") is None  # anchored at the start
    assert winner(t, "api7.example.com.evil") is None  # and at the end


def test_precedence_exact_then_specific_wildcard_then_regex_then_nothing() -> None:
    t = table(
        ("regex-all", ["~.*"]),
        ("subtree-com", [".com"]),
        ("subtree", [".example.com"]),
        ("star", ["*.example.com"]),
        ("deep-star", ["*.b.example.com"]),
        ("exact", ["a.b.example.com"]),
    )
    assert winner(t, "a.b.example.com") == "exact"
    assert winner(t, "x.b.example.com") == "deep-star"
    assert winner(t, "b.example.com") == "star"  # *. beats . on the same suffix
    assert winner(t, "example.com") == "subtree"
    assert winner(t, "y.x.b.example.com") == "subtree"  # *.b.example.com is one label only
    assert winner(t, "other.com") == "subtree-com"
    assert winner(t, "localhost") == "regex-all"


def test_regexes_are_tried_in_file_order() -> None:
    t = table(("first", ["~a.*"]), ("second", ["~ab.*"]))
    assert winner(t, "abc") == "first"
    t = table(("second", ["~ab.*"]), ("first", ["~a.*"]))
    assert winner(t, "abc") == "second"
    assert winner(t, "acc") == "first"


def test_precedence_does_not_depend_on_the_order_of_non_regex_rules() -> None:
    routes = [
        ("exact", ["www.example.com"]),
        ("star", ["*.example.com"]),
        ("subtree", [".example.com"]),
        ("deep", [".www.example.com"]),
        ("regex", ["~.*example.*"]),
    ]
    names = [
        "www.example.com",
        "a.example.com",
        "a.b.example.com",
        "example.com",
        "x.www.example.com",
        "myexample.org",
        "nothing.net",
    ]
    expected = [winner(table(*routes), n) for n in names]
    assert expected == ["exact", "star", "subtree", "subtree", "deep", "regex", None]
    for perm in itertools.permutations(routes):
        t = table(*perm)
        assert [winner(t, n) for n in names] == expected


def test_lookup_reasons_and_server_name_problems() -> None:
    t = table(("a", ["example.com"]), ("any", ["~.*"]))
    assert t.lookup("example.com").reason is None
    assert t.lookup(None).reason == "no_sni"
    assert t.lookup(None, ("no host_name",)).reason == "no_sni"
    # A trailing dot is forgiven; anything else odd is never matched, even by ".*".
    found = t.lookup("example.com.", ("trailing dot",))
    assert found.route is not None and found.route.label == "a"
    for problems in (
        ("non-ascii",),
        ("multiple host_names",),
        ("invalid characters",),
        ("empty",),
        ("trailing dot", "invalid characters"),
    ):
        found = t.lookup("example.com", problems)
        assert (found.route, found.reason) == (None, "unknown_name")
    assert t.lookup("", ("empty",)).reason == "unknown_name"
    assert t.lookup("zzz").route.label == "any"  # type: ignore[union-attr]


def test_duplicate_names_are_rejected_whatever_their_spelling() -> None:
    with pytest.raises(ConfigError, match="appears twice"):
        table(("a", ["Example.com"]), ("b", ["example.com."]))
    with pytest.raises(ConfigError, match="appears twice"):
        table(("a", ["*.example.com"]), ("b", ["*.EXAMPLE.com"]))
    table(("a", ["example.com"]), ("b", ["*.example.com"]), ("c", [".example.com"]))


def test_only_configured_backends_are_ever_returned() -> None:
    t = table(("a", ["example.com"]), ("w", ["*.example.org"]), ("r", ["~(.*)\\.net"]))
    allowed = t.backends()
    rng = random.Random(1)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789.-:[]/_*"
    names = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(2000)]
    names += ["127.0.0.1:22", "unix:/etc/passwd", "[::1]:80", "localhost", "x.net", "evil.com"]
    for name in names:
        hit = t.match(name)
        if hit is not None:
            assert set(hit[0].backends) <= allowed


# ------------------------------------------------------------------ backends


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:443", Backend("127.0.0.1", 443)),
        ("backend.internal:8443", Backend("backend.internal", 8443)),
        ("[::1]:443", Backend("::1", 443)),
        ("[2001:db8::5]:1", Backend("2001:db8::5", 1)),
        ("unix:/run/app.sock", Backend(path="/run/app.sock")),
    ],
)
def test_parse_backend(text: str, expected: Backend) -> None:
    backend = parse_backend(text)
    assert backend == expected
    assert str(backend) == text


@pytest.mark.parametrize(
    "bad",
    [
        "127.0.0.1",
        "::1:443",
        "[::1]443",
        "host:0",
        "host:65536",
        "host:x",
        ":443",
        "unix:",
        "[::1",
        "",
    ],
)
def test_parse_backend_rejects(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_backend(bad)


def test_parse_backends_list() -> None:
    assert parse_backends("127.0.0.1:1,[::1]:2, unix:/x") == (
        Backend("127.0.0.1", 1),
        Backend("::1", 2),
        Backend(path="/x"),
    )
    with pytest.raises(ConfigError):
        parse_backends(" , ")


# ------------------------------------------------------------------ --check-config


def test_warnings_name_rules_that_can_never_match() -> None:
    t = table(
        ("web", ["example.com", "*.example.com", ".example.com"]),
        ("shadowed-regex", ["~.*\\.example\\.com"]),  # every such name is a wildcard's
        ("catch-all", ["~.+"]),
        ("after-catch-all", ["~api\\.internal"]),
        ("literal", ["~example\\.com"]),  # the exact rule takes it
        ("dot", ["~api\\.example\\.net\\."]),  # names are compared without the dot
        ("space", ["bad name.com"]),
        ("long-label", ["a" * 64 + ".com"]),
        ("idn", ["bücher.de"]),
    )
    text = "\n".join(t.warnings())
    for label in (
        "shadowed-regex",
        "after-catch-all",
        "literal",
        "dot",
        "space",
        "long-label",
        "idn",
    ):
        assert f"route {label!r}" in text, label
    assert "'web'" not in text and "'catch-all'" not in text
    assert "'~.+'" in text  # says which rule takes the names


def test_no_false_warning_for_reachable_regexes() -> None:
    t = table(
        ("star", ["*.example.com"]),
        ("deeper", ["~.*\\.example\\.com"]),  # a.b.example.com is not the wildcard's
        ("three", ["~(foo|bar|baz)\\.com"]),
        ("some", ["foo.com", "bar.com"]),
        ("digits", ["~api-[0-9]{2,4}\\.example\\.net"]),
        ("negated", ["~[^.]+\\.local"]),
    )
    assert t.warnings() == []
