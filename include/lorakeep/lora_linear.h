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

#include <torch/nn/module.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

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
  // DoRA (PEFT's use_dora): a magnitude per output, lora_magnitude_vector
  // [out], rescales each output row of the adapted weight W + scaling * B A
  // to it.
  bool use_dora = false;
  // PEFT's lora_bias: lora_B has a bias [out] (zero at "true"), scaled with
  // the rest of the LoRA path and merged into the base's bias. Not with DoRA.
  bool lora_bias = false;
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
  // Throws Error(kInvalidArgument) if it already has an adapter, r < 1, init
  // is not one of the three, or lora_bias comes with DoRA or "gaussian".
  void add_adapter(const LoraAdapterOptions& options);
  bool has_adapter() const { return static_cast<bool>(lora_A); }

  // The adapter's options as armed, with the scaling and dropout of the last
  // set_scaling. REQUIRES: has_adapter().
  const LoraAdapterOptions& adapter_options() const { return adapter_; }

  // Sets the adapter's alpha, use_rslora and dropout; its rank and factors
  // stay. What a load of an adapter whose config says otherwise does, so that
  // the layer computes what the file's adapter computes. Throws
  // Error(kInvalidArgument) without an adapter, or when merged (the merged
  // weight holds the old scaling: unmerge first).
  void set_scaling(double alpha, bool use_rslora, double dropout);

  // W += scaling * B @ A (transposed for fan_in_fan_out), computed in F32 for
  // F16 / BF16 weights; forward then skips the LoRA path. With DoRA, as PEFT:
  // W = k * (W + scaling * B A) per output row, k = magnitude / the row norms
  // of W + scaling * B A, which the layer keeps for unmerge. With safe = true
  // the new weight is checked for NaN / Inf first (Error(kInvalidArgument),
  // nothing changed). With lora_bias the base's bias gains scaling *
  // lora_B.bias (Error(kInvalidArgument) for a base without bias, nothing
  // changed). unmerge() takes the adapter out again. Both need an adapter.
  void merge(bool safe = false);
  void unmerge();
  bool merged() const { return merged_; }

  // scaling * B @ A in the base layout and the weight's dtype (with DoRA, the
  // LoRA part only: the merge also rescales the rows).
  torch::Tensor delta_weight() const;
  double scaling() const { return scaling_; }
  int rank() const { return has_adapter() ? static_cast<int>(lora_A->weight.size(0)) : 0; }
  bool use_dora() const { return lora_magnitude_vector.defined(); }
  const LoraLinearOptions& options() const { return options_; }

  torch::Tensor weight;  // the base: [out, in], or [in, out] with fan_in_fan_out
  torch::Tensor bias;    // undefined without bias
  torch::nn::Linear lora_A{nullptr};
  torch::nn::Linear lora_B{nullptr};
  torch::Tensor lora_magnitude_vector;  // DoRA's magnitude [out]; undefined without DoRA

 private:
  torch::Tensor base_forward(const torch::Tensor& x) const;
  torch::Tensor delta_f32_or_wider() const;
  // The L2 norm of each output row of W + `delta` (base layout, the compute
  // dtype), without gradient: DoRA's denominator.
  torch::Tensor row_norms(const torch::Tensor& delta) const;
  torch::Tensor dora_factors(const torch::Tensor& norms) const;
  // scaling * lora_B.bias in the bias's compute dtype; undefined without
  // lora_bias. Throws Error(kInvalidArgument) for a base without bias.
  torch::Tensor lora_bias_delta() const;
  // target += delta, computed in delta's dtype and rounded once into target's.
  static void add_rounded_once(torch::Tensor& target, const torch::Tensor& delta);

  LoraLinearOptions options_;
  LoraAdapterOptions adapter_;
  std::shared_ptr<torch::nn::Module> base_layer_;
  torch::nn::Dropout dropout_{nullptr};
  double scaling_ = 0;
  bool merged_ = false;
  torch::Tensor merged_norms_;  // DoRA: the row norms the merge divided by, for unmerge
};
TORCH_MODULE(LoraLinear);

}  // namespace lorakeep
