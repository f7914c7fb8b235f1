// A PEFT adapter's load into a live model, in two phases, for callers that
// must finish validating everything they will touch before the first write
// (load_adapter, the checkpoint reader).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "lorakeep/lora_config.h"
#include "lorakeep/tensor_source.h"
#include "lora/injection.h"
#include "transfer/apply_phase.h"

namespace lorakeep::detail {

// adapter_model.safetensors, else adapter_model.bin, in `dir`.
// Throws Error(kNotFound) if neither exists.
std::string adapter_weights_path(const std::string& dir);

// The constructor validates in full and changes nothing: it classifies the
// keys, plans the injection (if no layer is armed yet) or checks the armed
// layers (none merged, each with the file's rank), and plans the transfer
// against the factors (names, shapes, dtypes, and the checksums in
// `transfer` when it has them); it throws as load_adapter. apply() then arms
// the planned layers (the global random generators left where they were) or
// gives the armed ones the file's scaling, and writes. `transfer`'s op,
// scale, prefixes and strictness are the adapter's own and are set here.
// `dir` names the adapter in messages; `name` is the adapter it fills
// (armed as it, when no layer carries it yet). Borrows `module` until
// apply() returns. Move-only; not thread-safe.
class AdapterLoad {
 public:
  AdapterLoad(const std::string& dir, LoraConfig config, std::unique_ptr<TensorSource> weights,
              torch::nn::Module& module, const LoadOptions& transfer, std::string name = kDefaultAdapter);
  ~AdapterLoad();
  AdapterLoad(AdapterLoad&&) noexcept;
  AdapterLoad& operator=(AdapterLoad&&) = delete;

  // Throws as LoadPlan::apply.
  TransferReport apply();

 private:
  torch::nn::Module* module_;
  LoraConfig config_;
  std::string name_;
  std::unique_ptr<TensorSource> source_;
  std::vector<PlannedLayer> to_arm_;  // empty when the model was armed already
  PathLayers to_rescale_;             // the armed layers it fills
  PathLayers to_zero_;                // the armed layers it leaves out: zeroed, as PEFT's hot swap
  std::optional<LoadPlan> plan_;
};

}  // namespace lorakeep::detail
