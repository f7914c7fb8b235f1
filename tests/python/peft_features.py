"""The feature table against the peers' PEFT, in one process, for
tests/peft_features_test.cpp: a small model defined here as in the test
(FeatureNet: emb Embedding(12, 10) added to the input x, lin0 Linear(10, 20)
plus conv Conv2d(1, 2, 3, padding=1) of x seen as 1x2x5 images, relu, lin1
Linear(20, 16), relu, head Linear(16, 3)), its base weights and inputs
written by the test.

  peft_features.py WORK

WORK holds base.safetensors, input.safetensors ("x", "ids") and, for each feature, a
folder with what lorakeep made: lorakeep_adapter/ (trained in LibTorch),
lorakeep_output.safetensors ("y": that model's output on x) and
lorakeep_merged/ (merge-lora of the adapter into base.safetensors). For each
feature this script
  1. loads lorakeep's adapter with PeftModel.from_pretrained and compares its
     output with lorakeep's;
  2. compares merge_and_unload()'s state dict with lorakeep's merged file;
  3. trains an adapter of the same config in PEFT (its own initialisation,
     5 SGD steps) and saves it as peft_adapter/, with its output on x as
     peft_output.safetensors ("y"), for the test to load in LibTorch;
  4. saves another, initialised with init_lora_weights=False (every factor
     non-zero, so that every tensor gets a gradient), as peft_start/, and
     the same after one SGD step (lr 0.1, loss mean(y^2)) as peft_step/, for
     the test to take the same step in LibTorch.
Then, where PEFT has hotswap_adapter, it hot-swaps lorakeep's hotswap/second
(rank 4) into a model loaded with hotswap/first (rank 8) and saves the
output as hotswap/peft_output.safetensors, then hotswap/third (lin0 only)
and saves hotswap/peft_output_third.safetensors. Last, two adapters in one model
(named/): lorakeep's lorakeep_adapter/ holds the default adapter and, in
PEFT's layout, lorakeep_adapter/second/ another, and so does the checkpoint
lorakeep_run/checkpoint-10/ (Trainer's layout); both load in PEFT, from
each (from_pretrained, then load_adapter by name), each active in turn gives
lorakeep's output (lorakeep_output.safetensors: "default", "second"), and
merge_and_unload() with "second" active equals lorakeep_merged/ (merge-lora
of second/); then PEFT trains the same two (get_peft_model, add_adapter,
set_adapter) and saves them as peft_adapter/ with both outputs as
peft_output.safetensors. It prints one JSON line per feature, one for
"hotswap" (done, or skipped with its reason) and one for "named" (as a
feature's, with "second_keys": the keys of PEFT's second/ file):
  {"feature": NAME, "peft": VERSION, "load_max_diff": F, "merge_max_diff": F,
   "merge_names": [...], "peft_factors_trained": BOOL}
(for the feature "all_linear" also "all_linear": the modules PEFT's own
target_modules="all-linear" selects in FeatureNet, or "all_linear_refused":
PEFT's message where it refuses the shorthand on a model that is not
transformers'), or, for a feature this
PEFT does not have (a config field its LoraConfig lacks, such as lora_bias
before 0.14, or a layer kind it refuses the feature on, such as DoRA on
embeddings in 0.10):
  {"feature": NAME, "peft": VERSION, "skipped": REASON}
"""
import dataclasses
import copy
import glob
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")
import peft  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn  # noqa: E402


class FeatureNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(12, 10)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.lin0 = nn.Linear(10, 20)
        self.lin1 = nn.Linear(20, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x, ids):
        h = self.lin0(x + self.emb(ids)) + self.conv(x.view(-1, 1, 2, 5)).flatten(1)
        return self.head(torch.relu(self.lin1(torch.relu(h))))


def max_diff(a, b):
    return float((a.double() - b.double()).abs().max())


def sgd_steps(model, x, steps):
    sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(steps):
        sgd.zero_grad()
        model(*x).pow(2).mean().backward()
        sgd.step()


def save(model, path):
    # save_pretrained writes a model card: from a template (which needs
    # Jinja2, not among peft 0.10's pinned peers) unless one is there.
    os.makedirs(path)
    with open(os.path.join(path, "README.md"), "w") as f:
        f.write("---\nlibrary_name: peft\n---\nA test adapter.\n")
    model.save_pretrained(path)


def main():
    work = sys.argv[1]
    base = FeatureNet()
    base.load_state_dict(load_file(os.path.join(work, "base.safetensors")))
    inputs = load_file(os.path.join(work, "input.safetensors"))
    x = (inputs["x"], inputs["ids"])
    for feature in sorted(os.listdir(work)):
        d = os.path.join(work, feature)
        if not os.path.isdir(d) or feature in ("hotswap", "named"):
            continue
        row = {"feature": feature, "peft": peft.__version__}
        adapter = os.path.join(d, "lorakeep_adapter")
        with open(os.path.join(adapter, "adapter_config.json"), encoding="utf-8") as f:
            unknown = sorted(set(json.load(f)) - {field.name for field in dataclasses.fields(LoraConfig)})
        if unknown:
            row["skipped"] = f"PEFT {peft.__version__}'s LoraConfig has no {', '.join(unknown)}"
            print(json.dumps(row), flush=True)
            continue

        try:
            model = PeftModel.from_pretrained(copy.deepcopy(base), adapter).eval()
        except ValueError as e:
            if "does not support DoRA" not in str(e):
                raise
            row["skipped"] = f"PEFT {peft.__version__}: {e}"
            print(json.dumps(row), flush=True)
            continue
        with torch.no_grad():
            row["load_max_diff"] = max_diff(model(*x), load_file(os.path.join(d, "lorakeep_output.safetensors"))["y"])
            merged = model.merge_and_unload().state_dict()
        ours = {}
        for f in glob.glob(os.path.join(d, "lorakeep_merged", "*.safetensors")):
            ours.update(load_file(f))
        row["merge_names"] = sorted(merged)
        row["merge_max_diff"] = max(max_diff(merged[n], ours[n]) for n in merged if n in ours)

        config = LoraConfig.from_pretrained(adapter)
        config.inference_mode = False
        torch.manual_seed(1)
        trained = get_peft_model(copy.deepcopy(base), config)
        sgd_steps(trained, x, 5)
        trained.eval()
        save(trained, os.path.join(d, "peft_adapter"))
        with torch.no_grad():
            save_file({"y": trained(*x).contiguous()}, os.path.join(d, "peft_output.safetensors"))
        factors = load_file(os.path.join(d, "peft_adapter", "adapter_model.safetensors"))
        row["peft_factors_trained"] = all(
            float(t.abs().max()) > 0 for n, t in factors.items() if "lora_B" in n or "lora_embedding_A" in n
        )
        if feature == "all_linear":
            try:
                shorthand = get_peft_model(copy.deepcopy(base), LoraConfig(target_modules="all-linear"))
                row["all_linear"] = sorted(shorthand.peft_config["default"].target_modules)
            except ValueError as e:  # before 0.12: for transformers' PreTrainedModel only
                row["all_linear_refused"] = str(e)

        config = LoraConfig.from_pretrained(adapter)
        config.inference_mode = False
        config.init_lora_weights = False
        torch.manual_seed(2)
        stepped = get_peft_model(copy.deepcopy(base), config)
        save(stepped, os.path.join(d, "peft_start"))
        sgd_steps(stepped, x, 1)
        save(stepped, os.path.join(d, "peft_step"))
        print(json.dumps(row), flush=True)
    hotswap(work, base, x)
    named(work, base, x)


def hotswap(work, base, x):
    """PEFT's hot swap of lorakeep's adapters: hotswap/first (loaded), then
    hotswap/second (swapped in: another rank and alpha), its output saved as
    hotswap/peft_output.safetensors."""
    row = {"feature": "hotswap", "peft": peft.__version__}
    try:
        from peft.utils.hotswap import hotswap_adapter
    except ImportError:
        row["skipped"] = f"PEFT {peft.__version__} has no hotswap_adapter"
        print(json.dumps(row), flush=True)
        return
    d = os.path.join(work, "hotswap")
    model = PeftModel.from_pretrained(copy.deepcopy(base), os.path.join(d, "first")).eval()
    hotswap_adapter(model, os.path.join(d, "second"), adapter_name="default", torch_device="cpu")
    with torch.no_grad():
        save_file({"y": model(*x).contiguous()}, os.path.join(d, "peft_output.safetensors"))
    # An adapter of lin0 only: PEFT zeroes lin1's LoRA tensors.
    hotswap_adapter(model, os.path.join(d, "third"), adapter_name="default", torch_device="cpu")
    with torch.no_grad():
        save_file({"y": model(*x).contiguous()}, os.path.join(d, "peft_output_third.safetensors"))
    print(json.dumps(row), flush=True)


def named(work, base, x):
    """Two adapters in one model, lorakeep's in PEFT and PEFT's saved for
    lorakeep (see the module's docstring)."""
    d = os.path.join(work, "named")
    row = {"feature": "named", "peft": peft.__version__}
    adapter = os.path.join(d, "lorakeep_adapter")
    ours = load_file(os.path.join(d, "lorakeep_output.safetensors"))
    diffs = []  # default, second; from the adapter, then from the checkpoint
    for where in (adapter, os.path.join(d, "lorakeep_run", "checkpoint-10")):
        model = PeftModel.from_pretrained(copy.deepcopy(base), where).eval()
        model.load_adapter(os.path.join(where, "second"), adapter_name="second")
        # Before PEFT 0.12 a second adapter was left active in the layers only it
        # adapts (emb, conv here); set_adapter activates one everywhere.
        model.set_adapter("default")
        with torch.no_grad():
            diffs.append(max_diff(model(*x), ours["default"]))
            model.set_adapter("second")
            diffs.append(max_diff(model(*x), ours["second"]))
    row["load_max_diff"] = max(diffs)
    row["load_diffs"] = diffs
    with torch.no_grad():
        merged = model.merge_and_unload().state_dict()
    mine = {}
    for f in glob.glob(os.path.join(d, "lorakeep_merged", "*.safetensors")):
        mine.update(load_file(f))
    row["merge_names"] = sorted(merged)
    row["merge_max_diff"] = max(max_diff(merged[n], mine[n]) for n in merged if n in mine)

    configs = {}
    for name, path in (("default", adapter), ("second", os.path.join(adapter, "second"))):
        configs[name] = LoraConfig.from_pretrained(path)
        configs[name].inference_mode = False
    torch.manual_seed(1)
    trained = get_peft_model(copy.deepcopy(base), configs["default"])
    sgd_steps(trained, x, 5)
    trained.add_adapter("second", configs["second"])
    trained.set_adapter("second")
    sgd_steps(trained, x, 5)
    trained.eval()
    out = os.path.join(d, "peft_adapter")
    save(trained, out)
    with torch.no_grad():
        ys = {"second": trained(*x).contiguous()}
        trained.set_adapter("default")
        ys["default"] = trained(*x).contiguous()
    save_file(ys, os.path.join(d, "peft_output.safetensors"))
    row["second_keys"] = sorted(load_file(os.path.join(out, "second", "adapter_model.safetensors")))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
