"""The "scale" section of bench/results.json (bench/run.sh --scale): the
offline merges on a Llama-2-7B-shaped BF16 model, read cold from real disk,
each run in turn with its floor, and the Python recipes under a memory limit.

For every model size (decoder layers; 32 is Llama-2-7B: 13.5 GB in 4 shards
of at most 4 GiB):
- a base, a second model of the same shape (the delta of merge-delta, the
  tuned model of make-delta) and a rank-16 PEFT adapter on all 7 linear
  layers of every decoder layer are generated;
- `lorakeep merge-lora`, `merge-delta` and `make-delta --dtype BF16` each run
  `pairs` times in interleaved pairs with the floor (the inputs read once with
  `cat`, the output's bytes written once with `dd conv=fsync`), the order
  alternating, the page cache dropped before every run: a pair's ratio is the
  method's time over the floor's, and the median ratio is reported with the
  spread, since this shared disk's speed moves by tens of percent between
  minutes;
- the Python recipes (a full load then merge, FastChat's apply_delta) run
  once, in a memory cgroup of their own (prlimit's data limit where no cgroup
  can be made), so that only they can be killed for memory.
Every file is removed when done, or interrupted.
"""
import contextlib
import os
import shutil
import signal
import subprocess
from statistics import median

from measure import dir_bytes, files_of, floor_run, timed_rss, total_memory

GIB = 1 << 30

FULL = {"layers": [4, 32], "dims": "", "shard": "4GiB", "pairs": 3, "rank": 16, "drop_caches": True}
SMOKE = {"layers": [1, 2], "dims": ":64:172:320", "shard": "100KB", "pairs": 1, "rank": 4, "drop_caches": False}


def llama_bytes(layers, dims):
    """(whole model, largest tensor) in bytes of lorakeep_bench's BF16
    layout llama:<layers><dims> (bench_main.cpp; dims ":H:M:V" or "" for
    Llama-2-7B's)."""
    h, m, v = (4096, 11008, 32000) if not dims else (int(x) for x in dims[1:].split(":"))
    params = 2 * v * h + layers * (4 * h * h + 3 * h * m + 2 * h) + h
    return 2 * params, 2 * max(v * h, h * m)


class Caches:
    """Cold reads: the whole page cache dropped as root (sync, then
    /proc/sys/vm/drop_caches), else the inputs' own pages evicted with
    posix_fadvise(DONTNEED), which any user may do on files they can read."""

    def __init__(self, allowed):
        self.how = "fadvise"
        if allowed:
            try:
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3")
                self.how = "drop_caches"
            except OSError:
                pass

    def drop(self, files):
        subprocess.run(["sync"], check=True)
        if self.how == "drop_caches":
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3")
            return
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


class MemoryLimit:
    """A command line prefix that runs a command with at most `limit` bytes
    of memory: a memory cgroup of its own under this process's (v1 or v2),
    so that the OOM killer, if it comes, kills only that command; else
    prlimit's data limit (the allocation fails in the command itself)."""

    def __init__(self, limit, name):
        self.limit = limit
        self.cgroup = None
        for line in open("/proc/self/cgroup"):
            hier, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers == "memory":
                root, limit_file = "/sys/fs/cgroup/memory", "memory.limit_in_bytes"
            elif hier == "0" and controllers == "":
                root, limit_file = "/sys/fs/cgroup/unified" if os.path.isdir(
                    "/sys/fs/cgroup/unified") else "/sys/fs/cgroup", "memory.max"
            else:
                continue
            d = os.path.join(root + path, name)
            try:
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, limit_file), "w") as f:
                    f.write(str(limit))
                swap = os.path.join(d, "memory.swap.max")
                if os.path.exists(swap):
                    with open(swap, "w") as f:
                        f.write("0")
                self.cgroup = d
                self.how = f"memory cgroup ({limit_file} = {limit / GIB:.0f} GiB)"
                break
            except OSError:
                with contextlib.suppress(OSError):
                    os.rmdir(d)
        if self.cgroup is None:
            self.how = f"prlimit --data={limit / GIB:.0f} GiB"

    def argv(self, argv):
        if self.cgroup:
            procs = os.path.join(self.cgroup, "cgroup.procs")
            return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *argv]
        return ["prlimit", f"--data={self.limit}", *argv]

    def close(self):
        if self.cgroup:
            with contextlib.suppress(OSError):
                os.rmdir(self.cgroup)








def scale_matrix(r, log, smoke):
    sc = SMOKE if smoke else FULL
    work = r.path("scale")
    need = 3 * llama_bytes(max(sc["layers"]), sc["dims"])[0] + 2 * GIB
    os.makedirs(work, exist_ok=True)
    free = shutil.disk_usage(work).free
    if free < need:
        raise SystemExit(f"bench/run.sh --scale needs {need / 1e9:.1f} GB free under {work}; "
                         f"{free / 1e9:.1f} GB are (hint: --work DIR on a larger disk)")
    # Interrupted (Ctrl-C, or a kill with SIGTERM): the files go all the same.
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    caches = Caches(sc["drop_caches"])
    limit = MemoryLimit(min(20 * GIB, int(0.85 * total_memory())), f"lorakeep-bench-{os.getpid()}")
    try:
        rows = []
        idle = timed_rss([r.cli, "--version"])[1]
        for layers in sc["layers"]:
            rows += one_size(r, sc, layers, work, caches, limit, idle, log)
        return {"rows": rows, "caches": caches.how, "recipe_memory_limit": limit.how, "idle_rss_bytes": idle,
                "note": note(sc)}
    finally:
        limit.close()
        shutil.rmtree(work, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def note(sc):
    """What the section measured, for BENCHMARKS.md."""
    dims = f"hidden, MLP and vocabulary {sc['dims'][1:].replace(':', ', ')}" if sc["dims"] else \
        "hidden 4096, MLP 11008, vocabulary 32000"
    return (f"A Llama-2-7B-shaped BF16 model (`llama:L`: L decoder layers, {dims}, Hugging Face's tensor names; "
            f"L = 32 at 7B's sizes is Llama-2-7B) in shards of at most {sc['shard']}; a second model of the same "
            "shape (the delta of merge-delta, the tuned model of make-delta, which writes a BF16 delta); a "
            f"rank-{sc['rank']} PEFT adapter on all 7 linear layers of every decoder layer. "
            f"Cold (see the page cache above). Each lorakeep command ran in interleaved pairs ({sc['pairs']}) "
            "with its floor (reading every input byte once with `cat`, then writing the output's bytes once with "
            "`dd conv=fsync`), the order alternating; a pair's ratio is the command's time over the floor's. Peak "
            "RSS is the whole process's (`/usr/bin/time -v`) less the idle RSS of `lorakeep --version` (LibTorch "
            "loaded, nothing done). The Python recipes ran once each, in a memory limit of their own.")



def one_size(r, sc, layers, work, caches, limit, idle, log):
    spec = f"llama:{layers}{sc['dims']}"
    base, other, adapter, out = (os.path.join(work, n) for n in ("base", "other", "adapter", "out"))
    for d, seed in ((base, 0), (other, 1)):
        subprocess.run([r.bench, "make", "--layout", spec, "--dtype", "BF16", "--out", d, "--shard", sc["shard"],
                        "--seed", str(seed)], check=True)
    subprocess.run([r.bench, "make-adapter", "--layout", spec, "--out", adapter, "--r", str(sc["rank"])], check=True)
    size = dir_bytes(base)
    largest = llama_bytes(layers, sc["dims"])[1]
    shard = ["--max-shard-size", sc["shard"]]
    methods = [
        ("lorakeep merge-lora", [base, adapter], [r.cli, "merge-lora", "--base", base, "--adapter", adapter,
                                                  "--out", out, *shard]),
        ("lorakeep merge-delta", [base, other], [r.cli, "merge-delta", "--base", base, "--delta", other,
                                                 "--out", out, *shard]),
        ("lorakeep make-delta", [base, other], [r.cli, "make-delta", "--base", base, "--tuned", other,
                                                "--out", out, "--dtype", "BF16", *shard]),
    ]
    rows = []
    common = {"layout": spec, "layers": layers, "model_bytes": size, "largest_tensor_bytes": largest}
    for name, input_dirs, argv in methods:
        inputs = files_of(input_dirs)
        pairs, out_bytes = [], size
        for i in range(sc["pairs"]):
            run = {}
            for which in (("floor", "method") if i % 2 == 0 else ("method", "floor")):
                caches.drop(inputs)
                if which == "method":
                    seconds, rss, code, ended = timed_rss(argv)
                    if code != 0:
                        raise RuntimeError(f"{name} on {spec}: {ended}")
                    out_bytes = dir_bytes(out)
                    run["method"] = (seconds, rss)
                else:
                    run["floor"] = (floor_run(inputs, out, out_bytes), -1)
                shutil.rmtree(out)
            pairs.append(run)
        ratios = [p["method"][0] / p["floor"][0] for p in pairs]
        res = dict(common, method=name, input_bytes=sum(map(os.path.getsize, inputs)), output_bytes=out_bytes,
                   seconds=median([p["method"][0] for p in pairs]),
                   floor_seconds=median([p["floor"][0] for p in pairs]),
                   seconds_all=[p["method"][0] for p in pairs], floor_seconds_all=[p["floor"][0] for p in pairs],
                   ratio=median(ratios), ratios=ratios,
                   peak_rss_bytes=max(p["method"][1] for p in pairs),
                   peak_rss_above_idle_bytes=max(p["method"][1] for p in pairs) - idle)
        rows.append(res)
        log(res)
    peers = [r.python, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers.py")]
    recipes = [
        ("python merge-lora recipe (full load, W += s B A, save)", [base, adapter],
         peers + ["merge-lora", "--base", base, "--adapter", adapter, "--out", out]),
        ("python FastChat recipe (apply_delta)", [base, other],
         peers + ["merge-fastchat", "--base", base, "--delta", other, "--out", out]),
    ]
    for name, input_dirs, argv in recipes:
        inputs = files_of(input_dirs)
        caches.drop(inputs)
        seconds, rss, code, ended = timed_rss(limit.argv(argv))
        res = dict(common, method=name, input_bytes=sum(map(os.path.getsize, inputs)), seconds=seconds,
                   peak_rss_bytes=rss, ended=ended)
        rows.append(res)
        log(res)
        shutil.rmtree(out, ignore_errors=True)
    for d in (base, other, adapter):
        shutil.rmtree(d)
    return rows
