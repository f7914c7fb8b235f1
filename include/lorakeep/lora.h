// lorakeep/lora.h: LoRA for LibTorch modules, saved and loaded as PEFT
// adapters.
//
// LibTorch modules call their children through member variables, so a layer
// cannot be swapped behind a model's back the way PEFT swaps Python
// attributes. lorakeep's answer: declare the layers you may want to adapt as
// lorakeep::LoraLinear, a drop-in for torch::nn::Linear (same constructor
// arguments, same initialisation, same parameter names "weight" and "bias",
// same forward). inject_lora() then arms the ones PEFT's rules select: each
// gets lora_A / lora_B, its base weights move under "base_layer" (PEFT's
// names) and are frozen.
//
//   struct AttentionImpl : torch::nn::Module {
//     lorakeep::LoraLinear q_proj{nullptr};
//     AttentionImpl() { q_proj = register_module("q_proj", lorakeep::LoraLinear(512, 512)); }
//   };
//   lorakeep::LoraConfig config;
//   config.target_modules = {"q_proj", "v_proj"};
//   lorakeep::inject_lora(*model, config);           // train...
//   lorakeep::save_adapter("out/adapter", *model, config);   // PEFT loads this directory
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "lorakeep/lora_config.h"
#include "lorakeep/merge.h"
#include "lorakeep/safetensors.h"
#include "lorakeep/transfer.h"

namespace lorakeep {

struct LoraLinearOptions {
  LoraLinearOptions(std::int64_t in_features, std::int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}
  TORCH_ARG(std::int64_t, in_features);
  TORCH_ARG(std::int64_t, out_features);
  TORCH_ARG(bool, bias) = true;
  // The weight is stored [in, out] and the layer computes x @ W + b, as
  // GPT-2's Conv1D (initialised as GPT-2 does: normal(0, 0.02), zero bias).
  // Otherwise the layer is torch::nn::Linear, initialised exactly as it is.
  TORCH_ARG(bool, fan_in_fan_out) = false;
};

// The adapter part of one layer.
struct LoraAdapterOptions {
  int r = 8;
  double alpha = 8;
  double dropout = 0.0;
  bool use_rslora = false;
  std::string init = "true";  // PEFT's init_lora_weights: "true", "false" or "gaussian"
};

// A linear layer that can carry one LoRA adapter.
// Thread-safety: as any torch::nn::Module (no concurrent mutation).
class LoraLinearImpl : public torch::nn::Module {
 public:
  explicit LoraLinearImpl(const LoraLinearOptions& options);
  LoraLinearImpl(std::int64_t in_features, std::int64_t out_features)
      : LoraLinearImpl(LoraLinearOptions(in_features, out_features)) {}
  // Wraps an existing layer: its weight and bias tensors become this layer's
  // base (shared, not copied).
  explicit LoraLinearImpl(const torch::nn::Linear& base);

  // base(x) + scaling * B(A(dropout(x))), the LoRA path computed in the
  // adapter's dtype and added in the base's. Only the base when there is no
  // adapter or it is merged.
  torch::Tensor forward(const torch::Tensor& x);

  // Arms the layer: lora_A [r, in] and lora_B [out, r] on the weight's device
  // (F32, or F64 for an F64 base), initialised as PEFT does (A
  // Kaiming-uniform with a = sqrt(5) and B zero for "true"; A normal(0, 1/r)
  // for "gaussian"; both as nn.Linear for "false"); the base weight and bias
  // move under "base_layer" and stop requiring grad.
  // Throws Error(kInvalidArgument) if it already has an adapter or r < 1.
  void add_adapter(const LoraAdapterOptions& options);
  bool has_adapter() const { return static_cast<bool>(lora_A); }

  // W += scaling * B @ A (transposed for fan_in_fan_out), computed in F32 for
  // F16 / BF16 weights; forward then skips the LoRA path. With safe = true the
  // delta is checked for NaN / Inf first (Error(kInvalidArgument), nothing
  // changed). unmerge() subtracts it again. Both need an adapter.
  void merge(bool safe = false);
  void unmerge();
  bool merged() const { return merged_; }

  // scaling * B @ A in the base layout and the weight's dtype.
  torch::Tensor delta_weight() const;
  double scaling() const { return scaling_; }
  int rank() const { return has_adapter() ? static_cast<int>(lora_A->weight.size(0)) : 0; }
  const LoraLinearOptions& options() const { return options_; }

  torch::Tensor weight;  // the base: [out, in], or [in, out] with fan_in_fan_out
  torch::Tensor bias;    // undefined without bias
  torch::nn::Linear lora_A{nullptr};
  torch::nn::Linear lora_B{nullptr};

 private:
  torch::Tensor base_forward(const torch::Tensor& x) const;
  torch::Tensor delta_f32_or_wider() const;

  LoraLinearOptions options_;
  std::shared_ptr<torch::nn::Module> base_layer_;
  torch::nn::Dropout dropout_{nullptr};
  double scaling_ = 0;
  bool merged_ = false;
};
TORCH_MODULE(LoraLinear);

// Arms, anywhere in `module`'s tree, every LoraLinear that PEFT's rules select
// (is_lora_target), with rank and alpha from rank_pattern / alpha_pattern;
// freezes every other parameter; makes the parameters of modules_to_save
// trainable. Returns the names of the trainable parameters: the adapter
// factors and the modules_to_save parameters, as named_parameters() spells
// them. Borrows `module` for the call only.
// Throws Error(kInvalidArgument) when the targets select nothing (the message
// lists the module paths there are), when a selected module is a plain
// torch::nn::Linear (with a hint to declare it as lorakeep::LoraLinear) or not
// a linear layer, or when a selected layer already has an adapter.
std::vector<std::string> inject_lora(torch::nn::Module& module, const LoraConfig& config);

// The tensors an adapter file holds, under PEFT's keys:
// "base_model.model.<path>.lora_A.weight" / ".lora_B.weight" for every armed
// layer, "base_model.model.<path>.<param>" for modules_to_save. Views of the
// live tensors, not copies.
NamedTensors adapter_tensors(torch::nn::Module& module, const LoraConfig& config);

// The identity of an adapter's values: an XXH3-64 over the name, dtype, shape
// and bytes of every tensor adapter_tensors gives, in that order. Equal on
// replicas that hold the same adapter; what a coordinated save compares
// across ranks. Tensors on a device are copied to the host one at a time.
std::uint64_t adapter_digest(torch::nn::Module& module, const LoraConfig& config);

struct AdapterSaveReport {
  SaveReport weights;       // adapter_model.safetensors
  std::string config_path;  // adapter_config.json
};

// Writes PEFT's adapter directory: adapter_model.safetensors (metadata
// {"format": "pt"}) and adapter_config.json (inference_mode true). A new
// directory is assembled under a temporary name and renamed into place; in an
// existing one each file is replaced atomically, weights first.
// Throws Error(kInvalidArgument) if nothing is armed, Error(kIOError).
AdapterSaveReport save_adapter(const std::string& dir, torch::nn::Module& module, const LoraConfig& config);

struct AdapterLoadOptions {
  // performance
  std::uint64_t chunk_bytes = 64ull << 20;  // host staging per piece; bounds the extra memory (see transfer.h)
};

// Loads a PEFT adapter directory (adapter_config.json plus
// adapter_model.safetensors or adapter_model.bin) into `module` through the
// transfer engine: CPU-first, and validated in full before anything changes.
// If no layer of `module` is armed yet, the config's targets are armed, as
// PEFT's from_pretrained does (every other parameter frozen); what arming
// would create is worked out first and the adapter checked against it, and
// arming leaves the global random generators where they were. Validation, in
// order: the config is a LoRA config lorakeep supports; every key is a PEFT
// adapter key; A / B come in pairs; every adapted layer exists and is (or
// would be) armed; then names, shapes and dtypes (load_into, strict).
// Throws as parse_adapter_config and load_into; Error(kNotFound) if a file is
// missing; on any failure before the first write the model is unchanged (its
// parameters, their names and requires_grad, its buffers). An I/O error after
// writing began throws as load_into says (the model partly written).
TransferReport load_adapter(const std::string& dir, torch::nn::Module& module, const AdapterLoadOptions& options = {});

// The config saved beside an adapter. Throws as parse_adapter_config.
LoraConfig read_adapter_config(const std::string& dir);

struct MergeLoraOptions {
  // behaviour
  std::optional<Dtype> dtype;                                        // output dtype; default: each base tensor's
  std::map<std::string, std::string> metadata = {{"format", "pt"}};  // of every output shard
  // The prefix the adapted model's names carry that the base file's names
  // lack (Hugging Face's base_model_prefix, e.g. "bert." for a
  // BertForSequenceClassification adapter over a BertModel file). The output
  // uses the adapted model's names: every base tensor is written as
  // base_prefix + its name, so the merged file is a checkpoint of the model
  // with its head (e.g. BertForSequenceClassification: bert.* plus
  // classifier.*), which Hugging Face's from_pretrained and a strict LibTorch
  // load read in full. Every adapted layer path must then start with it (its
  // weight is looked up as the path less the prefix + ".weight"); a whole
  // tensor (modules_to_save) whose name starts with it replaces the base
  // tensor of its name less the prefix, any other joins the output under its
  // own name. Empty (the default): the adapter's paths are the base's names.
  std::string base_prefix;  // ends in "." (Error kInvalidArgument otherwise)
  // performance
  ShardOptions shards;
  MergeProgress progress;  // optional
};

// Offline, file to file: out_dir = the base weights with the adapter folded
// in, W + scaling * B @ A (transposed for fan_in_fan_out), scaling from the
// adapter's config (lora_alpha or alpha_pattern, over r or sqrt(r) with
// use_rslora), computed in F32 (F64 for F64 weights) a block of rows at a
// time; the adapter's whole tensors (modules_to_save, task heads) replace or
// join the base's. Streams one tensor at a time into sharded safetensors, as
// merge_delta_files. Validates first: every adapted layer's weight exists in
// the base (under options.base_prefix, see there) with the shape the factors
// imply, ranks agree with the config, whole tensors that replace a base
// tensor have its shape.
// Throws Error(kIncompatible) listing every problem (a missing weight that the
// base has under another prefix with a hint at base_prefix), and as
// merge_delta_files.
MergeReport merge_lora_files(const std::string& base, const std::string& adapter_dir, const std::string& out_dir,
                             const MergeLoraOptions& options = {});

// Merges (or unmerges) every armed layer of `module`; returns how many.
int merge_lora(torch::nn::Module& module, bool safe = false);
int unmerge_lora(torch::nn::Module& module);

}  // namespace lorakeep
