"""Opens a safetensors file with the reference reader and prints its keys,
shapes and metadata as JSON: the test checks them against PEFT's naming."""
import json
import sys

from safetensors import safe_open

with safe_open(sys.argv[1], framework="pt") as f:
    print(json.dumps({"metadata": f.metadata(),
                      "tensors": {k: list(f.get_slice(k).get_shape()) for k in f.keys()}}))
