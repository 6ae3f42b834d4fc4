"""The shape of the code (docs/architecture.md): imports go one way (CLIs -> experiments
sub-packages -> jaxdiff) with no cycle, no private name crosses a module, no source file
passes 400 lines, and importing the CLIs registers no flags and changes no global state."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("jaxdiff", "experiments", "configs")
CLIS = ("train", "sample", "evaluate", "distill", "benchmark", "fsdp_memory")
MAX_LINES = 400


def modules() -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every .py file of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(name: str, path: pathlib.Path, known: dict) -> list[tuple[str, str | None, bool]]:
    """(imported module, imported name or None, at module level) for each project import."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []

    def visit(node, module_level):
        for child in ast.iter_child_nodes(node):
            level = module_level and (id(child) in top or isinstance(child, ast.If | ast.Try))
            if isinstance(child, ast.Import):
                out.extend((a.name, None, level) for a in child.names if a.name in known)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level
                                                     + 1] + ([base] if base else []))
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    if sub in known:
                        out.append((sub, None, level))
                    elif base in known:
                        out.append((base, alias.name, level))
            visit(child, level and not isinstance(child, ast.FunctionDef | ast.ClassDef |
                                                   ast.AsyncFunctionDef))

    visit(tree, True)
    return out


def private_uses(name: str, path: pathlib.Path, known: dict) -> list[str]:
    """``module._name`` attribute uses of another project module imported under an alias."""
    tree = ast.parse(path.read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in known and a.name != name:
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in known and full != name:
                    aliases[a.asname or a.name] = full
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            found.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    return found


def graph(module_level_only: bool) -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m, _, level in imports(name, path, known)
                   if m != name and (level or not module_level_only)
                   and not name.startswith(m + ".")}  # a package's own __init__
            for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycle():
    assert cycles(graph(module_level_only=False)) == []


def test_no_private_name_crosses_a_module():
    known = modules()
    found = []
    for name, path in known.items():
        found += [f"{name} imports {m}.{n}" for m, n, _ in imports(name, path, known)
                  if n and n.startswith("_") and not n.startswith("__")
                  and not name.startswith(m + ".") and m != name]
        found += private_uses(name, path, known)
    # A package's private module (experiments/runs/_x.py) is shared inside that package.
    found = [f for f in found if not _same_package_private(f)]
    assert found == []


def _same_package_private(line: str) -> bool:
    user, _, used = line.partition(" imports ") if " imports " in line else \
        line.partition(" uses ")
    target = used.rpartition(".")[0]
    return any(part.startswith("_") for part in target.split(".")) and \
        user.rpartition(".")[0] == target.rpartition(".")[0]


def test_imports_go_one_way():
    edges = graph(module_level_only=False)
    wrong = []
    for name, targets in edges.items():
        for target in targets:
            if name.startswith("jaxdiff") and not target.startswith("jaxdiff"):
                wrong.append(f"{name} -> {target}")  # the library imports no experiment
            if (target.startswith("experiments.") and target.split(".")[1] in CLIS
                    and target.count(".") == 1 and name != target):
                wrong.append(f"{name} -> {target}")  # nothing imports a CLI
    assert wrong == []


def test_no_source_file_passes_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_experiments_top_level_holds_the_clis_only():
    top = sorted(p.stem for p in (ROOT / "experiments").glob("*.py") if p.stem != "__init__")
    assert top == sorted(CLIS)


def test_importing_the_clis_registers_no_flag_and_keeps_the_plot_backend():
    code = (
        "import matplotlib\n"
        "before = matplotlib.get_backend()\n"
        "from absl import flags\n"
        "registered = set(flags.FLAGS)\n"
        f"mods = [__import__('experiments.' + c, fromlist=['x']) for c in {CLIS!r}]\n"
        "# Libraries may register their own flags when imported (absl.logging's); ours not.\n"
        "ours = [n for n in set(flags.FLAGS) - registered if any(\n"
        "    p in flags.FLAGS.find_module_defining_flag(n) for p in ('experiments', 'jaxdiff'))]\n"
        "assert not ours, f'registered at import: {ours}'\n"
        "assert matplotlib.get_backend() == before\n"
        "for m in mods:\n"
        "    m.define_flags()  # one after another, in one process\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=_env())
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]


def _env():
    import os

    # A non-default backend that a module's matplotlib.use("Agg") would replace.
    return dict(os.environ, MPLBACKEND="svg")
