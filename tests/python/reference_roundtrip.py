"""The reference safetensors implementation as a test peer (never a library
dependency). Usage:

  reference_roundtrip.py check FILE   read FILE with the reference reader; compare with expected()
  reference_roundtrip.py write FILE   write expected() with the reference writer

expected() must stay identical to tests/python_interop_test.cpp's expected().
Exit code 0 on success; a mismatch prints what differs and exits 1.
"""
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

METADATA = {"format": "pt"}


def expected():
    def floats(n, dtype):
        return (torch.arange(n, dtype=torch.float64) * 0.5 - 3).to(dtype)

    def ints(n, dtype, offset):
        return (torch.arange(n, dtype=torch.int64) - offset).to(dtype)

    return {
        "f32": floats(12, torch.float32).reshape(3, 4),
        "f16": floats(6, torch.float16).reshape(2, 3),
        "bf16": floats(5, torch.bfloat16),
        "f64": floats(4, torch.float64).reshape(2, 2),
        "i64": ints(3, torch.int64, 2),
        "i32": ints(4, torch.int32, 2).reshape(2, 2),
        "i16": ints(4, torch.int16, 2),
        "i8": ints(3, torch.int8, 2),
        "u8": ints(6, torch.uint8, 0),
        "bool": (torch.arange(5) % 2).to(torch.bool),
        "scalar": torch.tensor(1.5, dtype=torch.float32),
        "empty": torch.zeros((2, 0), dtype=torch.float32),
        "base_model.model.layers.0.self_attn.q_proj.lora_A.weight": floats(32, torch.float32).reshape(4, 8),
        "na\u00efve \u2713": floats(2, torch.float32),
        'quote"back\\slash': floats(1, torch.float32),
    }


def check(path):
    got = load_file(path)
    want = expected()
    problems = []
    if set(got) != set(want):
        problems.append(f"names differ: {sorted(set(got) ^ set(want))}")
    for name in sorted(set(got) & set(want)):
        a, b = got[name], want[name]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            problems.append(f"{name}: got {a.dtype} {tuple(a.shape)}, want {b.dtype} {tuple(b.shape)}")
    with safe_open(path, framework="pt") as f:
        if f.metadata() != METADATA:
            problems.append(f"metadata {f.metadata()} != {METADATA}")
    for p in problems:
        print(p)
    return 1 if problems else 0


def main():
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "check":
        return check(path)
    if mode == "write":
        save_file(expected(), path, metadata=METADATA)
        return 0
    print(f"unknown mode {mode}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
