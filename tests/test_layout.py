"""The package's layers: core (plain PyTorch) <- pipeline (Thinc/spaCy) <- tools.

Checked on the source (imports as written), and on what importing costs.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spacy_earlyexit"
LAYERS = ("core", "pipeline", "tools")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, path.name == "__init__.py"


def _imports(name, path, is_package):
    """(imported module, imported names) for every import in the file, with
    relative imports made absolute."""
    tree = ast.parse(path.read_text(encoding="utf8"))
    package = name if is_package else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, [alias.name for alias in node.names]


def _layer(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "spacy_earlyexit" and parts[1] in LAYERS else None


def test_core_imports_neither_spacy_nor_thinc():
    for name, path, is_package in _modules():
        if _layer(name) != "core":
            continue
        for module, _ in _imports(name, path, is_package):
            assert module.split(".")[0] not in ("spacy", "thinc", "spacy_transformers"), (name, module)


def test_imports_point_one_way_core_pipeline_tools():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    for name, path, is_package in _modules():
        mine = _layer(name)
        if mine is None:
            continue
        for module, _ in _imports(name, path, is_package):
            theirs = _layer(module)
            if theirs is not None:
                assert rank[theirs] <= rank[mine], f"{name} imports {module}"


def test_no_module_imports_another_modules_private_names():
    for name, path, is_package in _modules():
        for module, names in _imports(name, path, is_package):
            if not module.startswith("spacy_earlyexit") or module == name:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            assert not private, f"{name} imports {private} from {module}"


def test_modules_import_no_cycle():
    graph = {}
    names = {name for name, _, _ in _modules()}
    for name, path, is_package in _modules():
        targets = set()
        for module, imported in _imports(name, path, is_package):
            for candidate in [module] + [f"{module}.{n}" for n in imported]:
                if candidate in names and candidate != name and not candidate.count(".") < 2:
                    targets.add(candidate)
        graph[name] = targets
    visiting, done = set(), set()

    def visit(node, trail):
        if node in done:
            return
        assert node not in visiting, " -> ".join(trail + [node])
        visiting.add(node)
        for target in graph.get(node, ()):
            visit(target, trail + [node])
        visiting.discard(node)
        done.add(node)

    for node in graph:
        visit(node, [])


def test_importing_the_package_or_its_cli_loads_no_transformers_and_changes_no_environment():
    code = (
        "import os, sys\n"
        "before = dict(os.environ)\n"
        "import spacy_earlyexit, spacy_earlyexit.tools.cli\n"
        "heavy = [m for m in ('transformers', 'spacy_transformers', 'matplotlib', 'ray') if m in sys.modules]\n"
        "changed = sorted(k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k))\n"
        "print(heavy, changed)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"


@pytest.mark.parametrize("command", [["info"]])
def test_spacy_cli_with_the_plugin_installed_imports_no_transformers(command):
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['spacy', *{command!r}]\n"
        "try:\n"
        "    runpy.run_module('spacy', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = [m for m in ('spacy_earlyexit', 'transformers', 'spacy_transformers') if m in sys.modules]\n"
        "print('LOADED', loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = [row for row in out.stdout.splitlines() if row.startswith("LOADED")][-1]
    assert "transformers" not in line and "spacy_transformers" not in line
