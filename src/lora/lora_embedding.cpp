#include "lorakeep/lora_embedding.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/nn/functional/embedding.h>

#include "lorakeep/error.h"
#include "lora/layer_parts.h"

namespace lorakeep {
namespace {

// The L2 norm of each column (embedding dimension) of `w`, without gradient.
at::Tensor column_norms(const at::Tensor& w) {
  c10::NoGradGuard no_grad;
  const std::vector<std::int64_t> columns = {0};
  return at::linalg_vector_norm(w, 2, columns, /*keepdim=*/false, c10::nullopt);
}

}  // namespace

using detail::compute_dtype;

LoraEmbeddingImpl::LoraEmbeddingImpl(const torch::nn::EmbeddingOptions& options) : options_(options) {
  // torch::nn::Embedding's own parameter and initialisation: a model seeded
  // as before gets the same table.
  torch::nn::Embedding embedding(options);
  options_ = embedding->options;  // padding_idx made non-negative
  weight = register_parameter("weight", embedding->weight);
}

LoraEmbeddingImpl::LoraEmbeddingImpl(const torch::nn::Embedding& base) : options_(base->options) {
  weight = register_parameter("weight", base->weight);
}

LoraEmbeddingImpl::LoraEmbeddingImpl(const torch::nn::EmbeddingOptions& options, const torch::Tensor& weight)
    : options_(options) {
  this->weight = register_parameter("weight", weight, weight.requires_grad());
}

std::shared_ptr<torch::nn::Module> LoraEmbeddingImpl::new_layer_over_base() const {
  return std::shared_ptr<LoraEmbeddingImpl>(new LoraEmbeddingImpl(options_, weight));
}

torch::Tensor LoraEmbeddingImpl::embed(const torch::Tensor& input, const torch::Tensor& table) const {
  namespace F = torch::nn::functional;
  auto o = F::EmbeddingFuncOptions()
               .norm_type(options_.norm_type())
               .scale_grad_by_freq(options_.scale_grad_by_freq())
               .sparse(options_.sparse());
  if (options_.padding_idx()) o.padding_idx(*options_.padding_idx());
  if (options_.max_norm()) o.max_norm(*options_.max_norm());
  return F::embedding(input, table, o);
}

torch::Tensor LoraEmbeddingImpl::forward(const torch::Tensor& input) {
  if (LoraLayer* named = active_named()) return static_cast<LoraEmbeddingImpl*>(named)->forward(input);
  torch::Tensor result = embed(input, weight);
  if (!computes_own_adapter()) return result;
  const torch::Tensor lora = embed(input, lora_embedding_A.t()).matmul(lora_embedding_B.t()) * scaling_;
  if (!use_dora()) return result + lora.to(result.scalar_type());
  // DoRA, as PEFT's DoraEmbeddingLayer: the norms are constants to the gradient.
  const torch::Tensor k = lora_magnitude_vector / column_norms(adapted_weight());
  return (k * result.to(k.scalar_type()) + k * lora).to(result.scalar_type());
}

std::string LoraEmbeddingImpl::refusal(const LoraAdapterOptions& o) const {
  if (o.lora_bias) return "lora_bias is for linear layers (PEFT refuses it on an embedding)";
  if (options_.max_norm()) {
    return "the embedding has max_norm, which renormalises the table it looks up in place (PEFT would renormalise "
           "the LoRA factor too): not supported";
  }
  return LoraLayer::refusal(o);
}

void LoraEmbeddingImpl::add_adapter(const LoraAdapterOptions& o) {
  if (has_adapter()) throw Error(ErrorCode::kInvalidArgument, "the layer already has a LoRA adapter");
  if (const std::string why = refusal(o); !why.empty()) throw Error(ErrorCode::kInvalidArgument, why);
  parameters_.erase("weight");
  base_layer_ = register_module("base_layer", std::make_shared<detail::LoraBaseImpl>(weight, torch::Tensor()));
  weight.set_requires_grad(false);

  const auto on = at::TensorOptions().dtype(compute_dtype(weight)).device(weight.device());
  const std::int64_t num = options_.num_embeddings(), dim = options_.embedding_dim();
  lora_embedding_A = register_parameter("lora_embedding_A", at::empty({o.r, num}, on));
  lora_embedding_B = register_parameter("lora_embedding_B", at::empty({dim, o.r}, on));
  {
    c10::NoGradGuard no_grad;
    if (o.init == "false") {
      lora_embedding_A.normal_();
    } else {  // "true" and "gaussian" alike, as PEFT initialises embeddings
      lora_embedding_A.zero_();
    }
    lora_embedding_B.normal_();
  }
  set_adapter_options(o);
  if (o.use_dora) {
    lora_magnitude_vector = register_parameter("lora_magnitude_vector", column_norms(adapted_weight()));
  }
}

std::vector<std::pair<std::string, torch::Tensor>> LoraEmbeddingImpl::lora_tensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out = {{"lora_embedding_A", lora_embedding_A},
                                                            {"lora_embedding_B", lora_embedding_B}};
  if (use_dora()) out.emplace_back("lora_magnitude_vector", lora_magnitude_vector);
  return out;
}

std::vector<std::pair<std::string, std::vector<std::int64_t>>> LoraEmbeddingImpl::lora_shapes(
    const LoraAdapterOptions& o) const {
  const std::int64_t num = options_.num_embeddings(), dim = options_.embedding_dim();
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> shapes = {{"lora_embedding_A", {o.r, num}},
                                                                           {"lora_embedding_B", {dim, o.r}}};
  if (o.use_dora) shapes.push_back({"lora_magnitude_vector", {dim}});
  return shapes;
}

torch::Tensor LoraEmbeddingImpl::delta_f32_or_wider() const {
  if (!has_adapter()) throw Error(ErrorCode::kInvalidArgument, "the layer has no LoRA adapter");
  const auto compute = compute_dtype(weight);
  c10::NoGradGuard no_grad;
  return (lora_embedding_B.to(compute).matmul(lora_embedding_A.to(compute)) * scaling_).t();
}

torch::Tensor LoraEmbeddingImpl::dora_norms(const torch::Tensor& adapted) const { return column_norms(adapted); }

torch::Tensor LoraEmbeddingImpl::dora_factors(const torch::Tensor& norms) const {
  return (lora_magnitude_vector.detach().to(norms.scalar_type()) / norms).unsqueeze(0);
}

}  // namespace lorakeep
