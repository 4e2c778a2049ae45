"""The `sniinspect` command line: a click group whose subcommands load on first use."""

from __future__ import annotations

import importlib
import json
import string
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

import clienthello

# Subcommands live in their own modules and are imported only when run, so that
# `sniinspect pcap` does not pay for the router's imports and the other way round.
_COMMANDS = {
    "hello": ("sniinspect.main", "hello", "Decode one ClientHello and print every field."),
    "pcap": ("sniinspect.capture.command", "pcap", "Who asked for which host, from capture files."),
    "live": ("sniinspect.capture.command", "live", "The same records from live traffic."),
    "route": ("sniinspect.route.command", "route", "Route TLS connections by SNI, unterminated."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = _COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attr, _ = entry
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, _, help_) in _COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sniinspect")
def cli() -> None:
    """Inspect TLS ClientHellos: parse them, find them in captures, route by them.

    \b
    Examples:
      sniinspect hello hello.bin                 every field of one ClientHello
      sniinspect pcap capture.pcapng             who asked for which host
      sniinspect route --listen :443 --route example.com=10.0.0.2:443

    Run `sniinspect COMMAND --help` for each command's options.
    """


# --- hello --------------------------------------------------------------------------

_Found = TypeVar("_Found")  # what a datagram reader returns once it has the hello
_HEX_CHARS = frozenset(string.hexdigits + string.whitespace + ":")


class _InputError(click.ClickException):
    exit_code = 2


def _read_input(source: str) -> bytes:
    if source == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise _InputError(f"cannot read {source}: {exc.strerror}") from None
    text = data.strip()
    # Hex text (as copied from Wireshark or xxd -p) is accepted as well as raw bytes.
    if text and all(chr(b) in _HEX_CHARS for b in text):
        cleaned = "".join(text.decode("ascii").split()).replace(":", "")
        try:
            return bytes.fromhex(cleaned)
        except ValueError:
            raise _InputError(
                f"{source}: looks like hex text but has an odd number of digits"
            ) from None
    return data


def describe(hello: clienthello.ClientHello, transport: str | None = None) -> dict[str, Any]:
    """Every field of a hello as plain JSON-ready values, with IANA names.

    ``transport`` (``tcp``, ``quic``, ``dtls``; default: ``dtls`` for a DTLS hello,
    else ``tcp``) is JA4's first character.
    """

    def named(values: tuple[int, ...] | None, name: Any) -> list[dict[str, Any]] | None:
        if values is None:
            return None
        return [{"value": v, "name": name(v)} for v in values]

    return {
        "legacy_version": {
            "value": hello.legacy_version,
            "name": clienthello.version_name(hello.legacy_version),
        },
        "sslv2": hello.sslv2,
        "random": hello.random.hex(),
        "legacy_session_id": hello.legacy_session_id.hex(),
        "cipher_suites": named(hello.cipher_suites, clienthello.cipher_suite_name),
        "legacy_compression_methods": list(hello.legacy_compression_methods),
        "extensions": [
            {"type": e.type, "name": clienthello.extension_name(e.type), "length": len(e.data)}
            for e in hello.extensions
        ],
        "server_name": hello.server_name,
        "server_name_problems": list(hello.server_name_problems),
        "alpn_protocols": (
            None
            if hello.alpn_protocols is None
            else [p.decode("utf-8", "backslashreplace") for p in hello.alpn_protocols]
        ),
        "supported_versions": named(hello.supported_versions, clienthello.version_name),
        "supported_groups": named(hello.supported_groups, clienthello.group_name),
        "key_share_groups": named(hello.key_share_groups, clienthello.group_name),
        "signature_algorithms": named(
            hello.signature_algorithms, clienthello.signature_scheme_name
        ),
        "ec_point_formats": (
            None if hello.ec_point_formats is None else list(hello.ec_point_formats)
        ),
        "psk_key_exchange_modes": (
            None if hello.psk_key_exchange_modes is None else list(hello.psk_key_exchange_modes)
        ),
        "has_pre_shared_key": hello.has_pre_shared_key,
        "ech": (
            None
            if hello.ech is None
            else {
                "type": hello.ech.type,
                "kdf_id": hello.ech.kdf_id,
                "aead_id": hello.ech.aead_id,
                "config_id": hello.ech.config_id,
                "enc_length": hello.ech.enc_length,
                "payload_length": hello.ech.payload_length,
            }
        ),
        "quic_transport_parameters": _transport_parameters(hello),
        "grease": hello.grease,
        "ja3": clienthello.ja3(hello),
        "ja3_string": clienthello.ja3_string(hello),
        "ja4": clienthello.ja4(hello, transport),
        "ja4_r": clienthello.ja4_r(hello, transport),
        "length": len(hello.raw),
    }


def _transport_parameters(hello: clienthello.ClientHello) -> list[dict[str, Any]] | None:
    """The QUIC transport parameters, each with its RFC name and decoded value.

    A parameter whose value does not have its type's shape keeps its bytes (hex) and
    says why under ``error``; a list that cannot be split is one entry with an error.
    """
    try:
        params = hello.quic_transport_parameters
    except clienthello.MalformedHello as exc:
        return [{"id": None, "name": "(unreadable)", "value": None, "error": str(exc)}]
    if params is None:
        return None
    out = []
    for param in params:
        entry: dict[str, Any] = {"id": param.id, "name": param.name}
        try:
            entry["value"] = _json_value(param.decoded)
        except clienthello.MalformedHello as exc:
            entry["value"], entry["error"] = param.value.hex(), exc.reason
        out.append(entry)
    return out


def _json_value(value: Any) -> Any:
    """A decoded transport parameter as JSON: bytes as hex, a preferred_address as a dict."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, clienthello.PreferredAddress):
        return {name: _json_value(v) for name, v in value._asdict().items()}
    if isinstance(value, tuple):  # version_information: the chosen version, then the others
        return list(value)
    return value


def _parameter_text(item: dict[str, Any]) -> str:
    """One transport parameter as a text line (versions in hex, as QUIC writes them)."""
    if item["id"] is None:
        return f"    {item['error']}"
    value = item["value"]
    if item.get("error"):
        shown = f"{value or '(empty)'}  (malformed: {item['error']})"
    elif isinstance(value, list):
        shown = ", ".join(f"0x{v:08x}" for v in value)
    elif isinstance(value, dict):
        shown = " ".join(f"{k}={v}" for k, v in value.items())
    elif value is True:
        shown = "(present)"
    else:
        shown = str(value) if value != "" else "(empty)"
    return f"    0x{item['id']:04x}  {item['name']}  {shown}"


def _format_text(info: dict[str, Any]) -> str:
    lines = []
    for key, value in info.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{key} ({len(value)}):")
            for item in value:
                if "id" in item:
                    lines.append(_parameter_text(item))
                elif "value" in item:
                    lines.append(f"    0x{item['value']:04x}  {item['name']}")
                else:
                    lines.append(
                        f"    0x{item['type']:04x}  {item['name']}  ({item['length']} bytes)"
                    )
        elif isinstance(value, dict) and set(value) == {"value", "name"}:
            lines.append(f"{key}: 0x{value['value']:04x} ({value['name']})")
        else:
            shown = "(absent)" if value is None else value
            if isinstance(value, list):
                shown = ", ".join(str(v) for v in value) if value else "(empty)"
            lines.append(f"{key}: {shown}")
    return "\n".join(lines)


@click.command()
@click.argument("sources", nargs=-1, metavar="[FILE...]")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text for people, json for scripts.",
)
def hello(sources: tuple[str, ...], fmt: str) -> None:
    """Decode one ClientHello from FILE (or standard input) and print every field.

    The input is raw bytes or hex text: TLS records (starting 16 03 ..), a bare
    handshake message (starting 01 ..), a QUIC client Initial datagram (a long
    header of a known version; decrypted with its Initial keys) or a DTLS
    datagram (starting 16 fe ..). Fields are shown with their IANA names, the
    QUIC transport parameters decoded, followed by the JA3 and JA4 fingerprints.

    A hello that spans several packets is given as several FILEs: a QUIC hello
    over two or three Initials (Chrome's post-quantum hellos) or DTLS fragments
    over datagrams, in any order; TLS over TCP segments, in the order sent.

    \b
    Examples:
      sniinspect hello tests/data/curl.bin
      xxd -p hello.bin | sniinspect hello --format json -
      sniinspect hello initial.hex               a QUIC Initial, as copied from Wireshark
      sniinspect hello first.hex second.hex      a QUIC hello over two Initials

    Exit status: 0 when the hello was decoded, 2 when the input is not a
    complete, well-formed ClientHello (the reason, field and offset are printed).
    """
    sources = sources or ("-",)
    if sources.count("-") > 1:
        raise _InputError("standard input (-) can be read once only")
    label = ", ".join(sources)
    pieces = [_read_input(source) for source in sources]
    data = pieces[0]
    transport: str | None = None
    facts: dict[str, Any] = {}
    try:
        if _is_quic_long_header(data):
            transport = "quic"
            parsed, facts = _quic_hello(pieces)
        elif data[:1] == b"\x16" and data[1:2] in (b"\xfe", b"\x01"):
            transport = "dtls"
            parsed = _dtls_hello(pieces)
        elif data[:1] == b"\x01":
            parsed = clienthello.parse_handshake(b"".join(pieces))
        else:
            parsed = clienthello.parse(b"".join(pieces))
    except clienthello.NeedMoreData as exc:
        raise _InputError(
            f"{label}: incomplete ClientHello ({sum(map(len, pieces))} bytes; "
            f"{exc.needed} more needed at least)"
        ) from None
    except clienthello.ClientHelloError as exc:
        raise _InputError(f"{label}: {exc}") from None
    info = {**describe(parsed, transport), **facts}
    if fmt == "json":
        click.echo(json.dumps(info, indent=2))
    else:
        click.echo(_format_text(info))


def _is_quic_long_header(data: bytes) -> bool:
    """Long-header and fixed bits set, and a version with known Initial keys."""
    if len(data) < 7 or data[0] & 0xC0 != 0xC0:
        return False
    from clienthello import quic  # loads `cryptography`: only for QUIC input

    return int.from_bytes(data[1:5], "big") in quic.VERSIONS


def _quic_hello(datagrams: list[bytes]) -> tuple[clienthello.ClientHello, dict[str, Any]]:
    """Decrypt a connection's client Initial datagrams; the hello and the connection's facts."""
    from clienthello import quic

    reader = quic.InitialReader()
    found = _feed_until_hello(reader.feed, datagrams)
    if found is None:
        raise _InputError(
            f"the ClientHello continues in further Initial packets ({_given(datagrams)} "
            f"bytes of its CRYPTO stream up to offset {reader.crypto_bytes}, not all of "
            "it): give the connection's other client Initials too (sniinspect hello FIRST "
            "SECOND ...), or the capture to `sniinspect pcap`"
        )
    spec = quic.VERSIONS[found.version]
    return found.hello, {
        "quic_version": f"0x{found.version:08x} ({spec.name})",
        "quic_original_dcid": found.original_destination_connection_id.hex(),
        "quic_scid": found.source_connection_id.hex(),
        "quic_token_length": len(found.token),
        "quic_packets": found.packets,
        "quic_crypto_frames": found.crypto_frames,
    }


def _dtls_hello(datagrams: list[bytes]) -> clienthello.ClientHello:
    """The ClientHello of a flow's first DTLS datagrams (its fragments in any order)."""
    found = _feed_until_hello(clienthello.DtlsReader().feed, datagrams)
    if found is None:
        raise _InputError(
            f"the DTLS ClientHello is fragmented over further datagrams ({_given(datagrams)} "
            "only some of its fragments): give them all, in any order, or the capture to "
            "`sniinspect pcap`"
        )
    return found.hello


def _feed_until_hello(
    feed: Callable[[bytes], _Found | None], datagrams: list[bytes]
) -> _Found | None:
    """Feed a reader the datagrams in turn; the first hello it returns, else None."""
    for datagram in datagrams:
        found = feed(datagram)
        if found is not None:
            return found
    return None


def _given(datagrams: list[bytes]) -> str:
    """``"the datagram given holds"``, ``"the 2 datagrams given hold"``."""
    if len(datagrams) == 1:
        return "the datagram given holds"
    return f"the {len(datagrams)} datagrams given hold"


def main() -> None:
    """Entry point for `python -m sniinspect`."""
    cli()
