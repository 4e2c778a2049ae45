"""`import clienthello` stays sans-I/O: no socket, asyncio, time, dpkt, scapy or click.

Checked in a fresh interpreter (this test process has them all loaded), against what the
bare interpreter had loaded before the import, and again after using every entry point.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import load

ROOT = Path(__file__).resolve().parents[1]
BANNED = ["socket", "asyncio", "selectors", "time", "dpkt", "scapy", "click", "ssl"]

PROBE = r"""
import json, sys
before = set(sys.modules)
import clienthello
after_import = set(sys.modules)
data = bytes.fromhex(sys.argv[1])
hello = clienthello.parse(data)
clienthello.sni(data)
clienthello.Reader().feed(data)
clienthello.ja3(hello); clienthello.ja4(hello); clienthello.ja4_r(hello)
clienthello.cipher_suite_name(0x1301); clienthello.extension_name(0)
clienthello.group_name(29); clienthello.signature_scheme_name(0x0403)
clienthello.version_name(0x0304)
after_use = set(sys.modules)
print(json.dumps({
    "before": sorted(before),
    "import": sorted(after_import - before),
    "use": sorted(after_use - before),
    "file": clienthello.__file__,
}))
"""


def _probe() -> dict[str, list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, load("chromium").hex()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def _banned(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in BANNED]


def test_import_loads_no_io_modules() -> None:
    result = _probe()
    assert Path(result["file"]).resolve().parent == ROOT / "clienthello"  # type: ignore[arg-type]
    assert _banned(result["import"]) == []


def test_using_it_loads_no_io_modules() -> None:
    assert _banned(_probe()["use"]) == []


# The one exception: QUIC's Initial keys need AES, so the QUIC modules use `cryptography`;
# `import clienthello` does not load them (the probes above check that).
QUIC_MODULES = {"quic.py", "_quic_crypto.py", "_quic_packet.py", "_quic_build.py"}


def test_library_source_imports_only_the_standard_library() -> None:
    """A static check too, so a lazy import inside a rare branch is caught."""
    import ast

    stdlib = set(sys.stdlib_module_names)
    for path in sorted((ROOT / "clienthello").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "cryptography" and path.name in QUIC_MODULES:
                    continue
                assert top == "clienthello" or top in stdlib, f"{path.name}: imports {name}"
                assert top not in BANNED, f"{path.name}: imports {name}"


def test_only_the_quic_modules_import_cryptography() -> None:
    """`clienthello.quic` loads `cryptography`; `import clienthello` alone does not."""
    probe = (
        "import sys, clienthello; a = 'cryptography' in sys.modules; "
        "import clienthello.quic; print(a, 'cryptography' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "True"]
