#include <cmath>
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>

#include "lorakeep/error.h"
#include "lorakeep/lora_linear.h"

namespace lorakeep {
namespace {

// Holds the base weight and bias once a layer is armed, so that they are
// named "base_layer.weight" / "base_layer.bias", as in PEFT.
class LoraBaseImpl : public torch::nn::Module {
 public:
  LoraBaseImpl(const torch::Tensor& weight, const torch::Tensor& bias) {
    register_parameter("weight", weight, /*requires_grad=*/false);
    if (bias.defined()) register_parameter("bias", bias, /*requires_grad=*/false);
  }
};

}  // namespace

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

torch::Tensor LoraLinearImpl::base_forward(const torch::Tensor& x) const {
  if (!options_.fan_in_fan_out()) return torch::nn::functional::linear(x, weight, bias);
  torch::Tensor out = x.matmul(weight);
  return bias.defined() ? out + bias : out;
}

torch::Tensor LoraLinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor result = base_forward(x);
  if (!has_adapter() || merged_) return result;
  torch::Tensor h = x.to(lora_A->weight.scalar_type());
  const bool dropped = dropout_ && adapter_.dropout > 0 && is_training();
  if (dropped) h = dropout_(h);
  const torch::Tensor lora = lora_B(lora_A(h)) * scaling_;
  if (!use_dora()) return result + lora.to(result.scalar_type());
  // DoRA, as PEFT's DoraLinearLayer: the norms are constants to the gradient.
  const torch::Tensor k = lora_magnitude_vector / row_norms(delta_f32_or_wider());
  torch::Tensor base_x;  // W x without the bias, on the input the LoRA path saw
  if (dropped) {
    const torch::Tensor w = weight.to(h.scalar_type());
    base_x = options_.fan_in_fan_out() ? h.matmul(w) : torch::nn::functional::linear(h, w);
  } else {
    base_x = (bias.defined() ? result - bias : result).to(h.scalar_type());
  }
  return result + ((k - 1) * base_x + k * lora).to(result.scalar_type());
}

torch::Tensor LoraLinearImpl::row_norms(const torch::Tensor& delta) const {
  c10::NoGradGuard no_grad;
  const torch::Tensor w = weight.to(delta.scalar_type()) + delta;
  const std::vector<std::int64_t> rows = {options_.fan_in_fan_out() ? 0 : 1};  // [in, out] or [out, in]
  return at::linalg_vector_norm(w, 2, rows, /*keepdim=*/false, c10::nullopt);
}

void LoraLinearImpl::add_adapter(const LoraAdapterOptions& o) {
  if (has_adapter()) throw Error(ErrorCode::kInvalidArgument, "the layer already has a LoRA adapter");
  if (o.r < 1) throw Error(ErrorCode::kInvalidArgument, "LoRA rank must be at least 1, not " + std::to_string(o.r));
  if (o.init != "true" && o.init != "false" && o.init != "gaussian") {
    throw Error(ErrorCode::kInvalidArgument, "init_lora_weights '" + o.init + "' is not true, false or gaussian");
  }
  if (o.lora_bias && (o.use_dora || o.init == "gaussian")) {
    throw Error(ErrorCode::kInvalidArgument, std::string("lora_bias does not combine with ") +
                                                 (o.use_dora ? "DoRA" : "init_lora_weights 'gaussian'") +
                                                 " (PEFT refuses it too)");
  }
  // The base moves under "base_layer", frozen.
  parameters_.erase("weight");
  if (bias.defined()) parameters_.erase("bias");
  base_layer_ = register_module("base_layer", std::make_shared<LoraBaseImpl>(weight, bias));
  weight.set_requires_grad(false);
  if (bias.defined()) bias.set_requires_grad(false);

  const auto dtype = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto on = at::TensorOptions().dtype(dtype).device(weight.device());
  const std::int64_t in = options_.in_features(), out = options_.out_features();
  lora_A = register_module("lora_A", torch::nn::Linear(torch::nn::LinearOptions(in, o.r).bias(false)));
  lora_B = register_module("lora_B", torch::nn::Linear(torch::nn::LinearOptions(o.r, out).bias(o.lora_bias)));
  lora_A->to(on.device(), on.dtype().toScalarType());
  lora_B->to(on.device(), on.dtype().toScalarType());
  {
    c10::NoGradGuard no_grad;
    if (o.init == "true") {
      torch::nn::init::kaiming_uniform_(lora_A->weight, std::sqrt(5.0));
      lora_B->weight.zero_();
      if (o.lora_bias) lora_B->bias.zero_();
    } else if (o.init == "gaussian") {
      lora_A->weight.normal_(0.0, 1.0 / o.r);
      lora_B->weight.zero_();
    }  // "false": nn.Linear's own initialisation for both, as PEFT leaves them
  }
  adapter_ = o;
  merged_ = false;
  set_scaling(o.alpha, o.use_rslora, o.dropout);
  if (o.use_dora) {
    lora_magnitude_vector = register_parameter("lora_magnitude_vector", row_norms(delta_f32_or_wider()));
  }
}

void LoraLinearImpl::set_scaling(double alpha, bool use_rslora, double dropout) {
  if (!has_adapter()) throw Error(ErrorCode::kInvalidArgument, "the layer has no LoRA adapter");
  if (merged_) {
    throw Error(ErrorCode::kInvalidArgument,
                "the layer's adapter is merged into its weight with the old scaling (hint: unmerge first)");
  }
  adapter_.alpha = alpha;
  adapter_.use_rslora = use_rslora;
  adapter_.dropout = dropout;
  const double r = static_cast<double>(adapter_.r);
  scaling_ = use_rslora ? alpha / std::sqrt(r) : alpha / r;
  if (dropout > 0 && !dropout_) dropout_ = register_module("lora_dropout", torch::nn::Dropout(dropout));
  if (dropout_) dropout_->options.p(dropout);
}

torch::Tensor LoraLinearImpl::delta_f32_or_wider() const {
  if (!has_adapter()) throw Error(ErrorCode::kInvalidArgument, "the layer has no LoRA adapter");
  const auto compute = weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
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

void LoraLinearImpl::merge(bool safe) {
  if (merged_) return;
  const torch::Tensor delta = delta_f32_or_wider();
  c10::NoGradGuard no_grad;
  if (use_dora()) {
    const torch::Tensor norms = row_norms(delta);
    const torch::Tensor merged = (weight.to(delta.scalar_type()) + delta).mul_(dora_factors(norms));
    if (safe && !torch::isfinite(merged).all().item<bool>()) {
      throw Error(ErrorCode::kInvalidArgument, "the DoRA-merged weight holds NaN or Inf: not merged");
    }
    weight.copy_(merged);
    merged_norms_ = norms;
    merged_ = true;
    return;
  }
  const torch::Tensor bias_delta = lora_bias_delta();
  if (safe && !(torch::isfinite(delta).all().item<bool>() &&
                (!bias_delta.defined() || torch::isfinite(bias_delta).all().item<bool>()))) {
    throw Error(ErrorCode::kInvalidArgument, "the LoRA delta holds NaN or Inf: not merged");
  }
  add_rounded_once(weight, delta);
  if (bias_delta.defined()) add_rounded_once(bias, bias_delta);
  merged_ = true;
}

torch::Tensor LoraLinearImpl::lora_bias_delta() const {
  if (!lora_B->options.bias()) return torch::Tensor();
  if (!bias.defined()) {
    throw Error(ErrorCode::kInvalidArgument,
                "the layer has lora_bias but its base has no bias to merge lora_B.bias into (PEFT cannot merge it "
                "either): not merged");
  }
  const auto compute = bias.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  c10::NoGradGuard no_grad;
  return lora_B->bias.to(compute) * scaling_;
}

void LoraLinearImpl::add_rounded_once(torch::Tensor& target, const torch::Tensor& delta) {
  c10::NoGradGuard no_grad;
  if (target.scalar_type() == delta.scalar_type()) {
    target.add_(delta);
  } else {
    // Add in F32, round once into the half-precision tensor.
    target.copy_(target.to(delta.scalar_type()).add_(delta));
  }
}

void LoraLinearImpl::unmerge() {
  if (!merged_) return;
  const torch::Tensor delta = delta_f32_or_wider();
  c10::NoGradGuard no_grad;
  if (use_dora()) {
    weight.copy_(weight.to(delta.scalar_type()).div(dora_factors(merged_norms_)).sub_(delta));
    merged_norms_ = torch::Tensor();
    merged_ = false;
    return;
  }
  add_rounded_once(weight, -delta);
  if (const torch::Tensor bias_delta = lora_bias_delta(); bias_delta.defined()) add_rounded_once(bias, -bias_delta);
  merged_ = false;
}

}  // namespace lorakeep
