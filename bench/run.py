"""Runs every benchmark side by side with its peers and writes
bench/results.json, the tables of BENCHMARKS.md and bench/scaling.svg.

  python3 bench/run.py --build build-release            # the full matrix (bench/run.sh)
  python3 bench/run.py --build build --smoke --out DIR  # tiny sizes, to keep the code alive (CI)

Each measurement is a separate process (bench/bench_main.cpp or
bench/peers.py) printing one JSON object, so peak RSS is per method.
"""
import argparse
import datetime
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

FULL = {
    "reload_sizes": [16, 64, 256, 512, 1024, 2048],
    "reload_repeat": 5,
    "tiny": 10000,
    "save_sizes": [64, 512],
    "save_repeat": 3,
    "merge_mib": 2048,
}
SMOKE = {
    "reload_sizes": [4],
    "reload_repeat": 1,
    "tiny": 100,
    "save_sizes": [4],
    "save_repeat": 1,
    "merge_mib": 8,
}


class Runner:
    def __init__(self, build, python, work):
        self.bench = os.path.join(build, "bench", "lorakeep_bench")
        self.cli = os.path.join(build, "src", "lorakeep")
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
    """Runs a command under /usr/bin/time -v: (seconds, peak RSS bytes)."""
    t0 = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{argv} failed: {out.stderr[-2000:]}")
    rss = 0
    for line in out.stderr.splitlines():
        if "Maximum resident set size" in line:
            rss = int(line.split()[-1]) * 1024
    return seconds, rss


def reload_matrix(r, cfg, log):
    rows = []
    layouts = [(f"adapter:{mib}", "F32") for mib in cfg["reload_sizes"]]
    layouts += [(f"adapter:{mib}", "BF16") for mib in cfg["reload_sizes"]]
    layouts.append((f"tiny:{cfg['tiny']}", "F32"))
    for layout, dtype in layouts:
        st = r.path("reload.safetensors")
        binf = r.path("reload.bin")
        subprocess.run([r.bench, "make", "--layout", layout, "--dtype", dtype, "--out", st, "--bin", binf],
                       check=True)
        rep = str(cfg["reload_repeat"])
        methods = ["lorakeep", "lorakeep-verify", "naive"]
        if dtype == "F32":
            methods.insert(0, "memcpy")
        for m in methods:
            res = r.bench_cmd("reload", "--layout", layout, "--file", st, "--method", m, "--repeat", rep)
            res.update(file_dtype=dtype)
            rows.append(res)
            log(res)
        for m, f in (("torch-load", binf), ("safetensors", st)):
            res = r.peer("reload", "--method", m, "--layout", layout, "--file", f, "--repeat", rep)
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
    rows = []
    mib = cfg["merge_mib"]
    layout = f"base:{mib}"
    base = r.path("base.safetensors")
    delta = r.path("delta.safetensors")
    subprocess.run([r.bench, "make", "--layout", layout, "--out", base], check=True)
    subprocess.run([r.bench, "make", "--layout", layout, "--out", delta], check=True)
    largest = 64 * MIB if mib >= 64 else mib * MIB
    inputs = os.path.getsize(base) + os.path.getsize(delta)

    def add(method, seconds, rss, **extra):
        res = {"method": method, "layout": layout, "param_bytes": mib * MIB, "seconds": seconds,
               "peak_rss_bytes": rss, "largest_tensor_bytes": largest, "input_bytes": inputs}
        res.update(extra)
        rows.append(res)
        log(res)

    out = r.path("merged")
    s, rss = timed_rss([r.cli, "merge-delta", "--base", base, "--delta", delta, "--out", out,
                        "--max-shard-size", "500MB"])
    add("lorakeep merge-delta", s, rss)
    shutil.rmtree(out)
    s, rss = timed_rss([r.cli, "make-delta", "--base", base, "--tuned", delta, "--out", out,
                        "--dtype", "F32", "--max-shard-size", "500MB"])
    add("lorakeep make-delta", s, rss)
    shutil.rmtree(out)
    s, rss = timed_rss([r.python, os.path.join(HERE, "peers.py"), "merge-fastchat", "--base", base, "--delta", delta,
                        "--out", out])
    add("python fastchat recipe", s, rss)
    shutil.rmtree(out)
    # The floor: read both inputs once and write the output once, with fsync.
    t0 = time.perf_counter()
    subprocess.run(["cat", base, delta], check=True, stdout=subprocess.DEVNULL)
    os.makedirs(out)
    subprocess.run(["dd", "if=/dev/zero", f"of={out}/o", "bs=1M", f"count={mib}", "conv=fsync"], check=True,
                   capture_output=True)
    add("read inputs + write output once", time.perf_counter() - t0, -1)
    shutil.rmtree(out)
    os.remove(base)
    os.remove(delta)
    return rows


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    torch_version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libtorch-dev"], capture_output=True,
                                   text=True).stdout
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem, "kernel": platform.release(),
            "libtorch": torch_version}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    p.add_argument("--python", default=None)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=HERE, help="where results.json (and, unless --smoke, the report) go")
    p.add_argument("--work", default=None)
    args = p.parse_args()
    cfg = SMOKE if args.smoke else FULL
    python = args.python or os.path.join(ROOT, "build", "venv", "bin", "python")
    work = args.work or os.path.join(args.out, "bench-work")
    os.makedirs(work, exist_ok=True)
    r = Runner(args.build, python, work)

    def log(res):
        print(json.dumps(res), file=sys.stderr, flush=True)

    results = {
        "command": "bench/run.sh" + (" --smoke" if args.smoke else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "reload": reload_matrix(r, cfg, log),
        "save": save_matrix(r, cfg, log),
        "merge": merge_matrix(r, cfg, log),
    }
    shutil.rmtree(work, ignore_errors=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    sys.path.insert(0, HERE)
    import report

    if not args.smoke:
        report.write(results, os.path.join(ROOT, "BENCHMARKS.md"), os.path.join(HERE, "scaling.svg"))
    else:
        report.write(results, os.path.join(args.out, "BENCHMARKS.md"), os.path.join(args.out, "scaling.svg"))
    print("wrote", os.path.join(args.out, "results.json"))


if __name__ == "__main__":
    main()
