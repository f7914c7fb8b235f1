// Private to lora/ and checkpoint/: the adapter file layout.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>

#include "lorakeep/lora.h"
#include "lorakeep/tensor_source.h"

namespace lorakeep::detail {

// PEFT prefixes every key of an adapter file with this.
inline constexpr const char* kPeftPrefix = "base_model.model.";

// Armed LoraLinear layers of `module`, with their paths, in module order.
std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>> armed_layers(torch::nn::Module& module);

// Writes adapter_model.safetensors and adapter_config.json into `dir`:
// direct = true writes plain synced files (for a directory published whole
// later, like a checkpoint), false replaces each file atomically.
AdapterSaveReport write_adapter(const std::string& dir, torch::nn::Module& module, const LoraConfig& config,
                                bool direct);

// adapter_model.safetensors, else adapter_model.bin, in `dir`.
// Throws Error(kNotFound) if neither exists.
std::string adapter_weights_path(const std::string& dir);

// What an adapter file holds, its keys stripped of kPeftPrefix.
struct AdapterLayout {
  std::vector<std::string> layers;  // module paths with a lora_A / lora_B pair
  std::vector<std::string> whole;   // whole tensors (modules_to_save, task heads)
};

// Throws Error(kCorruption) for a key without PEFT's prefix or an unpaired
// factor, Error(kNotSupported) for other LoRA factor kinds.
AdapterLayout classify_adapter_keys(const TensorSource& source);

}  // namespace lorakeep::detail
