"""The import layers of ../shared/DESIGN.md ("Layers"), read from the source with ast.

Every import counts, function-local ones too. An arrow the layer order forbids, or a module
on an import cycle, fails with the file, line and import named (docs/architecture.md).
"""

import ast
import os
from typing import Dict, Iterable, List, Set, Tuple

from tests.conftest import REPO

# Lower may not import higher. config (with its Megatron flag table), errors, utils and the C++ helpers sit below
# everything.
RANK = {"config": 0, "megatron_flags": 0, "errors": 0, "utils": 0, "_helpers": 0, "kernels": 1, "parallel": 2,
        "model": 3, "data": 4,
        "checkpoint": 5, "training": 6, "posttrain": 7, "eval": 7, "hf": 7, "serve": 8}
DATA_TOOLS_MAY_USE = {"data", "config", "errors", "utils", "_helpers"}


Edge = Tuple[str, str, str, int]  # importer module, imported module, file, line


def module_name(path: str) -> str:
    name = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def imports_of(path: str) -> List[Edge]:
    """Every import in the file, at any depth, with relative ones resolved."""
    me = module_name(path)
    package = me if path.endswith("__init__.py") else me.rpartition(".")[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(me, a.name, path, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            # `from megalite.data import tokenizer` imports the module megalite.data.tokenizer
            out += [(me, f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base, path, node.lineno)
                    for a in node.names]
    return sorted(set(out))


def _is_module(name: str) -> bool:
    path = os.path.join(REPO, *name.split("."))
    return os.path.isfile(path + ".py") or os.path.isdir(path)


def all_edges() -> List[Edge]:
    edges = []
    for top in ("megalite", "data_tools"):
        for folder, _, files in os.walk(os.path.join(REPO, top)):
            edges += [e for f in sorted(files) if f.endswith(".py") for e in imports_of(os.path.join(folder, f))]
    return edges


def area(module: str) -> str:
    """megalite.training.trainer -> training; megalite.config -> config."""
    return module.split(".")[1] if module.count(".") else module


def forbidden_arrows(edges: Iterable[Edge]) -> List[str]:
    bad = []
    for me, target, path, line in edges:
        if not target.startswith("megalite."):
            continue
        to = area(target)
        if me.startswith("data_tools"):
            wrong = to not in DATA_TOOLS_MAY_USE
        else:
            wrong = RANK[to] > RANK[area(me)]
        if wrong:
            bad.append(f"{os.path.relpath(path, REPO)}:{line}: {me} imports {target} ({area(me)} is below {to})")
    return bad


def cyclic_modules(edges: Iterable[Edge]) -> Set[str]:
    """Modules of megalite/ that lie on an import cycle (Tarjan's strongly connected components)."""
    graph: Dict[str, Set[str]] = {}
    for me, target, _, _ in edges:
        if me.startswith("megalite") and target.startswith("megalite."):
            graph.setdefault(me, set()).add(target)
    modules = set(graph)
    graph = {m: {t for t in ts if t in modules and t != m} for m, ts in graph.items()}
    index, low, stack, on_stack, out = {}, {}, [], set(), set()

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.update(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_goes_up_a_layer():
    assert forbidden_arrows(all_edges()) == []


def test_no_import_cycle():
    edges = all_edges()
    cyclic = cyclic_modules(edges)
    imports = [f"{os.path.relpath(path, REPO)}:{line}: {me} imports {target}"
               for me, target, path, line in edges if me in cyclic and target in cyclic]
    assert not cyclic, "imports on a cycle:\n" + "\n".join(imports)


def test_a_forbidden_import_is_named():
    path = os.path.join(REPO, "megalite", "model", "gpt.py")
    added = ("megalite.model.gpt", "megalite.training.trainer", path, 3)  # model may not know the trainer
    assert forbidden_arrows([added]) == [
        "megalite/model/gpt.py:3: megalite.model.gpt imports megalite.training.trainer (model is below training)"]
    cycle = [("megalite.kernels.rope", "megalite.kernels.norm", path, 1),
             ("megalite.kernels.norm", "megalite.kernels.rope", path, 1)]
    assert cyclic_modules(cycle) == {"megalite.kernels.rope", "megalite.kernels.norm"}


# Inside megalite/checkpoint: which siblings a module may import (issue 20).
CHECKPOINT_SIBLINGS = {"layout": set(), "rng": set(), "reshard": {"layout"}, "save": {"layout", "rng"},
                       "load": {"layout", "reshard", "rng"}, "rewrite": {"layout", "reshard", "save"}}


def test_checkpoint_modules_import_only_the_siblings_below_them():
    prefix = "megalite.checkpoint."
    bad = [f"{os.path.relpath(path, REPO)}:{line}: {me} imports {target}" for me, target, path, line in all_edges()
           if me.startswith(prefix) and target.startswith(prefix)
           and target[len(prefix):] not in CHECKPOINT_SIBLINGS.get(me[len(prefix):], set())]
    assert bad == []
    folder = os.path.join(REPO, "megalite", "checkpoint")
    assert {f[:-3] for f in os.listdir(folder) if f.endswith(".py")} - {"__init__"} == set(CHECKPOINT_SIBLINGS)
