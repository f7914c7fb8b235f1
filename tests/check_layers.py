#!/usr/bin/env python3
"""Checks that every #include "..." in src/ and include/lorakeep/ points down
the layer table of src/layers.txt (or within a layer), and never into
another folder's private header.

    tests/check_layers.py ROOT              check the tree, list violations
    tests/check_layers.py ROOT --self-test  also prove the check fails on a
                                            planted upward include and a
                                            planted private include

Exit 0: clean; 1: violations (listed one per line as file:line: reason)."""
import pathlib
import re
import shutil
import sys
import tempfile

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def read_table(root):
    layers, private = {}, set()
    for rank, line in enumerate((root / "src" / "layers.txt").read_text().splitlines()):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if words[0] == "private":
            private.update(words[1:])
        else:
            for item in words[1:]:
                layers[item] = (rank, words[0])
    return layers, private


def layer_of(path, layers):
    """(rank, name) of a header or source path relative to src/ or include/."""
    if path in layers:
        return layers[path]
    folder = path.split("/")[0] + "/"
    return layers.get(folder)


def check(root):
    layers, private = read_table(root)
    problems = []
    files = [p for p in (root / "src").rglob("*") if p.suffix in (".h", ".cpp")]
    files += [p for p in (root / "include" / "lorakeep").glob("*.h")]
    for f in sorted(files):
        rel = f.relative_to(root / ("src" if f.is_relative_to(root / "src") else "include")).as_posix()
        own = layer_of(rel, layers)
        if own is None:
            problems.append(f"{rel}: in no layer of src/layers.txt")
            continue
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            m = INCLUDE.match(line)
            if not m:
                continue
            target = m.group(1)
            dest = layer_of(target, layers)
            if dest is None:
                continue  # generated or third-party
            if dest[0] > own[0]:
                problems.append(f"{rel}:{n}: includes '{target}' of layer '{dest[1]}', above '{own[1]}'")
            if target in private and target.rsplit("/", 1)[0] != rel.rsplit("/", 1)[0]:
                problems.append(f"{rel}:{n}: includes '{target}', private to {target.rsplit('/', 1)[0]}/")
    return problems


def self_test(root):
    """The check must catch a planted upward include and a planted private one."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = pathlib.Path(tmp)
        shutil.copytree(root / "src", copy / "src")
        shutil.copytree(root / "include", copy / "include")
        victim = copy / "src" / "io" / "read_file.cpp"
        victim.write_text(victim.read_text() + '\n#include "checkpoint/manifest.h"\n')
        up = check(copy)
        victim.write_text(victim.read_text() + '#include "transfer/plan_phase.h"\n')
        both = check(copy)
    ok_up = any("read_file.cpp" in p and "above 'io'" in p for p in up)
    ok_private = any("read_file.cpp" in p and "private to transfer/" in p for p in both)
    print(f"self-test: planted upward include {'caught' if ok_up else 'MISSED'}, "
          f"planted private include {'caught' if ok_private else 'MISSED'}")
    return ok_up and ok_private


def main():
    root = pathlib.Path(sys.argv[1]).resolve()
    problems = check(root)
    for p in problems:
        print(p)
    ok = not problems
    if "--self-test" in sys.argv[2:]:
        ok = self_test(root) and ok
    print(f"layers: {len(problems)} violation(s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
