// Arming a model's LoRA layers (LoraLayer: LoraLinear, LoraEmbedding) as a
// LoraConfig selects them: planned
// first (nothing changes), then armed. inject_lora and the adapter loads
// (lora/adapter_load.h) share it.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>

#include "lorakeep/lora_config.h"
#include "lorakeep/lora_layer.h"
#include "lorakeep/safetensors.h"

namespace lorakeep::detail {

// One layer injection would arm, and how.
struct PlannedLayer {
  std::string path;
  std::shared_ptr<LoraLayer> layer;
  LoraAdapterOptions options;
};

// Layers with their module paths, in module order.
using PathLayers = std::vector<std::pair<std::string, std::shared_ptr<LoraLayer>>>;

// The modules of `module` with their paths, in module order, but those
// inside a LoRA layer (its factors, its base, its named adapters' layers):
// what target_modules, modules_to_save and messages see.
std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> model_modules(torch::nn::Module& module);

// What inject_lora would do to `module` for adapter `name`, without doing
// it. Throws as inject_lora (but for the weight layout, which the caller
// checks or follows); changes nothing.
std::vector<PlannedLayer> plan_injection(torch::nn::Module& module, const LoraConfig& config,
                                         const std::string& name = kDefaultAdapter);

// The layers of `planned` whose weight layout contradicts
// config.fan_in_fan_out, as "'path' stores ..." lines.
std::vector<std::string> layout_mismatches(const std::vector<PlannedLayer>& planned, const LoraConfig& config);

// The tensors arming `layers` would create (their model names and shapes, in
// add_adapter's dtype) as meta tensors: placeholders to validate a load
// against before anything is armed.
NamedTensors planned_factors(const std::vector<PlannedLayer>& layers);

// The live adapter tensors of `layers` (factors, DoRA's magnitudes,
// lora_B's biases) at the rank each holds, under their model names.
NamedTensors live_factors(const PathLayers& layers);

// Arms adapter `name` on `layers` (from plan_injection; a layer whose
// layout contradicts fan_in_fan_out follows its layout, logged). The
// model's first adapter becomes the active one: every other parameter is
// frozen and modules_to_save opened. A later one is armed frozen and
// inactive, as PEFT's add_adapter (set_adapter makes it active), and the
// rest keeps its requires_grad. Returns inject_lora's result.
std::vector<std::string> arm(torch::nn::Module& module, const LoraConfig& config,
                             const std::vector<PlannedLayer>& layers, const std::string& name = kDefaultAdapter);

// The layers of `module` that carry adapter `name` (each the layer that
// holds it: LoraLayer::adapter), with the paths of the layers they adapt,
// in module order.
PathLayers armed_layers(torch::nn::Module& module, const std::string& name = kDefaultAdapter);

// The LoRA layers of `module` with their paths, in module order.
PathLayers lora_layers(torch::nn::Module& module);

// The config adapter `name` was armed or last loaded with
// (LoraLayer::adapter_config), target_modules resolved. Throws
// Error(kInvalidArgument) when its layers have none (armed by add_adapter).
LoraConfig armed_config(torch::nn::Module& module, const std::string& name);

// "a, b, c, ... (N more)": a list of paths for a message.
std::string list_paths(const std::vector<std::string>& paths, std::size_t limit = 30);

}  // namespace lorakeep::detail
