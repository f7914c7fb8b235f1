"""The peers' PEFT LoraConfig, for tests/adapter_test.cpp: every field of the
class (dataclasses.fields, so a field a new PEFT adds shows up) and the
adapter_config.json text PEFT's own save_pretrained writes for a plain LoRA,
as one JSON line:
  {"peft": "0.21.2", "fields": ["alora_invocation_tokens", ...], "saved": "{...}"}
"""
import dataclasses
import json
import os
import tempfile
import warnings

warnings.filterwarnings("ignore")
import peft  # noqa: E402
from peft import LoraConfig  # noqa: E402

with tempfile.TemporaryDirectory() as d:
    LoraConfig(r=4, lora_alpha=8, target_modules=["lin0"]).save_pretrained(d)
    with open(os.path.join(d, "adapter_config.json"), encoding="utf-8") as f:
        saved = f.read()
print(json.dumps({"peft": peft.__version__, "fields": sorted(f.name for f in dataclasses.fields(LoraConfig)),
                  "saved": saved}))
