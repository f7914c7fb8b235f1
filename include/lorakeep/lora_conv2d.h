// lorakeep/lora_conv2d.h: LoraConv2d, a drop-in for torch::nn::Conv2d that
// can carry one LoRA adapter (PEFT's lora.Conv2d). Declared in place of
// torch::nn::Conv2d (same arguments, same initialisation, the parameters
// "weight" and "bias", same forward); inject_lora (lorakeep/adapter.h) arms
// it when PEFT's rules select it, as it arms LoraLinear.
//
//   conv = register_module("conv", lorakeep::LoraConv2d(torch::nn::Conv2dOptions(3, 64, 3).padding(1)));
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/pimpl.h>

#include "lorakeep/lora_layer.h"

namespace lorakeep {

class LoraConv2dImpl : public torch::nn::Module, public LoraLayer {
 public:
  explicit LoraConv2dImpl(const torch::nn::Conv2dOptions& options);
  LoraConv2dImpl(std::int64_t in_channels, std::int64_t out_channels, torch::ExpandingArray<2> kernel_size)
      : LoraConv2dImpl(torch::nn::Conv2dOptions(in_channels, out_channels, kernel_size)) {}
  // Wraps an existing layer: its weight and bias become this layer's base
  // (shared).
  explicit LoraConv2dImpl(const torch::nn::Conv2d& base);

  // The convolution, plus, armed and not merged, PEFT's LoRA path:
  // scaling * B(A(dropout(x))), A a convolution of the base's kernel size,
  // stride and padding into r channels, B a 1x1 convolution into the
  // outputs in the base's groups, computed in the adapter's dtype. With
  // DoRA, as PEFT's: with k = magnitude / norm (norm: the L2 norm of each
  // output channel's kernel of W + scaling * delta, detached),
  // base(x) + (k - 1) * conv(x, W) + k * scaling * B(A(dropout(x))).
  torch::Tensor forward(const torch::Tensor& x);

  // Arms the layer: lora_A [r, in, kh, kw] and lora_B [out, r / groups, 1,
  // 1] on the weight's device (F32, or F64 for an F64 base), initialised as
  // PEFT does (as LoraLinear), with use_dora the magnitude [1, out, 1, 1]
  // (PEFT's shape), with lora_bias lora_B's bias [out]; the base moves under
  // "base_layer", frozen. Throws Error(kInvalidArgument) if it already has an
  // adapter, or with refusal(options).
  void add_adapter(const LoraAdapterOptions& options) override;
  bool has_adapter() const override { return static_cast<bool>(lora_A); }
  // LoraLayer's refusals, and what PEFT's conv LoRA cannot compute: r not a
  // multiple of groups, DoRA with groups > 1, dilation other than 1, and a
  // padding_mode other than zeros (PEFT's lora_A ignores both).
  std::string refusal(const LoraAdapterOptions& options) const override;

  // merge() (LoraLayer's): delta[o] = scaling * sum_r B[o, r] A[r] (PEFT's
  // delta for groups = 1; PEFT cannot merge grouped ones, nor can this);
  // DoRA's outputs are the output channels.
  bool use_dora() const override { return lora_magnitude_vector.defined(); }
  const torch::nn::Conv2dOptions& options() const { return options_; }

  std::vector<std::pair<std::string, torch::Tensor>> lora_tensors() const override;
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> lora_shapes(
      const LoraAdapterOptions& options) const override;
  const torch::Tensor& base_weight() const override { return weight; }
  bool pads_rank() const override { return options_.groups() == 1; }
  const char* kind() const override { return "convolution"; }

  torch::Tensor weight;  // the base [out, in / groups, kh, kw]
  torch::Tensor bias;    // undefined without bias
  torch::nn::Conv2d lora_A{nullptr};
  torch::nn::Conv2d lora_B{nullptr};
  torch::Tensor lora_magnitude_vector;  // DoRA's magnitude [1, out, 1, 1]; undefined without DoRA

 private:
  std::shared_ptr<torch::nn::Module> new_layer_over_base() const override;
  void on_dropout(double p) override;
  torch::Tensor delta_f32_or_wider() const override;
  torch::Tensor dora_norms(const torch::Tensor& adapted) const override;
  torch::Tensor dora_factors(const torch::Tensor& norms) const override;
  torch::Tensor base_bias() const override { return bias; }
  torch::Tensor lora_bias_tensor() const override;

  torch::nn::Conv2dOptions options_;
  torch::nn::Conv2d base_;  // computes the base's forward on the same tensors; not registered
  std::shared_ptr<torch::nn::Module> base_layer_;
  torch::nn::Dropout dropout_{nullptr};
};
TORCH_MODULE(LoraConv2d);

}  // namespace lorakeep
