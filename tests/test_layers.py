"""The package's layers: imports only point down, there are no import circles, the ops layer needs no transformers,
and library code never imports the tiny test factories."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = {"longctx_adapter": ROOT / "longctx_adapter", "longctx_adapter.patches": ROOT / "patches",
           "longctx_adapter.eval": ROOT / "eval"}  # fmt: skip

# Lowest first. A module may import modules of its own layer or of lower layers only.
LAYERS = [
    ("errors", ["longctx_adapter.errors"]),
    ("ops", ["longctx_adapter.ops"]),
    # model families: declarations, registry, patches (torch only at import; transformers inside functions)
    ("families", ["longctx_adapter.family", "longctx_adapter.registry", "longctx_adapter.shadow",
                  "longctx_adapter.patches"]),
    ("config", ["longctx_adapter.config", "longctx_adapter.config_text", "longctx_adapter.compat"]),
    # the vLLM plugin: runs beside vLLM's pinned transformers (< 5.20), so never above ops/config/errors
    ("serving", ["longctx_adapter.vllm_plugin"]),
    ("hooks", ["longctx_adapter.hooks", "longctx_adapter.saving"]),
    ("api", ["longctx_adapter.api", "longctx_adapter.streaming", "longctx_adapter.__init__"]),
    ("testing", ["longctx_adapter.testing"]),
    ("tools", ["longctx_adapter.profiling", "longctx_adapter.eval", "longctx_adapter.demo"]),
    ("cli", ["longctx_adapter.cli"]),
]
# Library code that must not reach the tiny factories (they are for tests, demos, benchmarks and training scripts).
NO_TESTING = ["longctx_adapter.ops", "longctx_adapter.config", "longctx_adapter.hooks", "longctx_adapter.patches",
              "longctx_adapter.saving", "longctx_adapter.api", "longctx_adapter.profiling", "longctx_adapter.cli"]  # fmt: skip


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts]
            name = ".".join([package, *parts])
            if name.endswith(".__init__") and name != "longctx_adapter.__init__":
                name = name[: -len(".__init__")]
            out[name] = path
    return out


MODULES = _modules()


def _layer(name: str) -> int:
    best, level = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    assert level is not None, f"{name} belongs to no layer; add it to LAYERS"
    return level


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """Package modules this module imports (at any depth of the file, lazy imports included)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and target != "longctx_adapter":
                found.add(target)
    return found


# Import edges still being untangled (each one is a defect; the list only shrinks).
KNOWN_BAD_EDGES: set[tuple[str, str]] = set()
GRAPH = {
    name: {t for t in _imports(name, path) if (name, t) not in KNOWN_BAD_EDGES} for name, path in MODULES.items()
}


def test_every_module_has_a_layer():
    for name in MODULES:
        _layer(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    upward = sorted(t for t in GRAPH[name] if _layer(t) > _layer(name))
    assert not upward, f"{name} (layer {LAYERS[_layer(name)][0]}) imports higher layers: {upward}"


def test_library_code_never_imports_the_test_factories():
    offenders = sorted(
        (name, target)
        for name, targets in GRAPH.items()
        if any(name == p or name.startswith(p + ".") for p in NO_TESTING)
        for target in targets
        if target.startswith("longctx_adapter.testing")
    )
    assert not offenders


def test_no_import_circles():
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt) :] + [nxt])
                return True
            if nxt not in state and visit(nxt, stack + [nxt]):
                return True
        state[node] = 2
        return False

    for name in sorted(GRAPH):
        if name not in state and visit(name, [name]):
            break
    assert not cycle, " -> ".join(cycle)


def test_ops_and_config_import_without_transformers():
    script = (
        "import sys; import longctx_adapter.ops, longctx_adapter.config, longctx_adapter.config_text\n"
        "import pkgutil, importlib, longctx_adapter.ops as ops\n"
        "for m in pkgutil.walk_packages(ops.__path__, 'longctx_adapter.ops.'): importlib.import_module(m.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'accelerate')))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in GRAPH[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("longctx_adapter.vllm_plugin")))
def test_vllm_plugin_never_reaches_the_transformers_hooks(name):
    """vLLM CPU pins transformers < 5.20; hooks/api/saving/patches need >= 5.24 (they check it on import)."""
    banned = ("longctx_adapter.hooks", "longctx_adapter.api", "longctx_adapter.saving", "longctx_adapter.patches",
              "longctx_adapter.testing", "longctx_adapter.__init__")  # fmt: skip
    assert not sorted(t for t in _reachable(name) if t.startswith(banned))


def test_vllm_plugin_pure_modules_import_without_transformers():
    script = (
        "import sys; import longctx_adapter.vllm_plugin.settings, longctx_adapter.vllm_plugin.layout\n"
        "import longctx_adapter.vllm_plugin.rotary, longctx_adapter.vllm_plugin\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'vllm')))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_import_longctx_adapter_is_light():
    """`import longctx_adapter` loads no layer until a public name is used."""
    script = "import sys, longctx_adapter; print(sorted(m for m in sys.modules if m.startswith('longctx_adapter')))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "['longctx_adapter']"


def test_family_knowledge_reads_without_transformers():
    """Every family declaration, the registry and the presets load with torch alone (a plugin running under another
    transformers release can read them)."""
    script = (
        "import sys\n"
        "from longctx_adapter.config import AdapterConfig, known_visual_window\n"
        "from longctx_adapter.registry import family_for, supported_models\n"
        "for t in supported_models():\n"
        "    family_for(t); AdapterConfig.preset(t); known_visual_window(t)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'accelerate')))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
