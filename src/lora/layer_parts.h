// Private: the parts every LoRA layer kind shares (lora_linear.cpp,
// lora_embedding.cpp, lora_conv2d.cpp): the module that holds the base, the
// compute dtype, the factors' initialisation, dropout.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/dropout.h>

#include "lorakeep/lora_layer.h"

namespace lorakeep::detail {

// Holds the base weight (and bias) once a layer is armed, so that they are
// named "base_layer.weight" / "base_layer.bias", as in PEFT.
class LoraBaseImpl : public torch::nn::Module {
 public:
  LoraBaseImpl(const at::Tensor& weight, const at::Tensor& bias);
};

// The dtype adapters and merges compute in: F64 for an F64 base, else F32.
at::ScalarType compute_dtype(const at::Tensor& base);

// lora_A's and lora_B's weights (and lora_B's bias, when defined) as PEFT
// initialises them in a linear or convolution layer: "true", A
// Kaiming-uniform with a = sqrt(5), B and its bias zero; "gaussian", A
// normal(0, 1/r), B zero; "false", as their modules made them.
void init_factors(const at::Tensor& a, const at::Tensor& b, const at::Tensor& b_bias, const LoraAdapterOptions& o);

// The tensors of an adapter made of lora_A / lora_B modules, named as under
// the layer: the two weights, then the magnitude and lora_B's bias when
// defined.
std::vector<std::pair<std::string, at::Tensor>> factor_tensors(const at::Tensor& a, const at::Tensor& b,
                                                               const at::Tensor& magnitude, const at::Tensor& b_bias);

// Throws Error(kInvalidArgument) unless `name` is a non-empty run of
// [A-Za-z0-9_-]: an adapter name, which names a module and a directory.
void check_adapter_name(const std::string& name);

// Sets `owner`'s "lora_dropout" to p, registering it on the first p > 0.
void set_dropout(torch::nn::Module& owner, torch::nn::Dropout& dropout, double p);

}  // namespace lorakeep::detail
