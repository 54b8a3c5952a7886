#!/usr/bin/env python3
"""Checks the layering of node/src (see node/src/lib.rs, "Layers").

1. No import cycle between the node's modules (each .rs file is one
   module; an import is any `crate::a::b` path, `super::x` or `use
   super::...` in its text).
2. Layer rules between the top-level folders/files:
   - nothing outside `api/` and `node.rs` names `crate::api`;
   - only `main.rs` names `cli` (the binary; as `esf_node::cli`);
   - nothing below the wiring names `crate::node`, `crate::admin`;
   - the shared ground (context, error, keyspace, convert, identity,
     config, disk, net/, telemetry/) names no domain module except the state types the
     context holds (cluster::partitions, cluster::leaders) and the pure
     placement plan's bounds (cluster::placement).
3. No source file over MAX_LINES lines in node/src or client/src, tests
   (a trailing `#[cfg(test)] mod tests`) not counted.

Exits 1 and says what is wrong; prints the module count and edge count
when all is well.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
NODE = os.path.join(ROOT, "node", "src")
CLIENT = os.path.join(ROOT, "client", "src")
MAX_LINES = 1000

GROUND = {"context", "error", "keyspace", "convert", "identity", "config", "net", "disk", "telemetry"}
GROUND_MAY_NAME = {"cluster::partitions", "cluster::leaders", "cluster::placement"}
WIRING = {"node", "admin", "api", "cli", "main", "lib"}


def modules(src):
    """Module path (tuple) -> file path."""
    out = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), src)[:-3].split(os.sep)
            if rel[-1] == "mod":
                rel = rel[:-1]
            out[tuple(rel)] = os.path.join(dirpath, f)
    return out


def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def resolve(mods, path):
    """The longest module prefix of `path` (a tuple of names)."""
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return None


def edges(mods):
    out = {m: set() for m in mods}
    for m, f in mods.items():
        text = strip_comments(open(f, encoding="utf-8").read())
        is_dir_mod = f.endswith("mod.rs")
        parent = m if is_dir_mod else m[:-1]
        for p in re.findall(r"crate((?:::\w+)+)", text):
            t = resolve(mods, p.strip(":").split("::"))
            if t and t != m:
                out[m].add(t)
        for p in re.findall(r"\bsuper((?:::\w+)+)", text):
            base = parent[:-1] if is_dir_mod else parent
            t = resolve(mods, list(base) + p.strip(":").split("::"))
            if t and t != m:
                out[m].add(t)
        # `use super::{a, b}` and `use super::*` in a child module.
        for group in re.findall(r"use super::\{([^}]*)\}", text):
            base = parent[:-1] if is_dir_mod else parent
            for name in re.findall(r"\b(\w+)\b", group):
                t = resolve(mods, list(base) + [name]) or (tuple(base) if base else None)
                if t and t != m:
                    out[m].add(t)
    # A folder module (`mod.rs`) declaring its children is not an import.
    return out


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, sccs = {}, {}, [], set(), []
    counter = [0]

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
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return sccs


def code_lines(f):
    lines = open(f, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
        if line.startswith("#[cfg(test)]"):
            return i
    return len(lines)


def main():
    mods = modules(NODE)
    graph = edges(mods)
    problems = []
    for comp in cycles(graph):
        names = sorted("::".join(c) or "lib" for c in comp)
        problems.append(f"import cycle between node modules: {', '.join(names)}")
    for m, targets in graph.items():
        name = "::".join(m)
        top = m[0] if m else "lib"
        for t in targets:
            tname = "::".join(t)
            ttop = t[0]
            if ttop == "api" and top not in ("api", "node"):
                problems.append(f"{name} names crate::{tname}: only api/ and node.rs may")
            if ttop in ("node", "admin", "cli") and top not in WIRING:
                problems.append(f"{name} names crate::{tname}: the wiring is above it")
            if top in GROUND and ttop not in GROUND and tname not in GROUND_MAY_NAME:
                problems.append(f"{name} (shared ground) names crate::{tname}, a layer above it")
    for src in (NODE, CLIENT):
        for m, f in modules(src).items():
            n = code_lines(f)
            if n > MAX_LINES:
                problems.append(f"{os.path.relpath(f, ROOT)}: {n} lines of code (limit {MAX_LINES})")
    if problems:
        for p in problems:
            print(f"check-layers: {p}", file=sys.stderr)
        sys.exit(1)
    print(
        f"check-layers: {len(mods)} node modules, {sum(len(t) for t in graph.values())} imports between them, "
        "no cycle, layer rules hold, no file over "
        f"{MAX_LINES} lines"
    )


if __name__ == "__main__":
    main()
