#!/usr/bin/env python3
"""House limits on the code's shape, checked in CI (scripts/test.sh):

- no `main.rs` over 150 lines and no other Rust source file over 600;
- no import cycle between the top-level modules of a crate (a module `a` that uses
  `crate::b` while `b` uses `crate::a`): the modules form a layered graph.

Prints every breach and exits 1 if there is one.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = ["proto", "shared", "runtime", "inference", "lab", "edge-agent", "hub-server", "demo", "tests"]
MAIN_MAX, FILE_MAX = 150, 600
USE = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
# `use crate::{a, b::c}` names several modules at once.
USE_GROUP = re.compile(r"\buse\s+crate::\{([^}]*)\}", re.S)


def top_module(src: Path, path: Path) -> str:
    rel = path.relative_to(src).parts
    if len(rel) == 1:
        stem = path.stem
        return "" if stem in ("lib", "main") else stem
    return rel[0]


def strip_comments(text: str) -> str:
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def crate_graph(src: Path):
    edges = {}
    for path in src.rglob("*.rs"):
        if "bin" in path.relative_to(src).parts:
            continue
        me = top_module(src, path)
        if not me:
            continue
        text = strip_comments(path.read_text())
        names = set(USE.findall(text))
        for group in USE_GROUP.findall(text):
            names.update(p.strip().split("::")[0] for p in group.split(",") if p.strip())
        for other in names:
            if other not in (me, "self", "super", "crate"):
                edges.setdefault(me, set()).add((other, path))
    return edges


def cycles(edges):
    found = []
    graph = {a: {b for b, _ in bs} for a, bs in edges.items()}
    index, low, stack, on, n = {}, {}, [], set(), [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    sys.setrecursionlimit(10000)
    bad = []
    for crate in CRATES:
        for path in sorted((ROOT / crate).rglob("*.rs")):
            if "target" in path.parts:
                continue
            lines = sum(1 for _ in path.open())
            limit = MAIN_MAX if path.name == "main.rs" else FILE_MAX
            if lines > limit:
                bad.append(f"{path.relative_to(ROOT)}: {lines} lines (limit {limit})")
        src = ROOT / crate / "src"
        if src.is_dir():
            edges = crate_graph(src)
            for comp in cycles(edges):
                uses = [
                    f"{a} -> {b} ({p.relative_to(ROOT)})"
                    for a in comp
                    for b, p in sorted(edges.get(a, ()))
                    if b in comp
                ]
                bad.append(f"{crate}: import cycle between modules {', '.join(comp)}:\n    " + "\n    ".join(uses))
    for b in bad:
        print(b)
    if bad:
        print(f"{len(bad)} breach(es) of the house limits (scripts/structure.py)")
        return 1
    print("structure: file sizes within limits, no import cycle between modules")
    return 0


if __name__ == "__main__":
    sys.exit(main())
