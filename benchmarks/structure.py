"""Structure figures for the README's layout section: import circles between edgellm's modules,
and folder-level ties that run both ways.

    python benchmarks/structure.py

Every ``import``/``from ... import`` of an ``edgellm`` module counts, at module level or inside a
function (a lazy import still ties the two modules: it only hides the circle from the
interpreter).  A circle is a strongly connected component of more than one module.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"edgellm": "edgellm", "runtime": "edgellm.runtime", "exporters": "edgellm.exporters"}


def modules() -> dict[str, Path]:
    out = {}
    for folder, prefix in FOLDERS.items():
        for p in (ROOT / folder).rglob("*.py"):
            rel = p.relative_to(ROOT / folder).with_suffix("")
            parts = [x for x in rel.parts if x != "__init__"]
            out[".".join([prefix, *parts])] = p
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


# A format's own modules: where its names may be compared (the registry entry, its layout, recipes,
# exporter, runtime backend).  Anywhere else a comparison with a format or quant name is a spread fact.
FORMAT_OWNED = ("edgellm/formats/", "edgellm/formats/choice.py", "edgellm/formats/onnx_layout.py",
                "edgellm/formats/gguf_recipes.py", "edgellm/formats/quality.py", "exporters/gguf/", "exporters/onnx/",
                "exporters/npu/", "runtime/llamacpp.py", "runtime/onnxrt.py", "runtime/onnx_static.py",
                "runtime/gguf_", "runtime/synthetic_gguf.py")
NAMES = ("gguf", "onnx", "onnx-npu", "npu-static", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "IQ4_XS",
         "Q3_K_M", "Q2_K", "fp32", "fp16", "int8", "int4")


def name_comparisons() -> list[str]:
    """``x == "gguf"``, ``x != "int4"``, ``x in ("gguf", ...)`` outside the formats' own modules."""
    import re

    quoted = "|".join(re.escape(n) for n in NAMES)
    pat = re.compile(rf"""(==|!=)\s*["']({quoted})["']|["']({quoted})["']\s*(==|!=)|\bin\s*[(\[{{]\s*["']({quoted})["']""")
    hits = []
    for folder in FOLDERS:
        for p in sorted((ROOT / folder).rglob("*.py")):
            rel = str(p.relative_to(ROOT))
            if rel.startswith(FORMAT_OWNED):
                continue
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if pat.search(line) and not line.lstrip().startswith("#"):
                    hits.append(f"{rel}:{i}: {line.strip()[:100]}")
    return hits


def folder(module: str) -> str:
    """A module's room: ``edgellm.runtime.llamacpp`` -> ``edgellm.runtime``; a top-level module
    (``edgellm.pipeline``) is a room of its own."""
    return ".".join(module.split(".")[:2])


def two_way_ties(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of rooms that import each other (at module level or inside a function)."""
    edges = {(folder(a), folder(b)) for a, targets in graph.items() for b in targets if folder(a) != folder(b)}
    return sorted((a, b) for a, b in edges if a < b and (b, a) in edges)


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    # a package's __init__ is imported by every submodule import: not an edge of its own
    return {m: {t for t in imports(p, m, known) if not m.startswith(t + ".")} for m, p in mods.items()}


def main() -> int:
    graph = import_graph()
    found = circles(graph)
    print(f"modules {len(graph)}, import circles {len(found)}")
    for c in found:
        print("  " + " <-> ".join(c))
    ties = two_way_ties(graph)
    print(f"folder ties that run both ways {len(ties)}")
    for a, b in ties:
        print(f"  {a} <-> {b}")
    hits = name_comparisons()
    print(f"format/quant name comparisons outside the formats' own modules {len(hits)}")
    for h in hits:
        print("  " + h)
    return 0


if __name__ == "__main__":
    sys.exit(main())
