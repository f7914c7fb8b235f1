// Private to lora/ and checkpoint/: the adapter file layout.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>

#include "lorakeep/lora.h"
#include "lorakeep/tensor_source.h"
#include "base/file_names.h"
#include "transfer/load_plan.h"

namespace lorakeep::detail {

// One layer injection would arm, and how.
struct PlannedLayer {
  std::string path;
  std::shared_ptr<LoraLinearImpl> layer;
  LoraAdapterOptions options;
};

// What inject_lora would do to `module`, without doing it. Throws as
// inject_lora; changes nothing.
std::vector<PlannedLayer> plan_injection(torch::nn::Module& module, const LoraConfig& config);

// The factors arming `layers` would create ("<path>.lora_A.weight" [r, in],
// "<path>.lora_B.weight" [out, r], in add_adapter's dtype) as meta tensors:
// placeholders to validate a load against before anything is armed.
NamedTensors planned_factors(const std::vector<PlannedLayer>& layers);

// Arms `layers` (from plan_injection), freezes every other parameter, opens
// modules_to_save; returns the trainable parameters' names (inject_lora's
// result).
std::vector<std::string> arm(torch::nn::Module& module, const LoraConfig& config,
                             const std::vector<PlannedLayer>& layers);

// Armed LoraLinear layers of `module`, with their paths, in module order.
std::vector<std::pair<std::string, std::shared_ptr<LoraLinearImpl>>> armed_layers(torch::nn::Module& module);

// Writes adapter_model.safetensors and adapter_config.json into `dir`:
// direct = true writes plain synced files (for a directory published whole
// later, like a checkpoint), false replaces each file atomically.
AdapterSaveReport write_adapter(const std::string& dir, torch::nn::Module& module, const LoraConfig& config,
                                bool direct);
// The same from adapter_tensors() taken earlier (e.g. host copies).
AdapterSaveReport write_adapter(const std::string& dir, const NamedTensors& tensors, const LoraConfig& config,
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

// A PEFT adapter directory's load into `module`, validated in full before
// anything changes: the constructor reads the config, classifies the keys,
// plans the injection (if no layer is armed yet) and plans the transfer
// against the factors arming would create (names, shapes, dtypes, and the
// checksums in `transfer` when it has them); it throws as load_adapter and
// changes nothing. apply() then arms the planned layers (the global random
// generators left where they were) and writes. `transfer`'s op, scale,
// prefixes and strictness are the adapter's own and are set here.
// Borrows `module` until apply() returns. Move-only; not thread-safe.
class AdapterLoad {
 public:
  AdapterLoad(const std::string& dir, torch::nn::Module& module, const LoadOptions& transfer);
  ~AdapterLoad();
  AdapterLoad(AdapterLoad&&) noexcept;
  AdapterLoad& operator=(AdapterLoad&&) = delete;

  const LoraConfig& config() const { return config_; }
  // Throws as LoadPlan::apply.
  TransferReport apply();

 private:
  torch::nn::Module* module_;
  LoraConfig config_;
  std::unique_ptr<TensorSource> source_;
  std::vector<PlannedLayer> to_arm_;  // empty when the model was armed already
  std::optional<LoadPlan> plan_;
};

}  // namespace lorakeep::detail
