"""PEFT itself as a test peer: loads an adapter directory onto the seed-0 MLP of
PEFT's regression tests (lin0 Linear(10, 20), relu, lin1 Linear(20, 2),
log_softmax) with PeftModel.from_pretrained, and prints its output for
arange(90).reshape(9, 10) / 90 as JSON, plus what PEFT thinks it loaded."""
import json
import sys
import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore")
from peft import PeftModel  # noqa: E402


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin0 = nn.Linear(10, 20)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(20, 2)
        self.sm = nn.LogSoftmax(dim=-1)

    def forward(self, x):
        return self.sm(self.lin1(self.relu(self.lin0(x))))


torch.manual_seed(0)
model = PeftModel.from_pretrained(MLP(), sys.argv[1])
model.eval()
x = torch.arange(90, dtype=torch.float32).reshape(9, 10) / 90
with torch.no_grad():
    out = model(x)
config = model.peft_config["default"]
print(json.dumps({"output": out.tolist(), "peft_type": str(config.peft_type.value), "r": config.r,
                  "lora_alpha": config.lora_alpha, "use_rslora": config.use_rslora,
                  "modules_to_save": sorted(config.modules_to_save or [])}))
