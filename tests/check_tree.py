#!/usr/bin/env python3
"""Checks the shape of the source tree: every file of src/ stays small enough
to read in one sitting, and every public header has a source file of its own
name that implements it.

    tests/check_tree.py ROOT              check the tree, list offenders
    tests/check_tree.py ROOT --self-test  also prove the check fails on a
                                          planted tree that breaks each rule

Rules:
  (a) a .cpp or .h under src/ has at most MAX_LINES lines;
  (b) include/lorakeep/X.h is implemented by a src/**/X.cpp that includes
      "lorakeep/X.h" (itself or through its own X.h beside it), unless
      UMBRELLAS lists it; an umbrella header holds
      nothing but #include lines, and every header UMBRELLAS names exists.

Exit 0: clean; 1: offenders (listed one per line as path: reason)."""
import pathlib
import re
import sys
import tempfile

MAX_LINES = 500

# Public headers that declare nothing, so no source file implements them.
# Each holds only comments, #pragma once and #include lines (checked).
# (lorakeep/version.h is generated into the build tree from
# cmake/version.h.in; it is not under include/lorakeep/ and needs no entry.)
UMBRELLAS = {
    "lorakeep.h": "the whole public API in one include",
    "lora.h": "lora_linear.h, lora_config.h and adapter.h in one include",
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
UMBRELLA_LINE = re.compile(r'^\s*(//.*)?$|^\s*#\s*pragma\s+once\s*$|^\s*#\s*include\s+"lorakeep/[^"]+"\s*$')


def includes(path):
    return {m.group(1) for m in map(INCLUDE.match, path.read_text(errors="replace").splitlines()) if m}


def includes_public(source, header_name):
    """Whether `source` includes lorakeep/<header_name>, itself or through the
    private header of its own name beside it (base/logging.cpp: base/logging.h)."""
    want = f"lorakeep/{header_name}"
    if want in includes(source):
        return True
    own = source.with_suffix(".h")
    return own.is_file() and want in includes(own)


def check(root):
    problems = []
    src = root / "src"
    sources = sorted(p for p in src.rglob("*") if p.suffix in (".h", ".cpp") and p.is_file())

    # (a) no file of src/ over MAX_LINES lines.
    for f in sources:
        n = len(f.read_text(errors="replace").splitlines())
        if n > MAX_LINES:
            problems.append(f"src/{f.relative_to(src).as_posix()}: {n} lines, more than {MAX_LINES}")

    # (b) every public header implemented by a source file of its own name.
    by_name = {}
    for f in sources:
        if f.suffix == ".cpp":
            by_name.setdefault(f.stem, []).append(f)
    public = root / "include" / "lorakeep"
    headers = sorted(public.glob("*.h"))
    for h in headers:
        rel = f"include/lorakeep/{h.name}"
        if h.name in UMBRELLAS:
            for n, line in enumerate(h.read_text(errors="replace").splitlines(), 1):
                if not UMBRELLA_LINE.match(line):
                    problems.append(f"{rel}:{n}: listed as an umbrella header ({UMBRELLAS[h.name]}) "
                                    "but holds more than #include lines")
                    break
            continue
        candidates = by_name.get(h.stem, [])
        if not candidates:
            problems.append(f"{rel}: no src/**/{h.stem}.cpp implements it")
        elif not any(includes_public(c, h.name) for c in candidates):
            names = ", ".join(f"src/{c.relative_to(src).as_posix()}" for c in candidates)
            problems.append(f"{rel}: {names} does not include \"lorakeep/{h.name}\"")
    for name in sorted(UMBRELLAS):
        if not (public / name).is_file():
            problems.append(f"include/lorakeep/{name}: listed as an umbrella header but does not exist")
    return problems


def self_test():
    """The check must pass a small clean tree and catch each planted breach."""
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        (root / "src" / "base").mkdir(parents=True)
        (root / "include" / "lorakeep").mkdir(parents=True)
        pub = root / "include" / "lorakeep"
        (pub / "thing.h").write_text("#pragma once\nint thing();\n")
        (pub / "lorakeep.h").write_text('// all of it\n#pragma once\n\n#include "lorakeep/thing.h"\n')
        (pub / "lora.h").write_text('#pragma once\n#include "lorakeep/thing.h"\n')
        (root / "src" / "base" / "thing.cpp").write_text('#include "lorakeep/thing.h"\nint thing() { return 1; }\n')
        (root / "src" / "base" / "full.cpp").write_text("\n" * MAX_LINES)
        (pub / "via.h").write_text("#pragma once\nint via();\n")
        (root / "src" / "base" / "via.h").write_text('#pragma once\n#include "lorakeep/via.h"\n')
        (root / "src" / "base" / "via.cpp").write_text('#include "base/via.h"\nint via() { return 3; }\n')
        clean = check(root)

        (root / "src" / "base" / "long.h").write_text("//\n" * (MAX_LINES + 1))
        (pub / "orphan.h").write_text("#pragma once\nint orphan();\n")
        (pub / "stray.h").write_text("#pragma once\nint stray();\n")
        (root / "src" / "base" / "stray.cpp").write_text("int stray() { return 2; }\n")
        (pub / "lora.h").write_text('#pragma once\n#include "lorakeep/thing.h"\nint hidden();\n')
        (pub / "lorakeep.h").unlink()
        planted = check(root)

    def caught(*words):
        return any(all(w in p for w in words) for p in planted)

    results = {
        "clean tree passes": not clean,
        "file of 501 lines": caught("src/base/long.h", "501 lines"),
        "file of 500 lines passes": not caught("full.cpp"),
        "header without a source": caught("orphan.h", "no src/**/orphan.cpp"),
        "source not including its header": caught("stray.h", "does not include"),
        "umbrella declaring something": caught("lora.h:3", "umbrella"),
        "umbrella listed but missing": caught("lorakeep.h", "does not exist"),
    }
    for what, ok in results.items():
        print(f"self-test: {what}: {'ok' if ok else 'MISSED'}")
    if clean:
        print("self-test: the clean tree had: " + "; ".join(clean))
    return all(results.values())


def main():
    root = pathlib.Path(sys.argv[1]).resolve()
    problems = check(root)
    for p in problems:
        print(p)
    ok = not problems
    if "--self-test" in sys.argv[2:]:
        ok = self_test() and ok
    print(f"tree: {len(problems)} offender(s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
