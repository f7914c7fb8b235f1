"""What users would pick instead of lorakeep, measured the way lorakeep_bench
measures itself: one method per process, one JSON object on stdout.

  peers.py reload --method torch-load  --layout adapter:512 --file adapter.bin         --repeat 5
  peers.py reload --method safetensors --layout adapter:512 --file adapter.safetensors --repeat 5
  peers.py save   --method torch-save  --layout adapter:512 --dir out --repeat 3
  peers.py merge-fastchat --base B --delta D --out O     (timed from outside, /usr/bin/time)
  peers.py merge-lora --base B --adapter A --out O

Python torch is Debian's python3-torch; safetensors is the reference package
from PyPI in the build tree's venv. Layouts mirror bench_main.cpp.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch


def layout(spec):
    kind, n = spec.split(":")
    n = int(n)
    out = []
    if kind == "adapter":
        for i in range(n):
            layer = f"base_model.model.layers.{i // 2}.self_attn.q_proj."
            out.append((layer + "lora_A.weight", (64, 4096)) if i % 2 == 0 else (layer + "lora_B.weight", (4096, 64)))
    elif kind == "embedding":
        out = [("base_model.model.embed_tokens.weight", (n * 256, 1024))]
    elif kind == "tiny":
        out = [(f"t.{i}", (8, 16)) for i in range(n)]
    elif kind == "base":
        i = 0
        for mib in range(0, n, 64):
            out.append((f"model.layers.{i}.weight", (min(64, n - mib) * 64, 4096)))
            i += 1
    else:
        raise SystemExit(f"unknown layout {spec}")
    return out


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def measure(repeat, fn):
    samples = []
    for _ in range(repeat):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status_kib("VmRSS")
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        samples.append((t1 - t0, max(0, status_kib("VmHWM") - base) * 1024))
    times = sorted(s[0] for s in samples)
    return {
        "seconds": statistics.median(times),
        "seconds_min": times[0],
        "peak_rss_bytes": max(s[1] for s in samples),
        "peak_alloc_bytes": -1,
        "repeat": repeat,
    }


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


def reload(args):
    dtype = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}[args.param_dtype]
    live = {name: torch.zeros(shape, dtype=dtype) for name, shape in layout(args.layout)}
    warm(args.file)
    torch.set_grad_enabled(False)
    if args.method == "torch-load":
        def run():
            # LibTorch's pickler tags typed containers with a global that
            # torch >= 2.6's default weights_only load refuses; the file is
            # the benchmark's own.
            state = torch.load(args.file, map_location="cpu", weights_only=False)
            for name, p in live.items():
                p.copy_(state[name])
    elif args.method == "safetensors":
        from safetensors.torch import load_file

        def run():
            state = load_file(args.file)
            for name, p in live.items():
                p.copy_(state[name])
    else:
        raise SystemExit(f"unknown method {args.method}")
    result = measure(args.repeat, run)
    result.update(method=args.method, layout=args.layout,
                  param_bytes=sum(p.numel() * p.element_size() for p in live.values()),
                  file_bytes=os.path.getsize(args.file))
    print(json.dumps(result))


def save(args):
    torch.manual_seed(0)
    tensors = {name: torch.randn(shape) for name, shape in layout(args.layout)}
    counter = [0]

    def run():
        path = os.path.join(args.dir, f"py-save-{counter[0]}.bin")
        counter[0] += 1
        # torch.save alone does not fsync; a checkpoint needs it, so do it as a user would.
        with open(path, "wb") as f:
            torch.save(tensors, f)
            f.flush()
            os.fsync(f.fileno())

    result = measure(args.repeat, run)
    result.update(method=args.method, layout=args.layout,
                  param_bytes=sum(t.numel() * t.element_size() for t in tensors.values()))
    print(json.dumps(result))


def load_all(path):
    """A whole model in memory: one file, or every shard of a directory's index."""
    from safetensors.torch import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isdir(path) and os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for name in files:
            state.update(load_file(os.path.join(path, name)))
        return state
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    return load_file(path)


def save_durably(state, out):
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "model.safetensors")
    save_file(state, path, metadata={"format": "pt"})
    with open(path, "rb") as f:  # durable, as the C++ side is
        os.fsync(f.fileno())


def merge_fastchat(args):
    # FastChat's apply_delta: load both models whole, add, save.
    base = load_all(args.base)
    delta = load_all(args.delta)
    for name, t in delta.items():
        t += base[name]
    save_durably(delta, args.out)


def merge_lora(args):
    # What a Python user writes: load base and adapter whole, W += s * B @ A, save.
    from safetensors.torch import load_file

    base = load_all(args.base)
    with open(os.path.join(args.adapter, "adapter_config.json")) as f:
        config = json.load(f)
    adapter = load_file(os.path.join(args.adapter, "adapter_model.safetensors"))
    scale = config["lora_alpha"] / config["r"]
    prefix = "base_model.model."
    for key, a in adapter.items():
        if not key.endswith(".lora_A.weight"):
            continue
        path = key[len(prefix):-len(".lora_A.weight")]
        b = adapter[prefix + path + ".lora_B.weight"]
        base[path + ".weight"] += scale * (b @ a)
    save_durably(base, args.out)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reload")
    r.add_argument("--method", required=True)
    r.add_argument("--layout", required=True)
    r.add_argument("--file", required=True)
    r.add_argument("--repeat", type=int, default=3)
    r.add_argument("--param-dtype", default="F32")
    s = sub.add_parser("save")
    s.add_argument("--method", default="torch-save")
    s.add_argument("--layout", required=True)
    s.add_argument("--dir", required=True)
    s.add_argument("--repeat", type=int, default=3)
    m = sub.add_parser("merge-fastchat")
    m.add_argument("--base", required=True)
    m.add_argument("--delta", required=True)
    m.add_argument("--out", required=True)
    lo = sub.add_parser("merge-lora")
    lo.add_argument("--base", required=True)
    lo.add_argument("--adapter", required=True)
    lo.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    {"reload": reload, "save": save, "merge-fastchat": merge_fastchat, "merge-lora": merge_lora}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
