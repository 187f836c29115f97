"""The architecture's import rules (docs/architecture.md), checked on the source with ast.

- `jego_call` never imports `bridge`, except the composition root (`jego_call/cli/`).
- pyVoIP is imported in exactly one module: `bridge/pyvoip_leg.py`.
- [pure] modules import no I/O: no asyncio, socket, threading, time, aiohttp, aiortc, av, pyVoIP.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IO_MODULES = {"asyncio", "socket", "threading", "time", "selectors", "subprocess", "aiohttp", "aiortc", "av",
              "pyVoIP", "aioice"}
PURE = [
    "jego_call/call/state.py",
    "jego_call/call/machine.py",
    "jego_call/signalling/messages.py",
    "jego_call/messaging/protocol.py",
    "jego_call/numbering.py",
    "bridge/sip/message.py",
    "bridge/sip/uri.py",
    "bridge/sip/headers.py",
    "bridge/sip/status.py",
    "bridge/sip/errors.py",
    "bridge/sip/auth.py",
    "bridge/sip/transaction.py",
    "bridge/sip/dialog.py",
    "bridge/sip/endpoint.py",
    "bridge/sip/sdp.py",
    "bridge/rtp/packet.py",
    "bridge/rtp/g711.py",
    "bridge/rtp/session.py",
    "bridge/rtp/dtmf.py",
    "bridge/carrier/scenarios.py",
    "bridge/causes.py",
]


def imports(path: Path) -> set[str]:
    """Top-level module names `path` imports (absolute imports only; relative ones stay inside)."""
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def relative_reaches_bridge(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    depth = len(path.relative_to(ROOT / "jego_call").parts) - 1
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > depth + 1:
            return True
    return False


def py_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_jego_call_never_imports_bridge_outside_the_cli() -> None:
    offenders = [
        str(p.relative_to(ROOT)) for p in py_files("jego_call")
        if "cli" not in p.relative_to(ROOT / "jego_call").parts[:1]
        and ("bridge" in imports(p) or relative_reaches_bridge(p))
    ]
    assert offenders == []


def test_pyvoip_is_imported_in_one_module_only() -> None:
    users = [str(p.relative_to(ROOT)) for pkg in ("jego_call", "bridge", "scripts") for p in (ROOT / pkg).rglob("*.py")
             if "pyVoIP" in imports(p)]
    assert set(users) <= {"bridge/pyvoip_leg.py"}, users


@pytest.mark.parametrize("rel", PURE)
def test_pure_modules_do_no_io(rel: str) -> None:
    path = ROOT / rel
    if not path.exists():
        pytest.fail(f"{rel} is listed as pure but does not exist: update PURE")
    assert imports(path) & IO_MODULES == set()


def test_checker_sees_violations(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import asyncio\nfrom pyVoIP.VoIP import VoIPPhone\nfrom bridge.sip import message\n")
    assert {"asyncio", "pyVoIP", "bridge"} <= imports(bad)
