"""Runs every benchmark side by side with its peers and writes its sections
of bench/results.json ("reloads", "saves", "merges", "async_saves"; any other
section stays as it was), then BENCHMARKS.md and bench/scaling.svg from all
sections.

  python3 bench/run.py --build build-release            # the full matrix (bench/run.sh)
  python3 bench/run.py --build build-release --sections merges   # one section alone
  python3 bench/run.py --build build-release --scale    # the "scale" section alone (bench/scale.py):
                                                        # a 7B-shaped model, about 45 GB of disk
  python3 bench/run.py --build build --smoke --out DIR  # tiny sizes, to keep the code alive (CI);
                                                        # writes only under DIR

Each measurement is a separate process (bench/bench_main.cpp or
bench/peers.py) printing one JSON object, so peak RSS is per method.
"""
import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MIB = 1 << 20
sys.path.insert(0, HERE)
import measure  # noqa: E402
import results as results_json  # noqa: E402
import scale  # noqa: E402

FULL = {
    "reload_sizes": [16, 64, 256, 512, 1024, 2048],
    "reload_repeat": 5,
    "reload_budget_mib": 512,
    "reload_rounds": 3,
    "tiny": 10000,
    "embedding_mib": 1024,
    "save_sizes": [64, 512],
    "async_sizes": [64, 512],
    "save_repeat": 3,
    "merge_mib": 2048,
    "merge_repeat": 5,
    "merge_warmup": True,
    "device_sizes": [16, 64, 256, 1024],
}
SMOKE = {
    "reload_sizes": [4],
    "reload_repeat": 1,
    "reload_budget_mib": 0,
    "reload_rounds": 1,
    "tiny": 100,
    "embedding_mib": 4,
    "save_sizes": [4],
    "async_sizes": [16],
    "save_repeat": 1,
    "merge_mib": 8,
    "merge_repeat": 1,
    "merge_warmup": False,
    "device_sizes": [4],
}


class Runner:
    def __init__(self, build, python, work):
        self.bench = os.path.join(build, "bench", "lorakeep_bench")
        self.cli = os.path.join(build, "src", "lorakeep")
        self.device_bench = os.path.join(build, "bench", "lorakeep_device_bench")
        self.python = python
        self.work = work

    def run_json(self, argv):
        out = subprocess.run(argv, check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def bench_cmd(self, *args):
        return self.run_json([self.bench, *args])

    def peer(self, *args):
        return self.run_json([self.python, os.path.join(HERE, "peers.py"), *args])

    def path(self, name):
        return os.path.join(self.work, name)


def timed_rss(argv):
    """(seconds, peak RSS bytes) of a command that must succeed."""
    seconds, rss, code, ended = measure.timed_rss(argv)
    if code != 0:
        raise RuntimeError(f"{argv} failed: {ended}")
    return seconds, rss


def reload_repeat(cfg, mib):
    """Runs per method at `mib` MiB: a few milliseconds per run is noisy, so
    small sizes run until each method has read about reload_budget_mib
    (between reload_repeat and 31 runs; the median is reported)."""
    return max(cfg["reload_repeat"], min(31, cfg["reload_budget_mib"] // max(1, mib)))


def combine_rounds(results):
    """One row from a method's rounds: the median of the rounds' medians, the
    least time seen, the highest memory seen."""
    times = sorted(res["seconds"] for res in results)
    row = dict(results[0])
    row.update(seconds=times[len(times) // 2], seconds_rounds=times,
               seconds_min=min(res["seconds_min"] for res in results),
               repeat=sum(int(res["repeat"]) for res in results))
    for key in ("peak_rss_bytes", "peak_alloc_bytes"):
        row[key] = max(res[key] for res in results)
    return row


def reload_matrix(r, cfg, log):
    """Every method in turn, `reload_rounds` times over, each round a process
    of its own: a slow spell of this shared machine then lands in one round
    of every method rather than in all the runs of one."""
    rows = []
    layouts = [(f"adapter:{mib}", "F32", mib) for mib in cfg["reload_sizes"]]
    layouts += [(f"adapter:{mib}", "BF16", mib) for mib in cfg["reload_sizes"]]
    layouts.append((f"tiny:{cfg['tiny']}", "F32", cfg["tiny"] * 512 // MIB))
    layouts.append((f"embedding:{cfg['embedding_mib']}", "F32", cfg["embedding_mib"]))
    rounds = cfg["reload_rounds"]
    for layout, dtype, mib in layouts:
        st = r.path("reload.safetensors")
        binf = r.path("reload.bin")
        subprocess.run([r.bench, "make", "--layout", layout, "--dtype", dtype, "--out", st, "--bin", binf],
                       check=True)
        rep = str(max(1, -(-reload_repeat(cfg, mib) // rounds)))
        methods = ["lorakeep", "lorakeep-verify", "naive"]
        if dtype == "F32":
            methods[:0] = ["memcpy", "memcpy-all-cores"]
        runs = {}
        for _ in range(rounds):
            for m in methods:
                runs.setdefault(m, []).append(
                    r.bench_cmd("reload", "--layout", layout, "--file", st, "--method", m, "--repeat", rep))
            for m, f in (("torch-load", binf), ("safetensors", st)):
                runs.setdefault(m, []).append(
                    r.peer("reload", "--method", m, "--layout", layout, "--file", f, "--repeat", rep))
        for results in runs.values():
            res = combine_rounds(results)
            res.update(file_dtype=dtype)
            rows.append(res)
            log(res)
        os.remove(st)
        os.remove(binf)
    return rows


def save_matrix(r, cfg, log):
    rows = []
    for mib in cfg["save_sizes"]:
        layout = f"adapter:{mib}"
        d = r.path("save")
        rep = str(cfg["save_repeat"])
        for m in ("lorakeep", "torch-save"):
            os.makedirs(d, exist_ok=True)
            res = r.bench_cmd("save", "--layout", layout, "--dir", d, "--method", m, "--repeat", rep)
            rows.append(res)
            log(res)
            shutil.rmtree(d)
        os.makedirs(d, exist_ok=True)
        res = r.peer("save", "--layout", layout, "--dir", d, "--repeat", rep)
        res["method"] = "python-torch-save"
        rows.append(res)
        log(res)
        shutil.rmtree(d)
        # The device limit: the same number of bytes through dd with an fsync.
        os.makedirs(d, exist_ok=True)
        times = []
        for i in range(int(rep)):
            t0 = time.perf_counter()
            subprocess.run(["dd", "if=/dev/zero", f"of={d}/dd-{i}", "bs=1M", f"count={mib}", "conv=fsync"],
                           check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        times.sort()
        res = {"method": "dd-fsync", "layout": layout, "param_bytes": mib * MIB, "seconds": times[len(times) // 2],
               "seconds_min": times[0], "peak_rss_bytes": -1, "peak_alloc_bytes": -1, "repeat": int(rep)}
        rows.append(res)
        log(res)
        shutil.rmtree(d)
    return rows


def merge_matrix(r, cfg, log):
    """Offline merges on a sharded base, each method run `merge_repeat` times
    in turn with the floor (reading the inputs and writing the output once),
    medians reported: this machine's write speed varies from run to run."""
    mib = cfg["merge_mib"]
    layout = f"base:{mib}"
    base, delta, adapter = r.path("base"), r.path("delta"), r.path("adapter")
    shard = "500MB" if mib >= 512 else "2MB"
    subprocess.run([r.bench, "make", "--layout", layout, "--out", base, "--shard", shard], check=True)
    subprocess.run([r.bench, "make", "--layout", layout, "--out", delta, "--shard", shard], check=True)
    subprocess.run([r.bench, "make-adapter", "--layout", layout, "--out", adapter, "--r", "16"], check=True)
    largest = min(64, mib) * MIB
    size = measure.dir_bytes
    inputs = {"delta": size(base) + size(delta), "lora": size(base) + size(adapter)}
    out = r.path("merged")
    peers = [r.python, os.path.join(HERE, "peers.py")]
    methods = [
        ("lorakeep merge-delta", "delta",
         [r.cli, "merge-delta", "--base", base, "--delta", delta, "--out", out, "--max-shard-size", "500MB"]),
        ("lorakeep make-delta", "delta",
         [r.cli, "make-delta", "--base", base, "--tuned", delta, "--out", out, "--dtype", "F32",
          "--max-shard-size", "500MB"]),
        ("python FastChat recipe (apply_delta)", "delta", peers + ["merge-fastchat", "--base", base, "--delta", delta,
                                                                  "--out", out]),
        ("lorakeep merge-lora", "lora",
         [r.cli, "merge-lora", "--base", base, "--adapter", adapter, "--out", out, "--max-shard-size", "500MB"]),
        ("python merge-lora recipe", "lora", peers + ["merge-lora", "--base", base, "--adapter", adapter,
                                                      "--out", out]),
    ]
    samples = {name: [] for name, _, _ in methods}
    floors = {"delta": [], "lora": []}
    # One untimed round first: on a fresh VM the first writes through
    # never-used memory are several times slower for whichever method runs
    # first.
    warmup = int(cfg["merge_warmup"])
    for round_ in range(warmup + cfg["merge_repeat"]):
        timed = round_ >= warmup
        for name, kind, argv in methods:
            sample = timed_rss(argv)
            if timed:
                samples[name].append(sample)
            shutil.rmtree(out)
        for kind, inputs_dirs in (("delta", [base, delta]), ("lora", [base, adapter])):
            seconds = measure.floor_run(measure.files_of(inputs_dirs), out, mib * MIB)
            if timed:
                floors[kind].append(seconds)
            shutil.rmtree(out)
    rows = []
    for name, kind, _ in methods:
        times = sorted(s[0] for s in samples[name])
        res = {"method": name, "kind": kind, "layout": layout, "param_bytes": mib * MIB,
               "seconds": times[len(times) // 2], "seconds_all": times,
               "peak_rss_bytes": max(s[1] for s in samples[name]), "largest_tensor_bytes": largest,
               "input_bytes": inputs[kind]}
        rows.append(res)
        log(res)
    for kind, times in floors.items():
        times = sorted(times)
        res = {"method": f"read inputs + write output once ({kind})", "kind": kind, "layout": layout,
               "param_bytes": mib * MIB, "seconds": times[len(times) // 2], "seconds_all": times,
               "peak_rss_bytes": -1, "largest_tensor_bytes": largest, "input_bytes": inputs[kind]}
        rows.append(res)
        log(res)
    for d in (base, delta, adapter):
        shutil.rmtree(d)
    return rows


PAGE_REPORTING = "/sys/module/page_reporting/parameters/min_free_ms"


@contextlib.contextmanager
def delayed_page_reporting(ms):
    """Where the kernel reports freed memory to the hypervisor at once
    (free page reporting with min_free_ms 0, as on this project's VMs), every
    write into recycled memory pays a page fault in the host: the same
    `dd conv=fsync` of 2 GiB took 1.2 s or 5.2 s, whichever pages it got.
    During the run freed pages are reported only after `ms` (root only),
    which measures the programs rather than the hypervisor; the setting is
    restored after. Yields {"before", "during"} in ms, or None if untouched."""
    try:
        with open(PAGE_REPORTING) as f:
            before = int(f.read())
        with open(PAGE_REPORTING, "w") as f:
            f.write(str(max(before, ms)))
    except (OSError, ValueError):
        yield None
        return
    try:
        yield {"before": before, "during": max(before, ms)}
    finally:
        with open(PAGE_REPORTING, "w") as f:
            f.write(str(before))


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": measure.total_memory(), "kernel": platform.release()}


def async_save_matrix(r, cfg, log):
    rows = []
    for mib in cfg["async_sizes"]:
        d = r.path("async")
        os.makedirs(d, exist_ok=True)
        res = r.bench_cmd("async-save", "--mib", str(mib), "--dir", d, "--repeat", str(cfg["save_repeat"]))
        rows.append(res)
        log(res)
        shutil.rmtree(d)
    return rows


def device_reload_matrix(r, cfg, log):
    """Trainer's reload against lorakeep's onto lorakeep's test device with
    1 MiB free (bench/device/device_reload.h: each method a process of its
    own). The program checks the claim itself and fails when it does not hold."""
    out = r.path("device_reload.json")
    subprocess.run([r.device_bench, "sweep", "--mib", ",".join(map(str, cfg["device_sizes"])),
                    "--work", r.path("device"), "--json", out], check=True)
    with open(out) as f:
        measured = json.load(f)
    for row in measured["rows"]:
        log(row)
    measured.pop("date", None)  # the section's own, set by main()
    return measured


# The sections of bench/results.json this script measures, in order.
MATRICES = {"reloads": reload_matrix, "saves": save_matrix, "merges": merge_matrix, "async_saves": async_save_matrix,
            "device_reload": device_reload_matrix}
# Measured only when asked for (--scale), and by every smoke run.
OPT_IN = {"scale": lambda r, cfg, log: scale.scale_matrix(r, log, smoke=cfg is SMOKE)}


def sections_arg(text):
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in MATRICES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"sections are {', '.join(MATRICES)}; not {', '.join(unknown) or text!r}")
    return [n for n in MATRICES if n in names]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    p.add_argument("--python", default=None)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=HERE, help="where results.json (and, with --smoke, the report) go")
    p.add_argument("--work", default=None)
    p.add_argument("--sections", type=sections_arg, default=list(MATRICES),
                   help="which of reloads,saves,merges,async_saves,device_reload to measure (default all); the others stay as they were")
    p.add_argument("--scale", action="store_true",
                   help="measure the scale section alone (7B-shaped merges, cold; about 45 GB of disk under --work)")
    args = p.parse_args()
    if args.scale:
        args.sections = ["scale"]
    elif args.smoke:
        args.sections = args.sections + list(OPT_IN)
    cfg = SMOKE if args.smoke else FULL
    python = args.python or os.path.join(ROOT, "build", "venv", "bin", "python")
    work = args.work or os.path.join(args.out, "bench-work")
    os.makedirs(work, exist_ok=True)
    r = Runner(args.build, python, work)

    def log(res):
        print(json.dumps(res), file=sys.stderr, flush=True)

    # bench/run.sh builds build-release and runs this; another build tree is named.
    default_build = os.path.abspath(args.build) == os.path.join(ROOT, "build-release")
    command = ("bench/run.sh" if default_build or args.smoke
               else f"python3 bench/run.py --build {os.path.relpath(os.path.abspath(args.build), ROOT)}")
    command += (" --smoke" if args.smoke else "") + (" --scale" if args.scale else "")
    chosen = [n for n in args.sections if n in MATRICES]
    if not args.scale and chosen != list(MATRICES):
        command += " --sections " + ",".join(chosen)
    libtorch = results_json.libtorch_of(args.build)
    sections = {}
    # The smoke run (CI) leaves the machine's settings alone.
    with delayed_page_reporting(60000) if not args.smoke else contextlib.nullcontext() as reporting:
        for name in args.sections:
            measured = {**MATRICES, **OPT_IN}[name](r, cfg, log)
            sections[name] = {"command": command, "date": results_json.now(), "libtorch": libtorch,
                              "machine": dict(machine(), page_reporting_min_free_ms=reporting),
                              **(measured if isinstance(measured, dict) else {"rows": measured})}
    shutil.rmtree(work, ignore_errors=True)
    path = os.path.join(args.out, "results.json")
    # Smoke runs write only under --out, wherever that is.
    md, svg = (os.path.join(args.out, "BENCHMARKS.md"), os.path.join(args.out, "scaling.svg")) if args.smoke \
        else (None, None)
    results_json.update_sections(path, sections, md, svg)
    print("wrote", path)


if __name__ == "__main__":
    main()
