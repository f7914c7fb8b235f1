"""Turns the sections of bench/results.json into the text of BENCHMARKS.md
and bench/scaling.svg. Pure: bench/results.py reads and writes the files.

Each section renders on its own, so any subset of them renders: "reloads",
"saves" and "merges" (bench/run.py) and "scale" (bench/run.py --scale) with
their own tables and targets, "gpu" (scripts/gpu-check.sh) with a line saying
it has not run when absent, "device_reload" (bench/run.py, the test device)
and "gpu_device_reload" (scripts/gpu-check.sh, CUDA) as one section, "Reload
onto a device with 1 MiB free", and any other section ("async_saves", ...) as
a generic table of its rows.
"""
import math

MIB = 1 << 20


def mib(b):
    if b is None or b < 0:
        return "n/a"
    return f"{b / MIB:.1f} MiB"


def merge_rss_bound(row):
    """The merges' memory target: 2 x the largest tensor + 128 MiB."""
    return 2 * row["largest_tensor_bytes"] + 128 * MIB


def above_idle(b):
    """A peak RSS less the idle process's, which differs by a few MiB from run to run."""
    return mib(b) if b >= 0 else f"0 MiB (peak {-b / MIB:.1f} MiB below idle)"


def secs(s):
    return f"{s * 1000:.1f} ms" if s < 10 else f"{s:.1f} s"


def size_of(layout):
    kind, n = layout.split(":")
    return int(n)


def index(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def one(rows, **match):
    found = index(rows, **match)
    return found[0] if found else None


def reload_table(rows, dtype, layouts):
    out = ["| size | method | time | vs memcpy | vs memcpy on every core | peak extra RSS | extra allocator bytes |",
           "|---|---|---|---|---|---|---|"]
    for layout in layouts:
        base = one(rows, layout=layout, method="memcpy", file_dtype="F32")
        ceiling = one(rows, layout=layout, method="memcpy-all-cores", file_dtype="F32")
        for r in index(rows, layout=layout, file_dtype=dtype):
            ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base else "n/a"
            vs_all = f"{r['seconds'] / ceiling['seconds']:.2f}x" if ceiling else "n/a"
            out.append(f"| {size_of(layout)} MiB | {r['method']} | {secs(r['seconds'])} | {ratio} | {vs_all} | "
                       f"{mib(r['peak_rss_bytes'])} | {mib(r['peak_alloc_bytes'])} |")
    return "\n".join(out)


def page_reporting_line(reporting):
    if not reporting:
        return "- free page reporting to the hypervisor: left as it was (smoke run, no such setting, or not root)"
    if reporting["before"] == reporting["during"]:
        return f"- free page reporting to the hypervisor: after {reporting['before']} ms, as set"
    return (f"- free page reporting to the hypervisor: after {reporting['during'] // 1000} s during the run, "
            f"{reporting['before']} ms before and after (`bench/run.py`: reported at once, every write into recycled "
            "memory pays a page fault in the host, and the same `dd` of 2 GiB took 1.2 s or 5.2 s)")


def verdict(ok):
    return "**met**" if ok else "**not met**"


def reload_targets(rows):
    lines = []
    lk = [r for r in rows
          if r["layout"].startswith(("adapter:", "embedding:")) and r["method"].startswith("lorakeep")]
    worst_rss = max(r["peak_rss_bytes"] for r in lk)
    lines.append(f"- Reload, peak extra RSS <= 64 MiB at every size and dtype: {verdict(worst_rss <= 64 * MIB)} "
                 f"(worst {mib(worst_rss)})")
    same = [r for r in lk if r["file_dtype"] == "F32"]
    worst_alloc = max(r["peak_alloc_bytes"] for r in same)
    lines.append(f"- Reload, 0 extra target-allocator bytes for the same dtype: {verdict(worst_alloc == 0)} "
                 f"(worst {worst_alloc} bytes)")
    # Against a memcpy of the same bytes on every core, in the same run, from
    # 64 MiB up (smaller sizes are a few milliseconds: timer noise).
    limits = {"lorakeep": 1.15, "lorakeep-verify": 1.6}
    names = {"lorakeep": "`load_into`", "lorakeep-verify": "the verifying load"}
    for m, limit in limits.items():
        ratios = []
        for r in index(same, method=m):
            ceiling = one(rows, layout=r["layout"], method="memcpy-all-cores")
            if ceiling and (size_of(r["layout"]) >= 64 or r["layout"].startswith("embedding:")):
                ratios.append((r["seconds"] / ceiling["seconds"], r["layout"]))
        if not ratios:
            continue
        worst = max(ratios)
        ordered = sorted(ratios, key=lambda t: (t[1].split(":")[0], size_of(t[1])))
        every = ", ".join(f"{lay.replace('adapter:', '')} {x:.2f}x" for x, lay in ordered)
        lines.append(f"- Reload, {names[m]} <= {limit}x memcpy on every core: {verdict(worst[0] <= limit)} "
                     f"(worst {worst[0]:.2f}x at {worst[1]}; {every})")
    return lines


def save_targets(save):
    lines = []
    for r in index(save, method="lorakeep"):
        dd = one(save, layout=r["layout"], method="dd-fsync")
        ratio = r["seconds"] / dd["seconds"]
        lines.append(f"- Save {r['layout']}, <= 1.25x `dd conv=fsync`: {verdict(ratio <= 1.25)} ({ratio:.2f}x)")
    return lines


def merge_targets(merge):
    lines = []
    for r in merge:
        if not r["method"].startswith("lorakeep"):
            continue
        floor = one(merge, method=f"read inputs + write output once ({r['kind']})")
        bound = merge_rss_bound(r)
        name = r["method"]
        lines.append(f"- {name}, peak RSS <= 2 x largest tensor + 128 MiB ({mib(bound)}): "
                     f"{verdict(r['peak_rss_bytes'] <= bound)} ({mib(r['peak_rss_bytes'])}, whole process)")
        ratio = r["seconds"] / floor["seconds"]
        lines.append(f"- {name}, time <= 1.5x reading the inputs and writing the output once: "
                     f"{verdict(ratio <= 1.5)} ({ratio:.2f}x; medians of {len(r['seconds_all'])})")
    return lines


def scale_targets(rows):
    """At the largest model measured (the 7B shape): time against the floor,
    and peak RSS above the idle process's."""
    merges = [r for r in rows if r["method"].startswith("lorakeep")]
    if not merges:
        return []
    largest = max(r["model_bytes"] for r in merges)
    lines = []
    for r in merges:
        if r["model_bytes"] != largest:
            continue
        name = f"{r['method']} at {r['model_bytes'] / 1e9:.1f} GB, cold"
        spread = f"{min(r['ratios']):.2f}-{max(r['ratios']):.2f}x"
        lines.append(f"- {name}, time <= 1.15x the floor (inputs read once, output written once with fsync): "
                     f"{verdict(r['ratio'] <= 1.15)} ({r['ratio']:.2f}x, median of {len(r['ratios'])} pair ratios, "
                     f"spread {spread})")
        bound = merge_rss_bound(r)
        lines.append(f"- {name}, peak RSS above idle <= 2 x largest tensor + 128 MiB ({mib(bound)}): "
                     f"{verdict(r['peak_rss_above_idle_bytes'] <= bound)} ({above_idle(r['peak_rss_above_idle_bytes'])})")
    return lines


def device_reload_claim(row):
    """The claim each row of a device_reload section checks: at 1 MiB free
    the naive reload runs out of memory and lorakeep's succeeds with 0 extra
    device bytes, bitwise equal; with memory free both restore the best."""
    if row["method"] == "lorakeep":
        return (row["tight_outcome"] == "ok" and row["tight_bitwise_equal"] and row["extra_device_bytes"] == 0
                and row["bitwise_equal"])
    return row["tight_outcome"] == "out of memory" and row["bitwise_equal"]


def device_reload_targets(rows):
    sizes = ", ".join(mib(r["adapter_bytes"]) for r in rows if r["method"] == "lorakeep")
    worst = max((r["extra_device_bytes"] for r in rows if r["method"] == "lorakeep"), default=0)
    return [f"- Reload onto the test device with 1 MiB free: the naive reload runs out of memory, lorakeep's "
            f"restores the best bitwise with 0 extra device bytes ({sizes}): "
            f"{verdict(all(device_reload_claim(r) for r in rows))} (worst {worst} bytes)"]


# The sections whose rows have targets, in the order the targets are listed.
TARGETS = (("reloads", reload_targets), ("saves", save_targets), ("merges", merge_targets), ("scale", scale_targets),
           ("device_reload", device_reload_targets))


def targets(sections):
    lines = []
    for name, of_rows in TARGETS:
        if name in sections:
            lines += of_rows(sections[name]["rows"])
    return "\n".join(lines)


def svg(sections):
    """The scaling figure, as SVG text: the F32 reloads (time and peak extra
    RSS by adapter size), and, with a "scale" section, the cold merges by
    model size."""
    reload_rows = sections["reloads"]["rows"] if "reloads" in sections else []
    rows = [r for r in reload_rows if r["layout"].startswith("adapter:") and r["file_dtype"] == "F32"]
    rows = [dict(r, x=size_of(r["layout"])) for r in rows]
    merge_rows = []
    for r in sections.get("scale", {}).get("rows", []):
        if r["method"].startswith("lorakeep"):
            merge_rows.append(dict(r, x=r["model_bytes"] / (1 << 30)))
            if r["method"] == "lorakeep merge-lora":
                merge_rows.append(dict(r, x=r["model_bytes"] / (1 << 30), method="floor of merge-lora",
                                       seconds=r["floor_seconds"]))
    methods = sorted({r["method"] for r in rows + merge_rows})
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
              "#17becf", "#000000"]
    color = {m: colors[i % len(colors)] for i, m in enumerate(methods)}
    W, H, M = 420, 300, 55

    def panel(x0, title, rows, key, ylabel, xlabel):
        sizes = sorted({r["x"] for r in rows})
        vals = [r[key] for r in rows if r[key] and r[key] > 0]
        if not vals or len(sizes) < 2:
            return ""
        lo, hi = math.log10(min(vals)), math.log10(max(vals))
        hi = hi if hi > lo else lo + 1
        sx = lambda s: x0 + M + (math.log2(s) - math.log2(sizes[0])) / max(1e-9, math.log2(sizes[-1]) - math.log2(sizes[0])) * (W - M - 15)
        sy = lambda v: 20 + (hi - math.log10(v)) / (hi - lo) * (H - 20 - M)
        out = [f'<text x="{x0 + W / 2}" y="14" text-anchor="middle" font-size="13">{title}</text>',
               f'<line x1="{x0 + M}" y1="{H - M}" x2="{x0 + W - 15}" y2="{H - M}" stroke="#444"/>',
               f'<line x1="{x0 + M}" y1="20" x2="{x0 + M}" y2="{H - M}" stroke="#444"/>',
               f'<text x="{x0 + W / 2}" y="{H - 18}" text-anchor="middle" font-size="11">{xlabel}</text>',
               f'<text x="{x0 + 12}" y="{H / 2}" font-size="11" transform="rotate(-90 {x0 + 12} {H / 2})" '
               f'text-anchor="middle">{ylabel}</text>']
        for s in sizes:
            out.append(f'<text x="{sx(s)}" y="{H - M + 14}" text-anchor="middle" font-size="10">{s:.3g}</text>')
        for e in range(math.floor(lo), math.ceil(hi) + 1):
            v = 10 ** e
            if lo <= e <= hi:
                label = f"{v:g}" if key == "seconds" else f"{v / MIB:g}"
                out.append(f'<text x="{x0 + M - 4}" y="{sy(v) + 3}" text-anchor="end" font-size="10">{label}</text>')
        for m in methods:
            pts = sorted((r["x"], r[key]) for r in rows if r["method"] == m and r[key] and r[key] > 0)
            if not pts:
                continue
            out.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' %
                       (color[m], " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in pts)))
            for s, v in pts:
                out.append(f'<circle cx="{sx(s):.1f}" cy="{sy(v):.1f}" r="2.5" fill="{color[m]}"/>')
        return "\n".join(out)

    panels = [panel(0, "Reload time (F32, warm)", rows, "seconds", "seconds (log)", "adapter size (MiB, log)"),
              panel(W, "Peak extra RSS (F32)", rows, "peak_rss_bytes", "MiB (log)", "adapter size (MiB, log)")]
    panels.append(panel(2 * W, "Offline merges (BF16, cold)", merge_rows, "seconds", "seconds (log)",
                        "model size (GiB, log)"))
    panels = [p for p in panels if p]
    legend = []
    for i, m in enumerate(methods):
        y = H + 10 + 16 * i
        legend.append(f'<rect x="60" y="{y}" width="12" height="12" fill="{color[m]}"/>'
                      f'<text x="78" y="{y + 10}" font-size="11">{m}</text>')
    height = H + 20 + 16 * len(methods)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * max(1, len(panels))}" height="{height}" '
            f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(panels) + "\n"
            + "\n".join(legend) + "\n</svg>\n")


def libtorch_line(libtorch):
    if isinstance(libtorch, dict):
        build = f" ({libtorch['build']})" if libtorch.get("build") else ""
        return f"- LibTorch {libtorch.get('version') or 'unknown'}{build}"
    return f"- LibTorch {libtorch}"


def provenance(sec, peers=None):
    """Where a section's figures come from: every section carries its own,
    since each is measured by its own command, maybe on another machine."""
    lines = [f"- command: `{sec['command']}`, {sec['date']}"]
    m = sec.get("machine")
    if m:
        lines.append(f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory_bytes'] / (1 << 30):.0f} GiB, "
                     f"Linux {m['kernel']}")
    if sec.get("libtorch"):
        lines.append(libtorch_line(sec["libtorch"]) + (f"; Python peers: {peers}" if peers else ""))
    if m and "page_reporting_min_free_ms" in m:
        lines.append(page_reporting_line(m["page_reporting_min_free_ms"]))
    return lines


# What bench/run.py compares lorakeep with, in its three sections.
RUN_PY_PEERS = "Debian's python3-torch, safetensors from PyPI"


def linear_fit(points):
    """Least squares of y = fixed + slope * x over (x, y) points."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - slope * mx, slope


def growth_lines(rows):
    """How a warm reload's time grows with the adapter's size: per file dtype
    and method, the fixed cost and the slope of a least-squares line through
    the measured sizes from 64 MiB up."""
    points = {}  # (dtype, method) -> [(GiB, seconds)], in the rows' order
    for r in rows:
        if r["layout"].startswith("adapter:") and size_of(r["layout"]) >= 64:
            points.setdefault((r["file_dtype"], r["method"]), []).append((size_of(r["layout"]) / 1024, r["seconds"]))
    fitted = sorted({round(x * 1024) for pts in points.values() for x, _ in pts})
    if len(fitted) < 2:
        return []
    lines = ["### How cost grows (warm reloads)", "",
             f"A least-squares line through the sizes {', '.join(f'{n} MiB' for n in fitted)} (the medians "
             "above): time = fixed + slope x size. The large sizes dominate the fit, so a fixed cost of a few "
             "milliseconds either side of zero is noise (the per-tensor overhead below measures the fixed part "
             "directly); a method whose time grows faster than its size (`naive`, which faults in twice the "
             "adapter in fresh memory) shows a negative one.", "",
             "| file dtype | method | slope (ms per GiB) | fixed cost (ms) |", "|---|---|---|---|"]
    for (dtype, m), pts in sorted(points.items(), key=lambda kv: kv[0][0] != "F32"):
        if len(pts) >= 2:
            fixed, slope = linear_fit(pts)
            lines.append(f"| {dtype} | {m} | {slope * 1000:.1f} | {fixed * 1000:.1f} |")
    return lines + [""]


def reloads_md(sec):
    rows = sec["rows"]
    sizes = sorted({size_of(r["layout"]) for r in rows if r["layout"].startswith("adapter:")})
    tiny = [r for r in rows if r["layout"].startswith("tiny:")]
    lines = [
        "## Reload into live parameters",
        "",
        *provenance(sec, RUN_PY_PEERS),
        "- files are read warm (in the page cache), as at the end of a training run that just wrote them",
        "",
        "An adapter of N MiB: F32 LoRA factors, alternately [64, 4096] and [4096, 64] (1 MiB each), "
        "reloaded into live F32 parameters that already exist. Methods: `memcpy` of the same bytes already "
        "in memory, on one thread (the reference of the 'vs memcpy' column) and on every core "
        "(`memcpy-all-cores`: what the hardware allows); `lorakeep` (`load_into`, which reads on every core, "
        "at most 4); `lorakeep-verify` (the same, verifying "
        "XXH3-64 checksums of every tensor before touching any parameter, as load-best-at-end does); "
        "`naive` (the seed's bug in C++: the whole state dict in fresh tensors, then `copy_`); `torch-load` "
        "(Python `torch.load` of the same tensors saved with `torch.save`, then `copy_`); `safetensors` "
        "(the reference `safetensors.torch.load_file`, then `copy_`). Peak extra RSS is the process's "
        "resident high-water mark above its level before the load; extra allocator bytes are counted by "
        "lorakeep's counting CPU allocator (C++ methods only). Every method runs in 3 rounds, each a process "
        "of its own, in turn with the others (a slow spell of this shared machine then hits one round of "
        "every method, not all the runs of one); the time is the median of the rounds' medians. Runs in "
        "all: 33 at 16 MiB and for the 10,000 tiny tensors, fewer for larger sizes (each method reads "
        "about 512 MiB in all, at least 6 runs).",
        "",
        "![time and peak memory vs adapter size](bench/scaling.svg)",
        "",
        reload_table(rows, "F32", [f"adapter:{n}" for n in sizes]),
        "",
        "### One large tensor",
        "",
        "An embedding of N MiB: one F32 tensor [N * 256, 1024], read straight into its storage in reads "
        "of at most 16 MiB spread over every core; the verifying load hashes it on one core (its checksum "
        "is one XXH3-64 stream).",
        "",
        reload_table(rows, "F32", sorted({r["layout"] for r in rows if r["layout"].startswith("embedding:")})),
        "",
        "### A BF16 file into F32 parameters",
        "",
        "The conversion happens on the host, in pieces of at most 256 KiB that stay in the CPU cache, "
        "on every core (at most 4).",
        "",
        reload_table(rows, "BF16", [f"adapter:{n}" for n in sizes]),
        "",
        *growth_lines(rows),
        "### Per-tensor overhead",
        "",
        "| tensors | method | time | per tensor | peak extra RSS |",
        "|---|---|---|---|---|",
    ]
    for r in tiny:
        n = size_of(r["layout"])
        lines.append(f"| {n} x [8, 16] | {r['method']} | {secs(r['seconds'])} | {r['seconds'] / n * 1e6:.1f} us | "
                     f"{mib(r['peak_rss_bytes'])} |")
    return lines


def saves_md(sec):
    lines = ["## Save a checkpoint", "", *provenance(sec, RUN_PY_PEERS), "",
             "An adapter of N MiB written to disk and made durable. `lorakeep` is `save_safetensors` (temp file, "
             "fsync, rename, fsync of the directory); `torch-save` is LibTorch's `pickle_save` through the same "
             "atomic write; `python-torch-save` is `torch.save` plus `fsync`; `dd-fsync` writes the same number "
             "of bytes with `dd conv=fsync` (the device limit).", "",
             "| size | method | time | vs dd | peak extra RSS |", "|---|---|---|---|---|"]
    save = sec["rows"]
    for r in save:
        dd = one(save, layout=r["layout"], method="dd-fsync")
        lines.append(f"| {size_of(r['layout'])} MiB | {r['method']} | {secs(r['seconds'])} | "
                     f"{r['seconds'] / dd['seconds']:.2f}x | {mib(r['peak_rss_bytes'])} |")
    return lines


def merges_md(sec):
    merge = sec["rows"]
    if not merge:
        return []
    lines = ["## Offline merges", "", *provenance(sec, RUN_PY_PEERS), "",
             f"A base of {size_of(merge[0]['layout'])} MiB in 64 MiB F32 tensors, sharded (500 MB shards); a "
             "delta of the same shape, also sharded; a rank-16 PEFT adapter on every weight. Outputs are "
             "sharded and fsynced (the Python recipes write one file and fsync it). Each method ran several "
             "times, in turn with the floor (reading the inputs once and writing the output once with `dd "
             "conv=fsync`), after one untimed round of everything: this machine's write speed varies from "
             "run to run (the first writes through never-used memory are the slowest), so the medians are "
             "compared. "
             "Peak RSS is the whole process's, from `/usr/bin/time -v`, and includes LibTorch's own ~160 MiB. "
             "lorakeep reads and computes each 256 KiB piece on one thread while the calling thread writes "
             "and hashes the piece before. "
             "The Python recipes load everything whole (FastChat's `apply_delta`; W += s * B @ A for LoRA).",
             "", "| method | time (median) | runs | peak RSS |", "|---|---|---|---|"]
    for r in merge:
        runs = ", ".join(secs(t) for t in r["seconds_all"])
        lines.append(f"| {r['method']} | {secs(r['seconds'])} | {runs} | {mib(r['peak_rss_bytes'])} |")
    return lines


def scale_md(sec):
    rows = sec["rows"]
    merges = [r for r in rows if r["method"].startswith("lorakeep")]
    recipes = [r for r in rows if not r["method"].startswith("lorakeep")]
    gb = lambda b: f"{b / 1e9:.2f} GB"
    lines = ["## Scale: merges of a 7B-shaped model, cold", "", *provenance(sec, RUN_PY_PEERS),
             f"- page cache: {'dropped (`/proc/sys/vm/drop_caches`)' if sec.get('caches') == 'drop_caches' else 'the inputs evicted with `posix_fadvise(DONTNEED)` (not root, or a smoke run)'} before every run",
             f"- Python recipes' memory limit: {sec.get('recipe_memory_limit', 'n/a')}; idle RSS of `lorakeep --version`: "
             f"{mib(sec.get('idle_rss_bytes', -1))}", "", sec.get("note", ""), "",
             "| model | command | time (median) | floor (median) | ratio (median) | pair ratios | "
             "peak RSS above idle | bound |", "|---|---|---|---|---|---|---|---|"]
    for r in merges:
        bound = merge_rss_bound(r)
        lines.append(f"| {r['layout']} ({gb(r['model_bytes'])}) | {r['method']} | {secs(r['seconds'])} | "
                     f"{secs(r['floor_seconds'])} | {r['ratio']:.2f}x | "
                     f"{', '.join(f'{x:.2f}' for x in r['ratios'])} | {above_idle(r['peak_rss_above_idle_bytes'])} | "
                     f"{mib(bound)} |")
    if recipes:
        killed = any(r["ended"].startswith("killed") for r in recipes)
        lines += ["", "What Python users run instead, once each, in the memory limit above"
                  + (" (killed by signal 9: the limit's OOM killer stopped it; the time is until then)" if killed else "")
                  + ". Their peak RSS counts the pages of the model files that `safetensors` maps copy-on-write: "
                  "under the limit the kernel can drop those not written and read them again, so a recipe whose "
                  "inputs do not fit may still finish.", "",
                  "| model | recipe | time | peak RSS | outcome |", "|---|---|---|---|---|"]
        for r in recipes:
            lines.append(f"| {r['layout']} ({gb(r['model_bytes'])}) | {r['method']} | {secs(r['seconds'])} | "
                         f"{mib(r['peak_rss_bytes'])} | {r['ended']} |")
    points = {}
    for r in merges:
        points.setdefault(r["method"], []).append((r["model_bytes"] / (1 << 30), r["seconds"]))
        points.setdefault(f"floor of {r['method'][len('lorakeep '):]}", []).append(
            (r["model_bytes"] / (1 << 30), r["floor_seconds"]))
    sizes = sorted({r["model_bytes"] for r in merges})
    if len(sizes) >= 2:
        lines += ["", "### How cost grows (cold merges)", "",
                  "A least-squares line through the model sizes measured ("
                  + ", ".join(gb(b) for b in sizes) + "; the medians above): time = fixed + slope x size.", "",
                  "| operation | slope (s per GiB of model) | fixed cost (s) |", "|---|---|---|"]
        for name, pts in points.items():
            fixed, slope = linear_fit(pts)
            lines.append(f"| {name} | {slope:.2f} | {fixed:.2f} |")
    return lines


def cell(key, value):
    """One value of a generic table. Units follow the key's name, as in
    bench/run.py's rows: *_bytes in MiB, seconds and *_seconds in ms or s."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(cell(key, v) for v in value)
    if isinstance(value, (int, float)):
        if key.endswith("_bytes"):
            return mib(value)
        if key == "seconds" or key.startswith("seconds_") or key.endswith("_seconds"):
            return secs(value)
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {cell(k, v)}" for k, v in value.items()).replace("|", "\\|")
    return str(value).replace("|", "\\|").replace("\n", " ")


def generic_table(rows):
    """A table of a list of dicts: one column per key, in the order the keys
    first appear, so a command chooses its columns by what it writes."""
    if not rows:
        return ["(no rows)"]
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(cell(k, r.get(k)) for k in keys) + " |")
    return lines


# Keys every section may carry that generic_md renders in its own way.
COMMON_KEYS = {"command", "date", "machine", "libtorch", "title", "note", "rows"}


def generic_md(name, sec, title=None):
    """Any section written by another command: its provenance, its other
    top-level values, its note and a table of its rows."""
    lines = [f"## {sec.get('title') or title or name}", "", *provenance(sec)]
    lines += [f"- {k}: {cell(k, v)}" for k, v in sec.items() if k not in COMMON_KEYS]
    if sec.get("note"):
        lines += ["", sec["note"]]
    return lines + [""] + generic_table(sec.get("rows", []))


GPU_COMMAND = "scripts/gpu-check.sh"

# The reload onto a device with 1 MiB free: one table per device.
DEVICE_RELOAD = (("device_reload", "the test device", "bench/run.sh --sections device_reload"),
                 ("gpu_device_reload", "CUDA", GPU_COMMAND))


def device_reload_md(sections):
    if not any(name in sections for name, _, _ in DEVICE_RELOAD):
        return []
    lines = ["## Reload onto a device with 1 MiB free", "",
             "Trainer's end-of-training reload of the best adapter (every tensor of the adapter onto the device, "
             "then `copy_` into the live parameters, as in transformers #44660) against lorakeep's "
             "`CheckpointManager::load_best_into`, with the live model resident on the device and 1 MiB left free "
             "(`bench/device/device_reload.cpp`; each method in a process of its own). Then, with the device's "
             "memory free (measured first, in a fresh process), what each takes: extra device bytes counted at the "
             "device's allocator and extra host bytes at LibTorch's CPU allocator (both lorakeep's "
             "`AllocationProbe`, peak above the level before), and the process's peak RSS above its level before "
             "(the naive reload maps the file, as safetensors does, so its pages count; on the test device the "
             "device's own bytes, which live in host RAM, are subtracted). The model: `LoraLinear(1024, 1024)` "
             "layers with rank 256, 2 MiB of F32 factors each, in 1 MiB tensors."]
    for name, where, command in DEVICE_RELOAD:
        sec = sections.get(name)
        lines += ["", f"### On {where}", ""]
        if not sec:
            lines.append(f"Not run yet: `{command}` writes it into the `{name}` section of `bench/results.json`.")
            continue
        lines += provenance(sec)
        lines.append(f"- device: {sec['device']} (`{sec['device_name']}`)")
        lines += ["", "| adapter | method | with 1 MiB free | extra device bytes | extra host bytes (allocator) "
                      "| extra RSS | seconds | restores the best bitwise |", "|---|---|---|---|---|---|---|---|"]
        for r in sec["rows"]:
            tight = r["tight_outcome"]
            if tight == "ok" and r["tight_bitwise_equal"]:
                tight += ", bitwise equal"
            elif tight != "ok":
                tight += f" after {mib(r['tight_bytes_on_device'])} on the device"
            lines.append(f"| {mib(r['adapter_bytes'])} | {r['method']} | {tight} | {mib(r['extra_device_bytes'])} | "
                         f"{mib(r['extra_host_alloc_bytes'])} | {mib(r['extra_rss_bytes'])} | {secs(r['seconds'])} | "
                         f"{cell('', r['bitwise_equal'])} |")
    return lines


def gpu_md(sec):
    if sec:
        return generic_md("gpu", sec, "GPU check")
    return ["## GPU check", "",
            f"The GPU check has not been run on a GPU yet. `{GPU_COMMAND}`, run on a machine with a CUDA GPU, "
            "writes it into the `gpu` section of `bench/results.json` and this section; no other figure here "
            "changes."]


# The order of the sections in BENCHMARKS.md; sections of other names follow,
# by name. "gpu" renders even when absent, to say it has not been run.
ORDER = ("reloads", "saves", "merges", "async_saves", "scale", "device_reload", "gpu")
TITLES = {"async_saves": "Asynchronous saves"}


def section_md(name, sections):
    sec = sections.get(name)
    if name == "gpu":
        return gpu_md(sec)
    if name == "device_reload":
        return device_reload_md(sections)
    if name == "gpu_device_reload":
        return []  # with device_reload
    if sec is None:
        return []
    known = {"reloads": reloads_md, "saves": saves_md, "merges": merges_md, "scale": scale_md}
    if name in known:
        return known[name](sec)
    return generic_md(name, sec, TITLES.get(name))


# What bench/run.sh --scale takes here, measured.
SCALE_COST = "about 45 GB of disk and 17 to 19 minutes"  # measured on 2026-12-03: 18.5 and 16.7 minutes


def rerun_lines(sections):
    """The commands that produced the sections present, once each."""
    commands = ["bench/run.sh          # every section but scale: about 18 minutes on 2 cores (device_reload: 43 s)",
                "bench/run.sh --sections merges   # one of them alone; every other section stays",
                f"bench/run.sh --scale  # the 7B-shaped merges, cold: {SCALE_COST}"]
    seen = {"bench/run.sh"}
    for sec in sections.values():
        cmd = sec["command"]
        if cmd not in seen and not cmd.startswith("bench/run.sh"):
            seen.add(cmd)
            commands.append(cmd)
    if "gpu" not in sections:
        commands.append(f"{GPU_COMMAND}  # the GPU check, on a machine with a GPU")
    commands.append("python3 bench/results.py --render-only   # this file again from bench/results.json")
    return ["## How to rerun", "", "```sh", *commands, "```", ""]


def markdown(sections):
    """BENCHMARKS.md from every section present."""
    lines = [
        "# Benchmarks",
        "",
        "Each section below comes from one command, named at its head, which measures lorakeep side by side "
        "with what users would pick instead, in the same run, each method in its own process. Raw figures: "
        "`bench/results.json`, one section per command; a command replaces only its own section "
        "(`bench/results.py`), so rerunning one never erases another's figures. Nothing here is asserted in "
        "CI; CI runs `bench/run.py --smoke` with tiny sizes so the code keeps working.",
    ]
    goals = targets(sections)
    if goals:
        lines += ["", "## Targets", "", goals]
    names = [n for n in ORDER] + sorted(n for n in sections if n not in ORDER)
    for name in names:
        body = section_md(name, sections)
        if body:
            lines += [""] + body
    lines += [""] + rerun_lines(sections)
    return "\n".join(lines)
