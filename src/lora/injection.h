// Arming a model's LoraLinear layers as a LoraConfig selects them: planned
// first (nothing changes), then armed. inject_lora and the adapter loads
// (lora/adapter_load.h) share it.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>

#include "lorakeep/lora_config.h"
#include "lorakeep/lora_linear.h"
#include "lorakeep/safetensors.h"

namespace lorakeep::detail {

// One layer injection would arm, and how.
struct PlannedLayer {
  std::string path;
  std::shared_ptr<LoraLinearImpl> layer;
  LoraAdapterOptions options;
};

// What inject_lora would do to `module`, without doing it. Throws as
// inject_lora (but for the weight layout, which the caller checks or
// follows); changes nothing.
std::vector<PlannedLayer> plan_injection(torch::nn::Module& module, const LoraConfig& config);

// The layers of `planned` whose weight layout contradicts
// config.fan_in_fan_out, as "'path' stores ..." lines.
std::vector<std::string> layout_mismatches(const std::vector<PlannedLayer>& planned, const LoraConfig& config);

// The factors arming `layers` would create (their model names, [r, in] and
// [out, r], and DoRA's magnitude [out], in add_adapter's dtype) as meta
// tensors: placeholders to validate a load against before anything is armed.
NamedTensors planned_factors(const std::vector<PlannedLayer>& layers);

// The live factors of `layers` (with DoRA's magnitudes), under their model
// names.
NamedTensors live_factors(const std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>>& layers);

// Arms `layers` (from plan_injection; a layer whose layout contradicts
// fan_in_fan_out follows its layout, logged), freezes every other parameter,
// opens modules_to_save; returns the trainable parameters' names
// (inject_lora's result).
std::vector<std::string> arm(torch::nn::Module& module, const LoraConfig& config,
                             const std::vector<PlannedLayer>& layers);

// Armed LoraLinear layers of `module`, with their paths, in module order.
std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>> armed_layers(torch::nn::Module& module);

// "a, b, c, ... (N more)": a list of paths for a message.
std::string list_paths(const std::vector<std::string>& paths, std::size_t limit = 30);

}  // namespace lorakeep::detail
