// trainer_state.json, exactly as Hugging Face's Trainer writes it (the 20
// keys of transformers' TrainerState as of 4.50: sorted, two-space indent),
// so that Trainer and the tools built on it read our checkpoints as their
// own. No LibTorch here.
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
