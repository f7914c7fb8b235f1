// lorakeep/lora_linear.h: LoraLinear, a drop-in for torch::nn::Linear that
// can carry one LoRA adapter.
//
// LibTorch modules call their children through member variables, so a layer
// cannot be swapped behind a model's back the way PEFT swaps Python
// attributes. lorakeep's answer: declare the layers you may want to adapt as
// lorakeep::LoraLinear (same constructor arguments, same initialisation, same
// parameter names "weight" and "bias", same forward). inject_lora()
// (lorakeep/adapter.h) then arms the ones PEFT's rules select: each gets
// lora_A / lora_B, its base weights move under "base_layer" (PEFT's names)
// and are frozen.
//
//   struct AttentionImpl : torch::nn::Module {
//     lorakeep::LoraLinear q_proj{nullptr};
//     AttentionImpl() { q_proj = register_module("q_proj", lorakeep::LoraLinear(512, 512)); }
//   };
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include "lorakeep/lora_layer.h"

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

// A linear layer that can carry one LoRA adapter.
// Thread-safety: as any torch::nn::Module (no concurrent mutation).
class LoraLinearImpl : public torch::nn::Module, public LoraLayer {
 public:
  explicit LoraLinearImpl(const LoraLinearOptions& options);
  LoraLinearImpl(std::int64_t in_features, std::int64_t out_features)
      : LoraLinearImpl(LoraLinearOptions(in_features, out_features)) {}
  // Wraps an existing layer: its weight and bias tensors become this layer's
  // base (shared, not copied).
  explicit LoraLinearImpl(const torch::nn::Linear& base);

  // base(x) + scaling * B(A(dropout(x))), the LoRA path computed in the
  // adapter's dtype and added in the base's. Only the base when there is no
  // adapter or it is merged. With DoRA, PEFT's forward: with
  // k = magnitude / norm (norm: each output row's L2 norm of
  // W + scaling * B A, detached from the gradient),
  // base(x) + (k - 1) * (W x) + k * scaling * B(A(dropout(x))), where W x is
  // taken on dropout(x) when dropout is active.
  torch::Tensor forward(const torch::Tensor& x);

  // Arms the layer: lora_A [r, in] and lora_B [out, r] on the weight's device
  // (F32, or F64 for an F64 base), initialised as PEFT does (A
  // Kaiming-uniform with a = sqrt(5) and B zero for "true"; A normal(0, 1/r)
  // for "gaussian"; both as nn.Linear for "false"), and with use_dora the
  // magnitude [out], initialised to the row norms of W + scaling * B A; the
  // base weight and bias move under "base_layer" and stop requiring grad.
  // Throws Error(kInvalidArgument) if it already has an adapter, or with
  // refusal(options).
  void add_adapter(const LoraAdapterOptions& options) override;
  bool has_adapter() const override { return static_cast<bool>(lora_A); }

  // merge() (LoraLayer's): delta = scaling * B @ A (transposed for
  // fan_in_fan_out); DoRA's outputs are the weight's rows (its columns when
  // stored [in, out]).

  // scaling * B @ A in the base layout and the weight's dtype (with DoRA, the
  // LoRA part only: the merge also rescales the rows).
  torch::Tensor delta_weight() const;
  bool use_dora() const override { return lora_magnitude_vector.defined(); }
  const LoraLinearOptions& options() const { return options_; }

  std::vector<std::pair<std::string, torch::Tensor>> lora_tensors() const override;
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> lora_shapes(
      const LoraAdapterOptions& options) const override;
  const torch::Tensor& base_weight() const override { return weight; }
  std::optional<bool> fan_in_fan_out() const override { return options_.fan_in_fan_out(); }
  const char* kind() const override { return "linear layer"; }

  torch::Tensor weight;  // the base: [out, in], or [in, out] with fan_in_fan_out
  torch::Tensor bias;    // undefined without bias
  torch::nn::Linear lora_A{nullptr};
  torch::nn::Linear lora_B{nullptr};
  torch::Tensor lora_magnitude_vector;  // DoRA's magnitude [out]; undefined without DoRA

 private:
  // Over `weight` and `bias`, shared: a named adapter's layer.
  LoraLinearImpl(const LoraLinearOptions& options, const torch::Tensor& weight, const torch::Tensor& bias);
  std::shared_ptr<torch::nn::Module> new_layer_over_base() const override;
  torch::Tensor base_forward(const torch::Tensor& x) const;
  void on_dropout(double p) override;
  torch::Tensor delta_f32_or_wider() const override;
  torch::Tensor dora_norms(const torch::Tensor& adapted) const override;
  torch::Tensor dora_factors(const torch::Tensor& norms) const override;
  torch::Tensor base_bias() const override { return bias; }
  torch::Tensor lora_bias_tensor() const override;

  LoraLinearOptions options_;
  std::shared_ptr<torch::nn::Module> base_layer_;
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(LoraLinear);

}  // namespace lorakeep
