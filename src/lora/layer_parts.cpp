#include "lora/layer_parts.h"

#include <cctype>
#include <cmath>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/nn/init.h>

#include "lorakeep/error.h"

namespace lorakeep::detail {

LoraBaseImpl::LoraBaseImpl(const at::Tensor& weight, const at::Tensor& bias) {
  register_parameter("weight", weight, /*requires_grad=*/false);
  if (bias.defined()) register_parameter("bias", bias, /*requires_grad=*/false);
}

at::ScalarType compute_dtype(const at::Tensor& base) {
  return base.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void init_factors(const at::Tensor& a, const at::Tensor& b, const at::Tensor& b_bias, const LoraAdapterOptions& o) {
  c10::NoGradGuard no_grad;
  if (o.init == "true") {
    torch::nn::init::kaiming_uniform_(a, std::sqrt(5.0));
    b.zero_();
    if (b_bias.defined()) b_bias.zero_();
  } else if (o.init == "gaussian") {
    a.normal_(0.0, 1.0 / o.r);
    b.zero_();
  }
}

std::vector<std::pair<std::string, at::Tensor>> factor_tensors(const at::Tensor& a, const at::Tensor& b,
                                                               const at::Tensor& magnitude, const at::Tensor& b_bias) {
  std::vector<std::pair<std::string, at::Tensor>> out = {{"lora_A.weight", a}, {"lora_B.weight", b}};
  if (magnitude.defined()) out.emplace_back("lora_magnitude_vector", magnitude);
  if (b_bias.defined()) out.emplace_back("lora_B.bias", b_bias);
  return out;
}

void check_adapter_name(const std::string& name) {
  bool ok = !name.empty();
  for (const char ch : name) ok = ok && (std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-');
  if (!ok) {
    throw Error(ErrorCode::kInvalidArgument, "adapter name '" + name +
                                                 "' is not a run of letters, digits, '_' and '-' (it names a module "
                                                 "and a directory)");
  }
}

void set_dropout(torch::nn::Module& owner, torch::nn::Dropout& dropout, double p) {
  if (p > 0 && !dropout) dropout = owner.register_module("lora_dropout", torch::nn::Dropout(p));
  if (dropout) dropout->options.p(p);
}

}  // namespace lorakeep::detail
