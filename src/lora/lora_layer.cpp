#include "lorakeep/lora_layer.h"

#include <cmath>
#include <functional>
#include <utility>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/nn/module.h>

#include "lorakeep/error.h"
#include "lora/layer_parts.h"

namespace lorakeep {
namespace {

// target += delta, computed in delta's dtype and rounded once into target's.
void add_rounded_once(const at::Tensor& target, const at::Tensor& delta) {
  if (target.scalar_type() == delta.scalar_type()) {
    target.add_(delta);
  } else {
    target.copy_(target.to(delta.scalar_type()).add_(delta));  // add in F32, round once
  }
}

bool finite(const at::Tensor& t) { return !t.defined() || at::isfinite(t).all().item<bool>(); }

// scaling * lora_bias in the base bias's compute dtype; undefined when
// `lora_bias` is. Throws Error(kInvalidArgument) when the base has no bias
// to merge it into.
at::Tensor lora_bias_delta(const at::Tensor& lora_bias, const at::Tensor& base_bias, double scaling) {
  if (!lora_bias.defined()) return at::Tensor();
  if (!base_bias.defined()) {
    throw Error(ErrorCode::kInvalidArgument,
                "the layer has lora_bias but its base has no bias to merge lora_B.bias into (PEFT cannot merge it "
                "either): not merged");
  }
  c10::NoGradGuard no_grad;
  return lora_bias.to(detail::compute_dtype(base_bias)) * scaling;
}

// weight += delta and bias += bias_delta (when defined), each rounded once;
// with `safe` both are checked for NaN / Inf first.
void lora_merge(const at::Tensor& weight, const at::Tensor& delta, const at::Tensor& bias, const at::Tensor& bias_delta,
                bool safe) {
  c10::NoGradGuard no_grad;
  if (safe && !(finite(delta) && finite(bias_delta))) {
    throw Error(ErrorCode::kInvalidArgument, "the LoRA delta holds NaN or Inf: not merged");
  }
  add_rounded_once(weight, delta);
  if (bias_delta.defined()) add_rounded_once(bias, bias_delta);
}

}  // namespace

std::string LoraLayer::refusal(const LoraAdapterOptions& o) const {
  if (o.r < 1) return "LoRA rank must be at least 1, not " + std::to_string(o.r);
  if (o.init != "true" && o.init != "false" && o.init != "gaussian") {
    return "init_lora_weights '" + o.init + "' is not true, false or gaussian";
  }
  if (o.lora_bias && (o.use_dora || o.init == "gaussian")) {
    return std::string("lora_bias does not combine with ") +
           (o.use_dora ? "use_dora" : "init_lora_weights 'gaussian'") + " (PEFT refuses it too)";
  }
  return "";
}

using detail::check_adapter_name;

void LoraLayer::add_named_adapter(const std::string& name, const LoraAdapterOptions& options) {
  check_adapter_name(name);
  if (any_merged()) {
    throw Error(ErrorCode::kInvalidArgument,
                "the layer has a merged adapter (hint: unmerge first): adapter '" + name + "' not added");
  }
  if (name == kDefaultAdapter) return add_adapter(options);
  if (adapter(name)) throw Error(ErrorCode::kInvalidArgument, "the layer already has an adapter named '" + name + "'");
  if (const std::string why = refusal(options); !why.empty()) throw Error(ErrorCode::kInvalidArgument, why);
  const std::shared_ptr<torch::nn::Module> module = new_layer_over_base();
  auto layer = std::dynamic_pointer_cast<LoraLayer>(module);
  layer->add_adapter(options);
  module->unregister_module("base_layer");  // the base is this layer's
  if (!named_holder_) {
    named_holder_ = dynamic_cast<torch::nn::Module&>(*this).register_module("lora_adapters",
                                                                            std::make_shared<torch::nn::Module>());
  }
  named_holder_->register_module(name, module);
  named_.emplace_back(name, std::move(layer));
}

LoraLayer* LoraLayer::adapter(const std::string& name) { return name == kDefaultAdapter ? this : find_named(name); }

LoraLayer* LoraLayer::find_named(const std::string& name) const {
  for (const auto& [n, layer] : named_) {
    if (n == name) return layer.get();
  }
  return nullptr;
}

std::vector<std::string> LoraLayer::adapter_names() const {
  std::vector<std::string> out;
  if (has_adapter()) out.emplace_back(kDefaultAdapter);
  for (const auto& named : named_) out.push_back(named.first);
  return out;
}

void LoraLayer::set_active_adapter(const std::string& name) {
  check_adapter_name(name);
  if (name != active_ && any_merged()) {
    throw Error(ErrorCode::kInvalidArgument, "the layer's weight holds its merged adapter '" + active_ +
                                                 "' (hint: unmerge first): '" + name + "' not made active");
  }
  active_ = name;
}

bool LoraLayer::any_merged() const {
  bool any = merged_;
  for (const auto& named : named_) any = any || named.second->merged();
  return any;
}

LoraLayer* LoraLayer::active_named() const { return active_ == kDefaultAdapter ? nullptr : find_named(active_); }

void LoraLayer::set_adapter_options(const LoraAdapterOptions& options) {
  adapter_ = options;
  merged_ = false;
  held_rank_ = 0;
  set_scaling(options.alpha, options.use_rslora, options.dropout);
}

void LoraLayer::set_scaling(double alpha, bool use_rslora, double dropout, int rank) {
  if (!has_adapter()) throw Error(ErrorCode::kInvalidArgument, "the layer has no LoRA adapter");
  if (merged_) {
    throw Error(ErrorCode::kInvalidArgument,
                "the layer's adapter is merged into its weight with the old scaling (hint: unmerge first)");
  }
  if (rank < 0 || rank > adapter_.r) {
    throw Error(ErrorCode::kInvalidArgument,
                "rank " + std::to_string(rank) + " does not fit the layer's armed rank " + std::to_string(adapter_.r));
  }
  if (rank > 0) held_rank_ = rank == adapter_.r ? 0 : rank;
  adapter_.alpha = alpha;
  adapter_.use_rslora = use_rslora;
  adapter_.dropout = dropout;
  const double r = static_cast<double>(this->rank());
  scaling_ = use_rslora ? alpha / std::sqrt(r) : alpha / r;
  on_dropout(dropout);
}

void LoraLayer::for_each_rank_dim(int rank,
                                  const std::function<void(at::Tensor&, std::int64_t dim, std::int64_t keep)>& fn,
                                  std::vector<std::pair<std::string, at::Tensor>>& tensors) const {
  LoraAdapterOptions at_rank = adapter_;
  at_rank.r = rank;
  const auto shapes = lora_shapes(at_rank);
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    for (std::int64_t d = 0; d < tensors[i].second.dim(); ++d) {
      const std::int64_t keep = shapes[i].second[static_cast<std::size_t>(d)];
      if (tensors[i].second.size(d) != keep) fn(tensors[i].second, d, keep);
    }
  }
}

std::vector<std::pair<std::string, at::Tensor>> LoraLayer::lora_tensors_at(int rank) const {
  std::vector<std::pair<std::string, at::Tensor>> tensors = lora_tensors();
  if (rank == adapter_.r) return tensors;
  for_each_rank_dim(
      rank, [](at::Tensor& t, std::int64_t dim, std::int64_t keep) { t = t.narrow(dim, 0, keep); }, tensors);
  return tensors;
}

void LoraLayer::zero_beyond(int rank) {
  if (rank == adapter_.r) return;
  std::vector<std::pair<std::string, at::Tensor>> tensors = lora_tensors();
  c10::NoGradGuard no_grad;
  for_each_rank_dim(
      rank, [](at::Tensor& t, std::int64_t dim, std::int64_t keep) { t.narrow(dim, keep, t.size(dim) - keep).zero_(); },
      tensors);
}

at::Tensor LoraLayer::adapted_weight() const {
  c10::NoGradGuard no_grad;
  const at::Tensor delta = delta_f32_or_wider();
  return base_weight().to(delta.scalar_type()) + delta;
}

void LoraLayer::merge(bool safe) {
  if (merged_) return;
  if (use_dora()) {
    c10::NoGradGuard no_grad;
    at::Tensor merged = adapted_weight();
    at::Tensor norms = dora_norms(merged);
    merged.mul_(dora_factors(norms));
    if (safe && !finite(merged)) {
      throw Error(ErrorCode::kInvalidArgument, "the DoRA-merged weight holds NaN or Inf: not merged");
    }
    base_weight().copy_(merged);
    merged_norms_ = std::move(norms);
  } else {
    lora_merge(base_weight(), delta_f32_or_wider(), base_bias(),
               lora_bias_delta(lora_bias_tensor(), base_bias(), scaling_), safe);
  }
  merged_ = true;
}

void LoraLayer::unmerge() {
  if (!merged_) return;
  const at::Tensor delta = delta_f32_or_wider();
  if (use_dora()) {
    c10::NoGradGuard no_grad;
    base_weight().copy_(base_weight().to(delta.scalar_type()).div(dora_factors(merged_norms_)).sub_(delta));
    merged_norms_ = at::Tensor();
  } else {
    const at::Tensor bias_delta = lora_bias_delta(lora_bias_tensor(), base_bias(), scaling_);
    lora_merge(base_weight(), -delta, base_bias(), bias_delta.defined() ? -bias_delta : at::Tensor(), /*safe=*/false);
  }
  merged_ = false;
}

}  // namespace lorakeep
