// Whether a LoraConfig describes a model's armed layers: the check every
// save runs before it writes an adapter (adapter_tensors), so that a file
// never says what the model did not compute.
#pragma once

#include <string>

#include <torch/nn/module.h>

#include "lorakeep/lora_config.h"

namespace lorakeep::detail {

// Compares `config` (its target_modules resolved: resolve_target_modules)
// with the layers of `module` that carry adapter `name`: the armed
// set equals the set the config's targets select; per layer the rank
// (r / rank_pattern), lora_alpha (alpha_pattern), use_rslora, lora_dropout
// and (linear layers) fan_in_fan_out; every modules_to_save entry names a
// module. Throws Error(kInvalidArgument) listing every disagreement (layer,
// field, the config's value and the layer's), or when nothing is armed.
void check_config_matches_layers(torch::nn::Module& module, const LoraConfig& config, const std::string& name);

}  // namespace lorakeep::detail
