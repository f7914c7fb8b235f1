#include <cstdint>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>

#include "lorakeep/error.h"
#include "lorakeep/lora_linear.h"
#include "lora/layer_parts.h"

namespace lorakeep {

using detail::compute_dtype;

LoraLinearImpl::LoraLinearImpl(const LoraLinearOptions& options) : options_(options) {
  if (options.fan_in_fan_out()) {
    // GPT-2's Conv1D.
    weight = register_parameter("weight", torch::empty({options.in_features(), options.out_features()}));
    torch::nn::init::normal_(weight, 0.0, 0.02);
    if (options.bias()) bias = register_parameter("bias", torch::zeros({options.out_features()}));
  } else {
    // Exactly torch::nn::Linear's parameters, drawn in the same order from
    // the same generator: a model seeded as before gets the same weights.
    torch::nn::Linear linear(
        torch::nn::LinearOptions(options.in_features(), options.out_features()).bias(options.bias()));
    weight = register_parameter("weight", linear->weight);
    if (options.bias()) bias = register_parameter("bias", linear->bias);
  }
}

LoraLinearImpl::LoraLinearImpl(const torch::nn::Linear& base)
    : options_(base->options.in_features(), base->options.out_features()) {
  options_.bias(base->options.bias());
  weight = register_parameter("weight", base->weight);
  if (base->options.bias()) bias = register_parameter("bias", base->bias);
}

LoraLinearImpl::LoraLinearImpl(const LoraLinearOptions& options, const torch::Tensor& weight, const torch::Tensor& bias)
    : options_(options) {
  this->weight = register_parameter("weight", weight, weight.requires_grad());
  if (bias.defined()) this->bias = register_parameter("bias", bias, bias.requires_grad());
}

std::shared_ptr<torch::nn::Module> LoraLinearImpl::new_layer_over_base() const {
  return std::shared_ptr<LoraLinearImpl>(new LoraLinearImpl(options_, weight, bias));
}

torch::Tensor LoraLinearImpl::base_forward(const torch::Tensor& x) const {
  if (!options_.fan_in_fan_out()) return torch::nn::functional::linear(x, weight, bias);
  torch::Tensor out = x.matmul(weight);
  return bias.defined() ? out + bias : out;
}

torch::Tensor LoraLinearImpl::forward(const torch::Tensor& x) {
  if (LoraLayer* named = active_named()) return static_cast<LoraLinearImpl*>(named)->forward(x);
  torch::Tensor result = base_forward(x);
  if (!computes_own_adapter()) return result;
  torch::Tensor h = x.to(lora_A->weight.scalar_type());
  const bool dropped = dropout_ && adapter_.dropout > 0 && is_training();
  if (dropped) h = dropout_(h);
  const torch::Tensor lora = lora_B(lora_A(h)) * scaling_;
  if (!use_dora()) return result + lora.to(result.scalar_type());
  // DoRA, as PEFT's DoraLinearLayer: the norms are constants to the gradient.
  const torch::Tensor k = lora_magnitude_vector / dora_norms(adapted_weight());
  torch::Tensor base_x;  // W x without the bias, on the input the LoRA path saw
  if (dropped) {
    const torch::Tensor w = weight.to(h.scalar_type());
    base_x = options_.fan_in_fan_out() ? h.matmul(w) : torch::nn::functional::linear(h, w);
  } else {
    base_x = (bias.defined() ? result - bias : result).to(h.scalar_type());
  }
  return result + ((k - 1) * base_x + k * lora).to(result.scalar_type());
}

torch::Tensor LoraLinearImpl::dora_norms(const torch::Tensor& adapted) const {
  c10::NoGradGuard no_grad;
  const std::vector<std::int64_t> rows = {options_.fan_in_fan_out() ? 0 : 1};  // [in, out] or [out, in]
  return at::linalg_vector_norm(adapted, 2, rows, /*keepdim=*/false, c10::nullopt);
}

void LoraLinearImpl::add_adapter(const LoraAdapterOptions& o) {
  if (has_adapter()) throw Error(ErrorCode::kInvalidArgument, "the layer already has a LoRA adapter");
  if (const std::string why = refusal(o); !why.empty()) throw Error(ErrorCode::kInvalidArgument, why);
  // The base moves under "base_layer", frozen.
  parameters_.erase("weight");
  if (bias.defined()) parameters_.erase("bias");
  base_layer_ = register_module("base_layer", std::make_shared<detail::LoraBaseImpl>(weight, bias));
  weight.set_requires_grad(false);
  if (bias.defined()) bias.set_requires_grad(false);

  const auto on = at::TensorOptions().dtype(compute_dtype(weight)).device(weight.device());
  const std::int64_t in = options_.in_features(), out = options_.out_features();
  lora_A = register_module("lora_A", torch::nn::Linear(torch::nn::LinearOptions(in, o.r).bias(false)));
  lora_B = register_module("lora_B", torch::nn::Linear(torch::nn::LinearOptions(o.r, out).bias(o.lora_bias)));
  lora_A->to(on.device(), on.dtype().toScalarType());
  lora_B->to(on.device(), on.dtype().toScalarType());
  detail::init_factors(lora_A->weight, lora_B->weight, o.lora_bias ? lora_B->bias : torch::Tensor(), o);
  set_adapter_options(o);
  if (o.use_dora) lora_magnitude_vector = register_parameter("lora_magnitude_vector", dora_norms(adapted_weight()));
}

void LoraLinearImpl::on_dropout(double p) { detail::set_dropout(*this, dropout_, p); }

std::vector<std::pair<std::string, torch::Tensor>> LoraLinearImpl::lora_tensors() const {
  return detail::factor_tensors(lora_A->weight, lora_B->weight, lora_magnitude_vector,
                                adapter_.lora_bias ? lora_B->bias : torch::Tensor());
}

std::vector<std::pair<std::string, std::vector<std::int64_t>>> LoraLinearImpl::lora_shapes(
    const LoraAdapterOptions& o) const {
  const std::int64_t in = options_.in_features(), out = options_.out_features();
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> shapes = {{"lora_A.weight", {o.r, in}},
                                                                           {"lora_B.weight", {out, o.r}}};
  if (o.use_dora) shapes.push_back({"lora_magnitude_vector", {out}});
  if (o.lora_bias) shapes.push_back({"lora_B.bias", {out}});
  return shapes;
}

torch::Tensor LoraLinearImpl::delta_f32_or_wider() const {
  if (!has_adapter()) throw Error(ErrorCode::kInvalidArgument, "the layer has no LoRA adapter");
  const auto compute = compute_dtype(weight);
  c10::NoGradGuard no_grad;
  torch::Tensor delta = lora_B->weight.to(compute).matmul(lora_A->weight.to(compute)) * scaling_;  // [out, in]
  return options_.fan_in_fan_out() ? delta.t() : delta;
}

torch::Tensor LoraLinearImpl::delta_weight() const { return delta_f32_or_wider().to(weight.scalar_type()); }

// DoRA's factors k = magnitude / norms, shaped to scale the output rows of a
// weight in the base layout.
torch::Tensor LoraLinearImpl::dora_factors(const torch::Tensor& norms) const {
  const torch::Tensor k = lora_magnitude_vector.detach().to(norms.scalar_type()) / norms;
  return options_.fan_in_fan_out() ? k.unsqueeze(0) : k.unsqueeze(1);
}

torch::Tensor LoraLinearImpl::lora_bias_tensor() const { return adapter_.lora_bias ? lora_B->bias : torch::Tensor(); }

}  // namespace lorakeep
