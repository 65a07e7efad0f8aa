#!/usr/bin/env python3
"""Import circles between the modules of a crate.

Usage: scripts/module-cycles.py crates/edgepipe-server [more crates...]

Each .rs file under src/ is a module (mod.rs and lib.rs name their folder). An edge A -> B means
A names B (`crate::b::...`, `super::...`, or `self::b` in a folder's mod.rs), resolved to the
longest module path that exists. Test modules (tests.rs, *_tests.rs, `#[cfg(test)]` blocks) are
left out: they look at the code under test from outside. Prints every strongly connected set
of more than one module; exits 1 if there is one.
"""
import os
import re
import sys


def modules(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            name = "::".join(rel)
            if f == "tests.rs" or f.endswith("_tests.rs") or rel[-1:] == ["tests"]:
                continue
            mods[name] = path
    return mods


def strip_tests(text):
    # Drop `#[cfg(test)] mod x { ... }` blocks (brace-matched) and `#[cfg(test)]` items.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([a-z]+\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i : m.start()])
        depth, j = 0, m.end() - 1
        while j < len(text):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        i = j + 1
    out.append(text[i:])
    return "".join(out)


def resolve(parts, mods):
    for k in range(len(parts), 0, -1):
        name = "::".join(parts[:k])
        if name in mods:
            return name
    return None


def edges(mods):
    g = {m: set() for m in mods}
    for m, path in mods.items():
        text = strip_tests(open(path, encoding="utf-8").read())
        text = re.sub(r"//[^\n]*", "", text)
        here = m.split("::") if m else []
        is_folder = os.path.basename(path) in ("mod.rs", "lib.rs", "main.rs")
        for ref in re.findall(r"\bcrate((?:::\w+)+)", text):
            t = resolve(ref.strip(":").split("::"), mods)
            if t is not None and t != m:
                g[m].add(t)
        for ref in re.findall(r"\bsuper((?:::\w+)*)", text):
            base = here[:-1] if not is_folder else here[:-1]
            parts = base + [p for p in ref.strip(":").split("::") if p]
            t = resolve(parts, mods) if parts else ""
            if t is not None and t != m and t in g:
                g[m].add(t)
        if is_folder:
            for ref in re.findall(r"\bself((?:::\w+)+)", text):
                t = resolve(here + ref.strip(":").split("::"), mods)
                if t is not None and t != m:
                    g[m].add(t)
    return g


def sccs(g):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
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

    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            visit(v)
    return out


bad = False
for crate in sys.argv[1:]:
    mods = modules(os.path.join(crate, "src"))
    g = edges(mods)
    circles = sccs(g)
    n_edges = sum(len(v) for v in g.values())
    print(f"{crate}: {len(mods)} modules, {n_edges} imports, {len(circles)} circle(s)")
    for c in circles:
        bad = True
        print("  circle: " + " <-> ".join(x or "(crate root)" for x in c))
        for a in c:
            print(f"    {a or '(crate root)'} -> " + ", ".join(sorted(b or '(crate root)' for b in g[a] if b in c)))
sys.exit(1 if bad else 0)
