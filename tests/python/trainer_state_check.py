"""Reads lorakeep's trainer_state.json files with transformers' own
TrainerState.load_from_json, which refuses any key its dataclass lacks, and
prints one JSON line per file with what it read.

  python trainer_state_check.py FILE...
"""
import json
import sys

import transformers
from transformers.trainer_callback import TrainerState

for path in sys.argv[1:]:
    state = TrainerState.load_from_json(path)
    print(json.dumps({"transformers": transformers.__version__, "global_step": state.global_step,
                      "epoch": state.epoch, "max_steps": state.max_steps, "best_metric": state.best_metric,
                      "best_model_checkpoint": state.best_model_checkpoint,
                      "log_history": len(state.log_history)}))
