// trainer_state.json, as Hugging Face's Trainer writes it (sorted keys,
// two-space indent), so that Trainer and the tools built on it read our
// checkpoints as their own. TrainerState.load_from_json refuses any key its
// dataclass lacks, so the file holds the 18 keys that every transformers
// from 4.38 to 5.x has; 5.x's "best_global_step" and "stateful_callbacks"
// are left out (it defaults them; lorakeep derives the best from the
// committed checkpoints and keeps early stopping's state in the manifest).
// Reading takes them too, from Trainer 5's files and older lorakeep's.
// No LibTorch here.
#pragma once

#include <string>
#include <string_view>

#include "lorakeep/training_state.h"

namespace lorakeep::detail {

// Non-finite numbers are written as null (Python would write a bare NaN,
// which is not JSON).
std::string format_trainer_state(const TrainingState& state);

// Fills the fields of `*state` that trainer_state.json holds (ours or
// Trainer's; unknown keys are ignored).
// Throws Error(kCorruption) naming `path` and the field.
void parse_trainer_state(std::string_view text, const std::string& path, TrainingState* state);

}  // namespace lorakeep::detail
