#include "lorakeep/lora_conv2d.h"

#include <vector>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/enum.h>
#include <torch/nn/functional/conv.h>

#include "lorakeep/error.h"
#include "lora/layer_parts.h"

namespace lorakeep {
namespace {

// The L2 norm of each output channel's kernel of `w` [out, ...], without
// gradient: DoRA's denominator for convolutions.
at::Tensor channel_norms(const at::Tensor& w) {
  c10::NoGradGuard no_grad;
  return at::linalg_vector_norm(w.reshape({w.size(0), -1}), 2, std::vector<std::int64_t>{1}, /*keepdim=*/false,
                                c10::nullopt);
}

torch::nn::Conv2dOptions options_of(const torch::nn::Conv2d& conv) {
  const auto& o = conv->options;
  return torch::nn::Conv2dOptions(o.in_channels(), o.out_channels(), o.kernel_size())
      .stride(o.stride())
      .padding(o.padding())
      .dilation(o.dilation())
      .groups(o.groups())
      .bias(o.bias())
      .padding_mode(o.padding_mode());
}

}  // namespace

using detail::compute_dtype;

LoraConv2dImpl::LoraConv2dImpl(const torch::nn::Conv2dOptions& options)
    : LoraConv2dImpl(torch::nn::Conv2d(options)) {}  // torch::nn::Conv2d's own parameters and initialisation

LoraConv2dImpl::LoraConv2dImpl(const torch::nn::Conv2d& base) : options_(options_of(base)), base_(base) {
  weight = register_parameter("weight", base->weight);
  if (options_.bias()) bias = register_parameter("bias", base->bias);
}

std::shared_ptr<torch::nn::Module> LoraConv2dImpl::new_layer_over_base() const {
  return std::make_shared<LoraConv2dImpl>(base_);  // base_ holds the same tensors
}

torch::Tensor LoraConv2dImpl::forward(const torch::Tensor& x) {
  if (LoraLayer* named = active_named()) return static_cast<LoraConv2dImpl*>(named)->forward(x);
  torch::Tensor result = base_->forward(x);
  if (!computes_own_adapter()) return result;
  torch::Tensor h = x.to(lora_A->weight.scalar_type());
  const bool dropped = dropout_ && adapter_.dropout > 0 && is_training();
  if (dropped) h = dropout_(h);
  const torch::Tensor lora = lora_B(lora_A(h)) * scaling_;
  if (!use_dora()) return result + lora.to(result.scalar_type());
  // DoRA, as PEFT's _DoraConvNdLayer: the norms are constants to the gradient.
  const torch::Tensor k = lora_magnitude_vector / channel_norms(adapted_weight()).view({1, -1, 1, 1});
  torch::Tensor base_x;  // the convolution without the bias, on the input the LoRA path saw
  if (dropped) {
    namespace F = torch::nn::functional;
    base_x = F::conv2d(h, weight.to(h.scalar_type()),
                       F::Conv2dFuncOptions()
                           .stride(options_.stride())
                           .padding(options_.padding())
                           .dilation(options_.dilation())
                           .groups(options_.groups()));
  } else {
    base_x = (bias.defined() ? result - bias.view({1, -1, 1, 1}) : result).to(h.scalar_type());
  }
  return result + ((k - 1) * base_x + k * lora).to(result.scalar_type());
}

std::string LoraConv2dImpl::refusal(const LoraAdapterOptions& o) const {
  const std::int64_t groups = options_.groups();
  if (o.r >= 1 && o.r % groups != 0) {
    return "rank " + std::to_string(o.r) + " is not a multiple of the convolution's groups (" + std::to_string(groups) +
           "), which PEFT requires";
  }
  if (o.use_dora && groups > 1) return "DoRA on a grouped convolution (PEFT cannot compute its norms)";
  for (const std::int64_t d : *options_.dilation()) {
    if (d != 1) return "the convolution is dilated, which PEFT's lora_A ignores: not supported";
  }
  if (torch::enumtype::get_enum_name(options_.padding_mode()) != "kZeros") {  // c10:: or std::variant by version
    return "the convolution pads other than with zeros, which PEFT's lora_A ignores: not supported";
  }
  return LoraLayer::refusal(o);
}

void LoraConv2dImpl::add_adapter(const LoraAdapterOptions& o) {
  if (has_adapter()) throw Error(ErrorCode::kInvalidArgument, "the layer already has a LoRA adapter");
  if (const std::string why = refusal(o); !why.empty()) throw Error(ErrorCode::kInvalidArgument, why);
  parameters_.erase("weight");
  if (bias.defined()) parameters_.erase("bias");
  base_layer_ = register_module("base_layer", std::make_shared<detail::LoraBaseImpl>(weight, bias));
  weight.set_requires_grad(false);
  if (bias.defined()) bias.set_requires_grad(false);

  namespace nn = torch::nn;
  lora_A = register_module("lora_A", nn::Conv2d(nn::Conv2dOptions(options_.in_channels(), o.r, options_.kernel_size())
                                                    .stride(options_.stride())
                                                    .padding(options_.padding())
                                                    .bias(false)));
  lora_B = register_module(
      "lora_B",
      nn::Conv2d(nn::Conv2dOptions(o.r, options_.out_channels(), 1).groups(options_.groups()).bias(o.lora_bias)));
  lora_A->to(weight.device(), compute_dtype(weight));
  lora_B->to(weight.device(), compute_dtype(weight));
  detail::init_factors(lora_A->weight, lora_B->weight, o.lora_bias ? lora_B->bias : torch::Tensor(), o);
  set_adapter_options(o);
  if (o.use_dora) {
    lora_magnitude_vector = register_parameter("lora_magnitude_vector",
                                               channel_norms(adapted_weight()).view({1, -1, 1, 1}));
  }
}

void LoraConv2dImpl::on_dropout(double p) { detail::set_dropout(*this, dropout_, p); }

std::vector<std::pair<std::string, torch::Tensor>> LoraConv2dImpl::lora_tensors() const {
  return detail::factor_tensors(lora_A->weight, lora_B->weight, lora_magnitude_vector,
                                adapter_.lora_bias ? lora_B->bias : torch::Tensor());
}

std::vector<std::pair<std::string, std::vector<std::int64_t>>> LoraConv2dImpl::lora_shapes(
    const LoraAdapterOptions& o) const {
  const std::int64_t in = options_.in_channels(), out = options_.out_channels();
  const auto& k = *options_.kernel_size();
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> shapes = {
      {"lora_A.weight", {o.r, in, k[0], k[1]}}, {"lora_B.weight", {out, o.r / options_.groups(), 1, 1}}};
  if (o.use_dora) shapes.push_back({"lora_magnitude_vector", {1, out, 1, 1}});
  if (o.lora_bias) shapes.push_back({"lora_B.bias", {out}});
  return shapes;
}

torch::Tensor LoraConv2dImpl::delta_f32_or_wider() const {
  if (!has_adapter()) throw Error(ErrorCode::kInvalidArgument, "the layer has no LoRA adapter");
  if (options_.groups() > 1) {
    throw Error(ErrorCode::kInvalidArgument,
                "a LoRA adapter on a grouped convolution cannot be merged (PEFT cannot merge it either): not merged");
  }
  const auto compute = compute_dtype(weight);
  const std::int64_t r = adapter_.r;
  c10::NoGradGuard no_grad;
  return (lora_B->weight.to(compute).reshape({-1, r}).matmul(lora_A->weight.to(compute).reshape({r, -1})) * scaling_)
      .view(weight.sizes());
}

torch::Tensor LoraConv2dImpl::dora_norms(const torch::Tensor& adapted) const { return channel_norms(adapted); }

torch::Tensor LoraConv2dImpl::dora_factors(const torch::Tensor& norms) const {
  return (lora_magnitude_vector.detach().to(norms.scalar_type()).view({-1}) / norms).view({-1, 1, 1, 1});
}

torch::Tensor LoraConv2dImpl::lora_bias_tensor() const { return adapter_.lora_bias ? lora_B->bias : torch::Tensor(); }

}  // namespace lorakeep
