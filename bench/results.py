"""bench/results.json, one section per command, and BENCHMARKS.md from all of
them. A command replaces only its own section, so rerunning one never erases
another's figures:

  {"sections": {"reloads": {"command": "bench/run.sh", "date": "...",
                            "libtorch": {"version": "...", "build": "..."},
                            "machine": {...}, "rows": [{...}, ...]},
                "saves": {...}, "merges": {...}, "gpu": {...}, ...}}

Every section holds "command" and "date", "libtorch" where known, and its
figures; "rows" (a list of dicts) is what BENCHMARKS.md tabulates for any
section without a renderer of its own (bench/report.py).

  python3 bench/results.py --section gpu --from FILE.json [--build DIR]
                                    # FILE.json replaces the section "gpu"
  python3 bench/results.py --render-only [--md PATH --svg PATH]
                                    # BENCHMARKS.md again, nothing measured
  python3 bench/results.py --migrate
                                    # the layout before sections, rewritten
  python3 bench/results.py --self-test
"""
import argparse
import contextlib
import datetime
import fcntl
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results.json")
sys.path.insert(0, HERE)
import report  # noqa: E402


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def libtorch_of(build):
    """The LibTorch a build tree was configured with, from its CMakeCache
    (the build may use Debian's or a PyPI wheel's): {"version", "build"}, or
    None when the build tree does not say."""
    try:
        with open(os.path.join(build, "CMakeCache.txt")) as f:
            found = re.search(r"^Torch_DIR:PATH=(.*)$", f.read(), re.M)
    except OSError:
        return None
    if not found:
        return None
    torch_dir = found.group(1)
    # A wheel's torch/share/cmake/Torch sits under torch/, next to version.py.
    version_py = os.path.join(torch_dir, "..", "..", "..", "version.py")
    if os.path.exists(version_py):
        with open(version_py) as f:
            text = f.read()
        version = re.search(r"^__version__ = '([^']*)'", text, re.M)
        cuda = re.search(r"^cuda: .*= '([^']*)'", text, re.M)
        return {"version": version.group(1) if version else None,
                "build": "PyPI wheel" + (f", CUDA {cuda.group(1)}" if cuda else ", CPU only")}
    if torch_dir.startswith("/usr/"):
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libtorch-dev"], capture_output=True,
                                 text=True).stdout
        return {"version": version or None, "build": "Debian"}
    version = None
    with contextlib.suppress(OSError), open(os.path.join(torch_dir, "TorchConfigVersion.cmake")) as f:
        found = re.search(r'set\(PACKAGE_VERSION "([^"]*)"\)', f.read())
        version = found.group(1) if found else None
    return {"version": version, "build": torch_dir}


# The lists of the layout before sections, and the sections they became.
OLD_LISTS = (("reloads", "reload"), ("saves", "save"), ("merges", "merge"))


def migrate(old):
    """The layout before sections (one bench/run.py run: "command", "date",
    "machine" and the lists "reload", "save", "merge") as three sections of
    that run, figures untouched. That run.py read the LibTorch version of
    Debian's libtorch-dev, so the build is Debian's."""
    machine = dict(old["machine"])
    version = machine.pop("libtorch", None)
    head = {"command": old["command"], "date": old["date"]}
    if version:
        head["libtorch"] = {"version": version, "build": "Debian"}
    head["machine"] = machine
    return {"sections": {new: dict(head, rows=old[key]) for new, key in OLD_LISTS if key in old}}


def load(path):
    """The results at `path` in the layout of sections (an old file is
    migrated in memory); no file is no section."""
    if not os.path.exists(path):
        return {"sections": {}}
    with open(path) as f:
        data = json.load(f)
    return data if "sections" in data else migrate(data)


def check_section(name, sec):
    """Refuses what would break the report for every section, not only this
    one: a section is a dict naming its command; its rows, a list of dicts."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"section name {name!r}: lower case letters, digits and _ only")
    if not isinstance(sec, dict):
        raise ValueError(f"section {name}: a JSON object, not {type(sec).__name__}")
    if not isinstance(sec.get("command"), str) or not sec["command"]:
        raise ValueError(f"section {name}: no \"command\" (the command that produced it)")
    rows = sec.get("rows", [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"section {name}: \"rows\" must be a list of objects")
    if "libtorch" in sec and not isinstance(sec["libtorch"], (str, dict, type(None))):
        raise ValueError(f"section {name}: \"libtorch\" must be a string or an object")


@contextlib.contextmanager
def locked(directory):
    """Two commands finishing at once take turns: the second reads the first's
    section before writing its own, so neither loses the other's."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_atomic(path, text):
    """A reader (or a crash) sees the old file or the new one, never half."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def report_paths(path):
    """BENCHMARKS.md and scaling.svg for a results.json: the repository's
    for bench/results.json, else next to the file (a smoke run's --out)."""
    if os.path.realpath(path) == os.path.realpath(RESULTS):
        return os.path.join(ROOT, "BENCHMARKS.md"), os.path.join(HERE, "scaling.svg")
    d = os.path.dirname(os.path.abspath(path))
    return os.path.join(d, "BENCHMARKS.md"), os.path.join(d, "scaling.svg")


def write_report(sections, md_path, svg_path):
    write_atomic(md_path, report.markdown(sections))
    if "reloads" in sections or "scale" in sections:
        write_atomic(svg_path, report.svg(sections))


def dump(data):
    return json.dumps(data, indent=1) + "\n"


def update_sections(path, new, md_path=None, svg_path=None):
    """Replaces the sections in `new` (name -> section) in the results at
    `path`, leaving every other one as it was, byte for byte, then writes
    BENCHMARKS.md (and scaling.svg) from all of them."""
    for name, sec in new.items():
        check_section(name, sec)
        sec.setdefault("date", now())
    default_md, default_svg = report_paths(path)
    with locked(os.path.dirname(os.path.abspath(path))):
        data = load(path)
        # A section replaced keeps its place in the file; a new one goes last.
        data["sections"].update(new)
        write_atomic(path, dump(data))
        write_report(data["sections"], md_path or default_md, svg_path or default_svg)
    return data


def update_section(path, name, data, md_path=None, svg_path=None):
    """The one call for a command that owns a section: see update_sections."""
    return update_sections(path, {name: data}, md_path, svg_path)


def render_only(path, md_path=None, svg_path=None):
    default_md, default_svg = report_paths(path)
    write_report(load(path)["sections"], md_path or default_md, svg_path or default_svg)


# --- self-test ---------------------------------------------------------------

MIB = 1 << 20


def scale_row(layers, method, ratio):
    """A row of bench/scale.py, for a model of `layers` GiB."""
    floor = 10.0 * layers
    return {"method": method, "layout": f"llama:{layers}", "layers": layers, "model_bytes": layers << 30,
            "largest_tensor_bytes": 250 * MIB, "seconds": floor * ratio, "floor_seconds": floor,
            "ratio": ratio, "ratios": [ratio, ratio + 0.1, ratio - 0.1], "peak_rss_above_idle_bytes": 300 * MIB}


def fixture_sections():
    """Tiny sections of every kind, shaped like bench/run.py's rows."""
    def reload(layout, method, dtype, seconds):
        return {"layout": layout, "method": method, "file_dtype": dtype, "seconds": seconds,
                "peak_rss_bytes": MIB, "peak_alloc_bytes": 0 if method.startswith(("memcpy", "lorakeep")) else -1}

    reloads = []
    for size in (1, 2):
        for dtype in ("F32", "BF16"):
            methods = ["lorakeep", "lorakeep-verify", "torch-load"]
            methods[:0] = ["memcpy", "memcpy-all-cores"] if dtype == "F32" else []
            reloads += [reload(f"adapter:{size}", m, dtype, 0.001 * size * (i + 1)) for i, m in enumerate(methods)]
    reloads.append(reload("tiny:100", "lorakeep", "F32", 0.002))
    saves = [{"layout": "adapter:4", "method": m, "seconds": s, "peak_rss_bytes": -1}
             for m, s in (("lorakeep", 0.011), ("dd-fsync", 0.01))]
    merges = [{"method": m, "kind": "delta", "layout": "base:8", "seconds": s, "seconds_all": [s],
               "peak_rss_bytes": 100 * MIB, "largest_tensor_bytes": 8 * MIB}
              for m, s in (("lorakeep merge-delta", 0.2), ("read inputs + write output once (delta)", 0.19))]
    head = {"command": "bench/run.sh --smoke", "date": "2026-01-01 00:00 UTC",
            "libtorch": {"version": "1.13.1+dfsg-4", "build": "Debian"}}
    return {
        "reloads": dict(head, rows=reloads),
        "saves": dict(head, rows=saves),
        "merges": dict(head, rows=merges),
        "async_saves": {"command": "bench/async.sh", "date": "2026-01-02 00:00 UTC",
                        "rows": [{"size_bytes": 4 * MIB, "stall_seconds": 0.0123, "note": "async-marker"}]},
        "scale": {"command": "bench/run.sh --scale", "date": "2026-01-03 00:00 UTC", "note": "scale-marker note",
                  "caches": "drop_caches", "recipe_memory_limit": "memory cgroup", "idle_rss_bytes": 50 * MIB,
                  "rows": [scale_row(layers, m, ratio) for layers in (1, 4)
                           for m, ratio in (("lorakeep merge-lora", 1.1), ("lorakeep merge-delta", 1.87))]
                  + [{"method": "python FastChat recipe (apply_delta)", "layout": "llama:4", "model_bytes": 4 << 30,
                      "seconds": 9.0, "peak_rss_bytes": 9 << 30, "ended": "killed by signal 9"}]},
        "zzz_other": {"command": "tools/other.sh", "date": "2026-01-04 00:00 UTC", "rows": [{"x": "other-marker"}]},
    }


def section_text(name, sec):
    """A section's bytes as they stand in results.json (nested two deep)."""
    lines = dump({"sections": {name: sec}}).splitlines()
    return "\n".join(lines[2:-2])


def md_blocks(md):
    """BENCHMARKS.md by its "## " headings."""
    return {b.split("\n", 1)[0]: b for b in ("\n" + md).split("\n## ")[1:]}


def self_test():
    def check(ok, what):
        if not ok:
            raise AssertionError(what)

    gpu = {"command": "scripts/gpu-check.sh", "date": "2026-01-05 00:00 UTC", "device": "gpu-marker device",
           "libtorch": {"version": "2.15.0+cu132", "build": "PyPI wheel, CUDA 13.2"},
           "rows": [{"check": "load_into on CUDA", "ok": True, "seconds": 0.5}]}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "results.json")
        md_path = os.path.join(d, "BENCHMARKS.md")
        read = lambda p: open(p).read()
        update_sections(path, fixture_sections())
        before, md_before = read(path), read(md_path)
        sections = load(path)["sections"]

        # Every section present renders; the absent GPU check says so and names its command.
        for heading in ("Targets", "Reload into live parameters", "Save a checkpoint", "Offline merges",
                        "Asynchronous saves", "Scale: merges of a 7B-shaped model, cold", "zzz_other", "GPU check", "How to rerun"):
            check(f"\n## {heading}\n" in md_before, f"no '## {heading}' in BENCHMARKS.md")
        for marker in ("async-marker", "4.0 MiB", "12.3 ms", "scale-marker note", "1.87x", "other-marker",
                       "`bench/async.sh`", "`tools/other.sh`", "killed by signal 9", "### How cost grows (cold merges)",
                       "| lorakeep merge-lora | 11.00 | 0.00 |",
                       "lorakeep merge-delta at 4.3 GB, cold, time <= 1.15x the floor (inputs read once, output "
                       "written once with fsync): **not met** (1.87x"):
            check(marker in md_before, f"{marker!r} not rendered")
        gpu_block = md_blocks(md_before)["GPU check"]
        check("has not been run on a GPU yet" in gpu_block and "`scripts/gpu-check.sh`" in gpu_block,
              "the GPU section does not say the check has not run, or does not name scripts/gpu-check.sh")

        # Updating one section (a new one, then an old one) leaves every other byte-identical.
        for name, sec in (("gpu", gpu), ("saves", dict(sections["saves"], date="2026-02-02 00:00 UTC"))):
            update_section(path, name, sec)
            after, md_after = read(path), read(md_path)
            for other, other_sec in sections.items():
                if other == name:
                    continue
                text = section_text(other, other_sec)
                check(text in before, f"section_text({other}) is not how results.json holds it")
                check(text in after, f"updating {name} changed the bytes of section {other}")
                heading = report.section_md(other, sections)[0][len("## "):]
                check(md_blocks(md_before)[heading] == md_blocks(md_after)[heading],
                      f"updating {name} changed the rendering of {other}")
            check(section_text(name, sec) in after, f"section {name} not written as given")
            sections = load(path)["sections"]
            before, md_before = after, md_after
        gpu_block = md_blocks(md_before)["GPU check"]
        check("gpu-marker device" in gpu_block and "load_into on CUDA" in gpu_block and
              "has not been run" not in gpu_block, "the GPU section does not render the check's table")
        check(list(sections) == ["reloads", "saves", "merges", "async_saves", "scale", "zzz_other", "gpu"],
              f"sections moved: {list(sections)}")

        # A refused section changes nothing; no temporary file is left behind.
        with contextlib.suppress(ValueError):
            update_section(path, "scale", {"rows": []})
            raise AssertionError("a section without a command was accepted")
        check(read(path) == before, "a refused update changed results.json")
        check(sorted(os.listdir(d)) == ["BENCHMARKS.md", "results.json", "scaling.svg"],
              f"left behind: {sorted(os.listdir(d))}")

        # The layout before sections renders the same figures.
        old = {"command": "bench/run.sh", "date": "2026-01-01 00:00 UTC",
               "machine": {"cpu": "cpu", "cores": 2, "memory_bytes": 1 << 30, "kernel": "k", "libtorch": "1.13"},
               "reload": sections["reloads"]["rows"], "save": sections["saves"]["rows"],
               "merge": sections["merges"]["rows"]}
        migrated = migrate(old)["sections"]
        check(list(migrated) == ["reloads", "saves", "merges"] and migrated["saves"]["rows"] == old["save"] and
              migrated["reloads"]["libtorch"]["version"] == "1.13" and "libtorch" not in
              migrated["reloads"]["machine"], "migrate() lost or moved something")
    print("results.py self-test: ok")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=RESULTS, help="the results file (default bench/results.json)")
    p.add_argument("--section", help="the section to replace, with --from")
    p.add_argument("--from", dest="from_file", metavar="FILE.json", help="the section's new content")
    p.add_argument("--build", help="fill in the section's LibTorch from this build tree if it does not say")
    p.add_argument("--render-only", action="store_true", help="rewrite BENCHMARKS.md from the results only")
    p.add_argument("--migrate", action="store_true", help="rewrite the results in the layout of sections")
    p.add_argument("--md", help="where BENCHMARKS.md goes (default: see report_paths)")
    p.add_argument("--svg", help="where scaling.svg goes (default: see report_paths)")
    p.add_argument("--self-test", action="store_true")
    args = p.parse_args()
    if args.self_test:
        self_test()
    elif args.render_only:
        render_only(args.results, args.md, args.svg)
    elif args.migrate:
        with locked(os.path.dirname(os.path.abspath(args.results))):
            write_atomic(args.results, dump(load(args.results)))
    elif args.section and args.from_file:
        with open(args.from_file) as f:
            sec = json.load(f)
        if args.build and isinstance(sec, dict) and not sec.get("libtorch"):
            sec["libtorch"] = libtorch_of(args.build)
        update_section(args.results, args.section, sec, args.md, args.svg)
        print(f"wrote section {args.section} of {args.results}")
    else:
        p.error("one of --section NAME --from FILE.json, --render-only, --migrate, --self-test")


if __name__ == "__main__":
    main()
