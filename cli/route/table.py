"""The route table: server name -> backends, as a pure function with no sockets.

Rules, and how a name is matched against them::

    example.com          exact name
    *.example.com        exactly one more label: a.example.com, not a.b.example.com
    .example.com         example.com itself and every name below it
    ~^api-[0-9]+\\.example\\.com$    a regular expression, always anchored (fullmatch)

Names are compared case-insensitively with one trailing dot ignored. Precedence does
not depend on the order of the rules (as in nginx's ``server_name``): an exact name,
then the most specific wildcard (the one with the longest fixed suffix; on a tie
``*.`` beats ``.``), then regular expressions in the order given, then the default.

A name the parser flagged (``server_name_problems`` other than ``"trailing dot"``)
is never matched: it goes where an unknown name goes, and the router logs why.

The table only ever returns backends that were configured, whatever a client sends:
the router built on it can never become an open proxy.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sniinspect.route.tlsconfig import Termination

# The regex parser, for the "can never match" check: Python 3.11 moved it, and the old
# module names warn on import there.
_RE_PRIVATE = sys.version_info >= (3, 11)
sre_parse: Any = importlib.import_module("re._parser" if _RE_PRIVATE else "sre_parse")
sre_constants: Any = importlib.import_module("re._constants" if _RE_PRIVATE else "sre_constants")

__all__ = [
    "Backend",
    "ConfigError",
    "Lookup",
    "Route",
    "RouteTable",
    "Rule",
    "RuleKind",
    "normalize_name",
    "parse_backend",
    "parse_backends",
    "parse_rule",
]

# RFC 1035 §2.3.4: a name is at most 253 characters in presentation form, a label 63.
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
# Characters a rule may contain and still be matchable by a host_name the parser does
# not flag; "_" is not LDH but is common enough in internal names to allow.
_NAME_CHARS = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
# Problems the router forgives: a trailing dot is normalised away.
_FORGIVEN_PROBLEMS = frozenset({"trailing dot"})


class ConfigError(ValueError):
    """A route, backend or option is not valid; the message names what and why."""


def normalize_name(name: str) -> str:
    """The form names are compared in: lower case, one trailing dot removed.

    Args:
        name: a server name as sent or as written in a rule.

    Returns:
        The name in lower case (ASCII only, so non-ASCII is left as is) without one
        trailing dot.
    """
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    return name


@dataclass(frozen=True, slots=True)
class Backend:
    """An address the router may dial: TCP (IPv4, IPv6 or a host name) or a Unix socket.

    Attributes:
        host: host name or IP literal (without brackets); empty for a Unix socket.
        port: TCP port; 0 for a Unix socket.
        path: the Unix socket path, or None for TCP.
    """

    host: str = ""
    port: int = 0
    path: str | None = None

    @property
    def is_unix(self) -> bool:
        """Whether this is a Unix-domain socket backend."""
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[V6]:PORT`` into host and port.

    Raises:
        ConfigError: the text is not of that form or the port is out of range.
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ConfigError(f"{what} {text!r}: expected [IPv6]:PORT")
        host, port_text = text[1:end], text[end + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"{what} {text!r}: expected HOST:PORT")
        if ":" in host:
            raise ConfigError(f"{what} {text!r}: write an IPv6 address as [ADDR]:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{what} {text!r}: port must be a number from 0 to 65535")
    if not host:
        raise ConfigError(f"{what} {text!r}: empty host")
    return host, int(port_text)


def parse_backend(text: str) -> Backend:
    """Parse one backend: ``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:/path``.

    Raises:
        ConfigError: with the offending text in the message.
    """
    text = text.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path:
            raise ConfigError(f"backend {text!r}: empty Unix socket path")
        return Backend(path=path)
    host, port = parse_address(text, "backend")
    if port == 0:
        raise ConfigError(f"backend {text!r}: port 0 cannot be dialled")
    return Backend(host=host, port=port)


def parse_backends(value: str | Sequence[str]) -> tuple[Backend, ...]:
    """Parse ``HOST:PORT[,HOST:PORT...]`` (or a list of such strings).

    Raises:
        ConfigError: a backend is malformed or the list is empty.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    backends = tuple(parse_backend(item) for item in items if item.strip())
    if not backends:
        raise ConfigError("no backend given")
    return backends


class RuleKind(Enum):
    """How a rule matches a name."""

    EXACT = "exact"
    ONE_LABEL = "one-label wildcard"  # *.example.com
    SUBTREE = "subtree wildcard"  # .example.com
    REGEX = "regex"


@dataclass(frozen=True, slots=True)
class Rule:
    """One name pattern as written, and how it matches.

    Attributes:
        text: the rule as written in the configuration.
        kind: exact, one of the two wildcards, or a regular expression.
        key: the normalised name (exact), the fixed suffix (wildcards), or the pattern.
    """

    text: str
    kind: RuleKind
    key: str
    regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, name: str) -> bool:
        """Whether this rule alone matches an already normalised name."""
        if self.kind is RuleKind.EXACT:
            return name == self.key
        if self.kind is RuleKind.ONE_LABEL:
            head, dot, tail = name.partition(".")
            return bool(dot) and bool(head) and tail == self.key
        if self.kind is RuleKind.SUBTREE:
            return name == self.key or name.endswith("." + self.key)
        assert self.regex is not None  # invariant of parse_rule, not an input check
        return self.regex.fullmatch(name) is not None


def parse_rule(text: str) -> Rule:
    """Parse one name rule: ``name``, ``*.suffix``, ``.suffix`` or ``~regex``.

    Raises:
        ConfigError: the rule is empty, a wildcard is misplaced, or the regex does not
            compile.
    """
    raw = text.strip()
    if not raw:
        raise ConfigError("empty name rule")
    if raw.startswith("~"):
        pattern = raw[1:].strip()
        if not pattern:
            raise ConfigError(f"name rule {text!r}: empty regular expression")
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"name rule {text!r}: bad regular expression: {exc}") from None
        return Rule(raw, RuleKind.REGEX, pattern, compiled)
    name = normalize_name(raw)
    if name.startswith("*."):
        kind, key = RuleKind.ONE_LABEL, name[2:]
    elif name.startswith("."):
        kind, key = RuleKind.SUBTREE, name[1:]
    else:
        kind, key = RuleKind.EXACT, name
    if not key or "*" in key or key.startswith(".") or ".." in key:
        raise ConfigError(
            f"name rule {text!r}: use 'name', '*.suffix', '.suffix' or '~regex'"
            " (a '*' only as the whole first label)"
        )
    return Rule(raw, kind, key)


@dataclass(frozen=True, slots=True)
class Route:
    """Names and where they go.

    Attributes:
        rules: the name rules of this route.
        backends: where to connect, tried round robin.
        proxy_protocol: 0 (none), 1 or 2: the PROXY protocol header sent to the backend.
        name: a label for logs and metrics (defaults to the first rule).
        terminate: TLS ends at the router for these names (certificate, ALPN, client
            certificates, TLS towards the backends); None passes the bytes through.
        quic_backends: where QUIC (UDP) connections for these names go; empty: the
            same hosts and ports as ``backends``, over UDP.
    """

    rules: tuple[Rule, ...]
    backends: tuple[Backend, ...]
    proxy_protocol: int = 0
    name: str = ""
    terminate: Termination | None = None
    quic_backends: tuple[Backend, ...] = ()

    @property
    def label(self) -> str:
        """The route's name for logs: its name, else its first rule."""
        return self.name or (self.rules[0].text if self.rules else "default")


@dataclass(frozen=True, slots=True)
class Lookup:
    """The result of matching one name.

    Attributes:
        route: the route that matched, or None.
        rule: the rule that matched, or None.
        name: the normalised name that was looked up (None if there was none).
        reason: None on a match, else "no_sni" or "unknown_name".
    """

    route: Route | None
    rule: Rule | None
    name: str | None
    reason: str | None


class RouteTable:
    """Matches names to routes with a fixed precedence; immutable once built.

    Args:
        routes: the routes, in configuration order (which matters only among regexes).

    Raises:
        ConfigError: the same exact name or wildcard appears in two routes (which
            one was meant cannot be told from a precedence that ignores order).
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        self._exact: dict[str, tuple[Route, Rule]] = {}
        self._one_label: dict[str, tuple[Route, Rule]] = {}
        self._subtree: dict[str, tuple[Route, Rule]] = {}
        self._regexes: list[tuple[Route, Rule]] = []
        tables = {
            RuleKind.EXACT: self._exact,
            RuleKind.ONE_LABEL: self._one_label,
            RuleKind.SUBTREE: self._subtree,
        }
        for route in self.routes:
            for rule in route.rules:
                if rule.kind is RuleKind.REGEX:
                    self._regexes.append((route, rule))
                    continue
                table = tables[rule.kind]
                if rule.key in table:
                    first = table[rule.key][1]
                    raise ConfigError(
                        f"name rule '{rule.text}' appears twice (first as {first.text!r});"
                        " each name may belong to one route only"
                    )
                table[rule.key] = (route, rule)

    def match(self, name: str) -> tuple[Route, Rule] | None:
        """The route and rule for a name (normalised here), or None.

        Args:
            name: a server name; case and one trailing dot do not matter.
        """
        name = normalize_name(name)
        if not name:
            return None
        hit = self._exact.get(name)
        if hit is not None:
            return hit
        if self._one_label or self._subtree:
            hit = self._match_wildcard(name)
            if hit is not None:
                return hit
        for route, rule in self._regexes:
            assert rule.regex is not None
            if rule.regex.fullmatch(name) is not None:
                return route, rule
        return None

    def _match_wildcard(self, name: str) -> tuple[Route, Rule] | None:
        # Walk suffixes from the longest (most specific) to the shortest; at each
        # suffix a one-label wildcard outranks a subtree one because it says more.
        hit = self._subtree.get(name)  # ".example.com" also matches example.com
        if hit is not None:
            return hit
        start = name.find(".")
        first = start > 0  # "*." needs a non-empty first label
        while start >= 0:
            suffix = name[start + 1 :]
            if first:
                hit = self._one_label.get(suffix)
                if hit is not None:
                    return hit
                first = False
            hit = self._subtree.get(suffix)
            if hit is not None:
                return hit
            start = name.find(".", start + 1)
        return None

    def lookup(self, server_name: str | None, problems: Sequence[str] = ()) -> Lookup:
        """Match a server name as the parser reported it.

        Args:
            server_name: ``ClientHello.server_name`` (None when the hello has none).
            problems: ``ClientHello.server_name_problems``; any other than a trailing
                dot makes the name unmatched, whatever the rules say.

        Returns:
            A Lookup whose reason is "no_sni", "unknown_name" or None (matched).
        """
        if server_name is None:
            if problems and "no host_name" not in problems:
                return Lookup(None, None, None, "unknown_name")
            return Lookup(None, None, None, "no_sni")
        name = normalize_name(server_name)
        if any(p not in _FORGIVEN_PROBLEMS for p in problems):
            return Lookup(None, None, name, "unknown_name")
        hit = self.match(name)
        if hit is None:
            return Lookup(None, None, name, "unknown_name")
        return Lookup(hit[0], hit[1], name, None)

    def backends(self) -> frozenset[Backend]:
        """Every backend any route can send to."""
        return frozenset(b for route in self.routes for b in route.backends)

    def warnings(self) -> list[str]:
        """Rules that can never match, or look like a mistake, in readable sentences.

        Exact and wildcard rules cannot shadow each other (they are unique per key and
        the most specific wins); what can never match is a rule no valid host name can
        reach, and a regular expression whose every match an earlier-ranked rule takes.
        The regex check is by construction of sample names from the pattern, so it
        reports only what it has shown: "never matches" means every sample it built was
        taken by the rule it names.
        """
        out: list[str] = []
        for route in self.routes:
            for rule in route.rules:
                problem = _unmatchable_name(rule)
                if problem:
                    out.append(
                        f"route '{route.label}': rule '{rule.text}' can never match: {problem}"
                    )
        for index, (route, rule) in enumerate(self._regexes):
            assert rule.regex is not None
            samples = _regex_samples(rule.key)
            if samples is None:
                continue
            if all(s.endswith(".") for s in samples):
                out.append(
                    f"route '{route.label}': rule '{rule.text}' can never match: names are"
                    " compared without their trailing dot"
                )
                continue
            names = [s for s in samples if _plausible_name(s)]
            if not names:
                out.append(
                    f"route '{route.label}': rule '{rule.text}' can never match: it only"
                    " matches strings that are not host names"
                )
                continue
            takers: list[str] = []
            for n in names:
                taker = self._taken_before_regex(n, index)
                if taker is None:
                    break
                takers.append(taker)
            else:
                out.append(
                    f"route '{route.label}': rule '{rule.text}' can never match: every name it"
                    f" matches goes to {', '.join(dict.fromkeys(takers))} first"
                )
        return out

    def _taken_before_regex(self, name: str, index: int) -> str | None:
        """The rule that takes ``name`` before regex number ``index``, if any."""
        hit = self._exact.get(name)
        if hit is None:
            hit = self._match_wildcard(name)
        if hit is not None:
            return f"'{hit[1].text}'"
        for _route, rule in self._regexes[:index]:
            assert rule.regex is not None
            if rule.regex.fullmatch(name) is not None:
                return f"'{rule.text}'"
        if not self._regexes[index][1].matches(name):
            return "no rule (bad sample)"
        return None


def _plausible_name(name: str) -> bool:
    return (
        0 < len(name) <= MAX_NAME_LENGTH
        and _NAME_CHARS.fullmatch(name) is not None
        and all(len(label) <= MAX_LABEL_LENGTH for label in name.split("."))
    )


def _unmatchable_name(rule: Rule) -> str | None:
    if rule.kind is RuleKind.REGEX:
        return None
    key = rule.key
    if len(key) > MAX_NAME_LENGTH:
        return f"longer than {MAX_NAME_LENGTH} characters"
    if not key.isascii():
        return "a server name is ASCII (write an IDN as its xn-- A-label)"
    if _NAME_CHARS.fullmatch(key) is None:
        return "contains characters a host name cannot have"
    if any(len(label) > MAX_LABEL_LENGTH for label in key.split(".")):
        return f"a label is longer than {MAX_LABEL_LENGTH} characters"
    return None


# ---------------------------------------------------------------------------------
# Sample names for a regular expression, for the "can never match" check.

_MAX_SAMPLES = 64
# Characters tried, in order, when a class or "." must produce one character; letters
# first so that samples look like host names.
_PREFERRED = "abcdefghijklmnopqrstuvwxyz0123456789-._"


def _regex_samples(pattern: str) -> list[str] | None:
    """A few strings the pattern fullmatches, or None when it cannot tell."""
    try:
        parsed = sre_parse.parse(pattern, re.IGNORECASE)
        samples = _expand(list(parsed))
    except (_Unsupported, re.error, RecursionError, TypeError):
        return None
    compiled = re.compile(pattern, re.IGNORECASE)
    good = [s for s in dict.fromkeys(samples) if compiled.fullmatch(s)]
    return good or None


def _never(ch: str) -> bool:
    return False


_CATEGORY_TESTS: dict[Any, Callable[[str], bool]] = {
    sre_constants.CATEGORY_DIGIT: str.isdigit,
    sre_constants.CATEGORY_NOT_DIGIT: lambda ch: not ch.isdigit(),
    sre_constants.CATEGORY_WORD: lambda ch: ch.isalnum() or ch == "_",
    sre_constants.CATEGORY_NOT_WORD: lambda ch: not (ch.isalnum() or ch == "_"),
    sre_constants.CATEGORY_NOT_SPACE: lambda ch: not ch.isspace(),
}


class _Unsupported(Exception):
    pass


def _expand(items: list[tuple[Any, Any]]) -> list[str]:
    results = [""]
    for op, arg in items:
        options = _expand_one(op, arg)
        results = [r + o for r in results for o in options][:_MAX_SAMPLES]
    return results


def _class_char(items: list[tuple[Any, Any]], negate: bool = False) -> str:
    def allowed(ch: str) -> bool:
        code = ord(ch)
        hit = False
        for op, arg in items:
            if op is sre_constants.LITERAL and arg == code:
                hit = True
            elif op is sre_constants.RANGE:
                lo, hi = arg
                if lo <= code <= hi or lo <= ord(ch.upper()) <= hi:
                    hit = True
            elif op is sre_constants.CATEGORY:
                hit = hit or _CATEGORY_TESTS.get(arg, _never)(ch)
            elif op is sre_constants.NEGATE:
                continue
        return hit != negate

    for ch in _PREFERRED:
        if allowed(ch):
            return ch
    for code in range(32, 127):
        if allowed(chr(code)):
            return chr(code)
    raise _Unsupported


def _expand_one(op: Any, arg: Any) -> list[str]:
    if op is sre_constants.LITERAL:
        return [chr(arg)]
    if op is sre_constants.NOT_LITERAL:
        return [next(c for c in _PREFERRED if ord(c) != arg)]
    if op is sre_constants.ANY:
        return ["a", "."]
    if op is sre_constants.AT:
        return [""]
    if op is sre_constants.IN:
        items = list(arg)
        negate = bool(items) and items[0][0] is sre_constants.NEGATE
        return [_class_char(items[1:] if negate else items, negate)]
    if op is sre_constants.SUBPATTERN:
        return _expand(list(arg[-1]))
    if op is sre_constants.BRANCH:
        out: list[str] = []
        for branch in arg[1]:
            out.extend(_expand(list(branch)))
        return out[:_MAX_SAMPLES]
    if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT):
        lo, hi, sub = arg
        body = _expand(list(sub))
        counts = sorted({min(n, hi) for n in (lo, lo + 1, lo + 2, max(lo, 3))})
        out = []
        for n in counts:
            # Each alternative repeated on its own, then all of them interleaved, so
            # that ".*" yields "a", "." and "a.a" (a name with one more label).
            out.extend(b * n for b in body)
            if len(body) > 1:
                out.append("".join(body[i % len(body)] for i in range(n)))
        return out[:_MAX_SAMPLES]
    raise _Unsupported
