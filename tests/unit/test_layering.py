"""The architecture's import rules (docs/architecture.md "Rooms"), checked on the source with ast.

Imports are followed transitively through our own modules (every import statement, also those
inside functions), so a rule cannot be dodged by going through a third module.

- `jego_call` never reaches `bridge`, except the composition root (`jego_call/cli/`).
- The protocol core (`bridge/sip`, `bridge/rtp`) reaches nothing of `jego_call` and no I/O.
- pyVoIP is imported only inside `bridge/gateway/pyvoip/`, and only the gateway reaches that package.
- [pure] modules reach no I/O module (asyncio, socket, threading, time, os, aiohttp, aiortc, av,
  pyVoIP ...), no impure module of ours, and call no clock and open no file.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("jego_call", "bridge")
IO_MODULES = {"asyncio", "socket", "threading", "time", "selectors", "subprocess", "os", "io", "shutil",
              "pathlib", "tempfile", "aiohttp", "aiortc", "av", "pyVoIP", "aioice", "sqlite3", "wave",
              "multiprocessing", "concurrent", "signal", "urllib.request", "http.client", "http.server",
              "logging", "datetime", "glob"}
# Whole packages that are pure, then single pure modules elsewhere.
PURE_PACKAGES = ("bridge/sip", "bridge/rtp")
PURE_MODULES = (
    "jego_call/call/state.py",
    "jego_call/call/machine.py",
    "jego_call/call/reasons.py",
    "jego_call/call/dialplan.py",
    "jego_call/signalling/messages.py",
    "jego_call/signalling/hub_core.py",
    "jego_call/messaging/protocol.py",
    "jego_call/groups/names.py",
    "jego_call/groups/protocol.py",
    "jego_call/groups/calls.py",
    "jego_call/numbering.py",
    "jego_call/area_codes.py",
    "jego_call/errors.py",
    "jego_call/schema.py",
    "jego_call/limits.py",
    "jego_call/billing/__init__.py",
    "jego_call/billing/money.py",
    "jego_call/billing/rates.py",
    "jego_call/billing/fraud.py",
    "jego_call/billing/fraud_config.py",
    "jego_call/billing/policy.py",
    "jego_call/billing/refusal.py",
    "jego_call/quality.py",
    "jego_call/media/impair.py",
    "bridge/carrier/scenarios.py",
    "bridge/carrier/registrar.py",
    "bridge/gateway/legs.py",
    "bridge/gateway/call_core.py",
    "bridge/gateway/conference_core.py",
)
# Calls that read a clock or touch files: never in a pure module.
BANNED_CALLS = {"open", "now", "utcnow", "today", "monotonic", "perf_counter", "read_text", "read_bytes",
                "write_text", "write_bytes", "getcwd", "sleep"}


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(name: str, root: Path = ROOT) -> Path | None:
    base = root.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.exists():
            return cand
    return None


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (imports there never run)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", getattr(child.test, "attr", "")) == "TYPE_CHECKING":
                todo.extend(child.orelse)
                continue
            todo.append(child)
    return out


@cache
def direct_imports(path: Path, root: Path = ROOT) -> frozenset[str]:
    """Absolute dotted names `path` imports at run time (relative imports resolved), anywhere in
    the file, inside functions too; `if TYPE_CHECKING:` blocks are left out."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            # `from pkg import sub` may name a submodule
            out.update(f"{mod}.{alias.name}" for alias in node.names if module_path(f"{mod}.{alias.name}", root))
    return frozenset(out)


def closure(path: Path, root: Path = ROOT) -> set[str]:
    """Every module reached from `path` through our own modules (ours and third-party names)."""
    seen: set[str] = set()
    todo = [path]
    done: set[Path] = set()
    while todo:
        p = todo.pop()
        if p in done:
            continue
        done.add(p)
        for name in direct_imports(p, root):
            seen.add(name)
            if name.split(".")[0] in OURS:
                # importing a.b.c runs a/__init__ and a/b/__init__ too
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    target = module_path(".".join(parts[:i]), root)
                    if target is not None:
                        todo.append(target)
    return seen


def py_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def pure_files() -> list[Path]:
    return py_files(*PURE_PACKAGES) + [ROOT / m for m in PURE_MODULES]


def is_pure(name: str) -> bool:
    path = module_path(name)
    return path is not None and path in set(pure_files())


def top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def io_reached(names: set[str]) -> set[str]:
    """The I/O modules among `names` (a module or anything inside it)."""
    return {m for m in IO_MODULES for n in names if n == m or n.startswith(m + ".")}


def test_jego_call_never_reaches_bridge_outside_the_cli() -> None:
    offenders = {rel(p): sorted(n for n in closure(p) if n.split(".")[0] == "bridge")
                 for p in py_files("jego_call") if "cli" not in p.relative_to(ROOT / "jego_call").parts[:1]}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_protocol_core_reaches_no_application() -> None:
    offenders = {rel(p): sorted(n for n in closure(p) if n.split(".")[0] == "jego_call"
                                or n.startswith(("bridge.gateway", "bridge.carrier", "bridge.net")))
                 for p in py_files(*PURE_PACKAGES)}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_pyvoip_is_imported_in_one_package_only() -> None:
    users = [rel(p) for p in py_files("jego_call", "bridge", "scripts", "tests")
             if "pyVoIP" in top(set(direct_imports(p)))]
    assert users and all(u.startswith("bridge/gateway/pyvoip/") for u in users), users
    reachers = [rel(p) for p in py_files("jego_call", "bridge")
                if any(n.startswith("bridge.gateway.pyvoip") for n in direct_imports(p))
                and not rel(p).startswith("bridge/gateway/")]
    assert reachers == []


def import_cycles(files: list[Path], root: Path = ROOT) -> list[list[str]]:
    """Cycles in the graph module -> module it imports (our modules only; the edge to a parent
    package that `import a.b.c` also runs is left out: Python runs it first)."""
    graph: dict[str, set[str]] = {}
    for p in files:
        me = module_name(p, root)
        graph[me] = {n for n in direct_imports(p, root) if n.split(".")[0] in OURS and module_path(n, root)
                     and not me.startswith(n + ".") and n != me}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycles() -> None:
    """No circle in our imports, counting imports inside functions (they must not hide one)."""
    assert import_cycles(py_files(*OURS)) == []


def test_cycle_checker_sees_a_cycle(tmp_path: Path) -> None:
    (tmp_path / "bridge").mkdir()
    (tmp_path / "bridge/__init__.py").write_text("")
    (tmp_path / "bridge/a.py").write_text("from . import b\n")
    (tmp_path / "bridge/b.py").write_text("def f():\n    from .a import x\n")
    files = sorted((tmp_path / "bridge").glob("*.py"))
    assert import_cycles(files, tmp_path) == [["bridge.a", "bridge.b", "bridge.a"]]


@pytest.mark.parametrize("path", pure_files(), ids=rel)
def test_pure_modules_reach_no_io(path: Path) -> None:
    assert path.exists(), f"{rel(path)} is listed as pure but does not exist"
    reached = closure(path)
    assert io_reached(reached) == set()
    impure = sorted(n for n in reached if n.split(".")[0] in OURS and module_path(n) is not None
                    and not is_pure(n) and module_path(n) != ROOT / n.split(".")[0] / "__init__.py"
                    and module_path(n).name != "__init__.py")  # type: ignore[union-attr]
    assert impure == []


@pytest.mark.parametrize("path", pure_files(), ids=rel)
def test_pure_modules_call_no_clock_and_open_no_file(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    calls = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if name in BANNED_CALLS:
                calls.add(f"{name}() at line {node.lineno}")
    assert calls == set()


def test_checker_sees_violations(tmp_path: Path) -> None:
    """The checks can fail: a module reaching asyncio through a helper module is caught."""
    for d in ("bridge", "bridge/sip", "bridge/net"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
        (tmp_path / d / "__init__.py").write_text("")
    (tmp_path / "bridge/net/helper.py").write_text("import asyncio\n")
    probe = tmp_path / "bridge/sip/probe.py"
    probe.write_text("def f():\n    from ..net import helper\n    return open('x')\n")
    reached = closure(probe, tmp_path)
    assert io_reached(reached) == {"asyncio"} and "bridge.net.helper" in reached
    tree = ast.parse(probe.read_text())
    assert any(isinstance(n, ast.Call) and getattr(n.func, "id", "") in BANNED_CALLS for n in ast.walk(tree))
