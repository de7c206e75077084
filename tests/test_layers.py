"""The tree shows the architecture: imports point down the layers (docs/architecture.md)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: package prefix -> layer; a module may import only its own layer or lower ones
LAYERS = {
    "checkid.errors": 0,
    "checkid.exitcodes": 0,
    "checkid.throttle": 0,
    "checkid.config": 0,
    "checkid.engine": 1,
    "checkid.policy": 1,
    "checkid.protocols": 2,
    "checkid.runtime": 3,
    "checkid.cli": 4,
    "checkid.__main__": 4,
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (TYPE_CHECKING blocks included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _layer(module: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return None if best is None else best[1]


def _package_modules(top: str) -> dict[str, Path]:
    return {_module(p): p for p in sorted((ROOT / top).rglob("*.py"))}


def test_layers_imports_point_down_only() -> None:
    upward = []
    for module, path in _package_modules("checkid").items():
        own = _layer(module)
        if own is None:
            continue
        for name in _imports(path):
            target = _layer(name)
            if target is not None and target > own:
                upward.append(f"{module} imports {name}")
    assert upward == []


def test_layers_every_checkid_module_has_a_layer() -> None:
    modules = [m for m in _package_modules("checkid") if m != "checkid"]
    assert [m for m in modules if _layer(m) is None] == []


def test_layers_no_import_cycles_between_checkid_modules() -> None:
    modules = _package_modules("checkid")
    graph = {m: {n for n in _imports(p) if n in modules and n != m} for m, p in modules.items()}
    # a package's __init__ re-exporting its own modules is not a cycle worth naming
    for m in graph:
        graph[m] = {n for n in graph[m] if not m.startswith(n + ".")}
    cycles = []
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_layers_shipped_code_never_imports_tests_or_bench() -> None:
    offenders = []
    for top in ("checkid", "testsupport", "bench"):
        for module, path in _package_modules(top).items():
            for name in _imports(path):
                banned = ("tests", "bench", "testsupport") if top == "checkid" else ("tests",)
                if name.split(".")[0] in banned and not (top == "bench" and name.startswith("bench")):
                    offenders.append(f"{module} imports {name}")
    assert offenders == []


def test_layers_every_checkid_exception_derives_from_the_one_root() -> None:
    import importlib
    import inspect

    from checkid.errors import CheckidError

    outside = []
    for module in _package_modules("checkid"):
        if module.startswith("checkid.policy") or module == "checkid.__main__":
            continue
        for name, obj in vars(importlib.import_module(module)).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == module
                    and not name.startswith("_") and not issubclass(obj, CheckidError)):
                outside.append(f"{module}.{name}")
    assert outside == []
