// lorakeep/lora_embedding.h: LoraEmbedding, a drop-in for
// torch::nn::Embedding that can carry one LoRA adapter (PEFT's
// lora.Embedding). Declared in place of torch::nn::Embedding (same
// arguments, same initialisation, the parameter "weight", same forward);
// inject_lora (lorakeep/adapter.h) arms it when PEFT's rules select it, as it
// arms LoraLinear.
//
//   tokens = register_module("tokens", lorakeep::LoraEmbedding(32000, 512));
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/pimpl.h>

#include "lorakeep/lora_layer.h"

namespace lorakeep {

class LoraEmbeddingImpl : public torch::nn::Module, public LoraLayer {
 public:
  explicit LoraEmbeddingImpl(const torch::nn::EmbeddingOptions& options);
  LoraEmbeddingImpl(std::int64_t num_embeddings, std::int64_t embedding_dim)
      : LoraEmbeddingImpl(torch::nn::EmbeddingOptions(num_embeddings, embedding_dim)) {}
  // Wraps an existing layer: its weight becomes this layer's base (shared).
  explicit LoraEmbeddingImpl(const torch::nn::Embedding& base);

  // The embedding of `input`, plus, armed and not merged, PEFT's LoRA path:
  // scaling * embed(input, A^T) B^T, computed in the adapter's dtype (no
  // dropout: PEFT applies none to embeddings). With DoRA, with k = magnitude
  // / norm (norm: the L2 norm of each embedding dimension, a column of
  // W + scaling * (B A)^T, detached from the gradient):
  // k * (embed(input, W) + scaling * embed(input, A^T) B^T).
  torch::Tensor forward(const torch::Tensor& input);

  // Arms the layer: lora_embedding_A [r, num_embeddings] and
  // lora_embedding_B [embedding_dim, r] on the weight's device (F32, or F64
  // for an F64 base), initialised as PEFT does (A zero and B normal(0, 1)
  // for "true" and "gaussian"; both normal(0, 1) for "false"), and with
  // use_dora the magnitude [embedding_dim], initialised to the column norms
  // of W + scaling * (B A)^T; the weight moves to "base_layer.weight", frozen.
  // Throws Error(kInvalidArgument) if it already has an adapter, or with
  // refusal(options).
  void add_adapter(const LoraAdapterOptions& options) override;
  bool has_adapter() const override { return lora_embedding_A.defined(); }
  // LoraLayer's refusals, and lora_bias (PEFT refuses it on embeddings) and
  // max_norm (the lookup would renormalise the LoRA factor in place).
  std::string refusal(const LoraAdapterOptions& options) const override;

  // merge() (LoraLayer's): delta = scaling * (B A)^T; DoRA's outputs are
  // the table's columns (its embedding dimensions).
  bool use_dora() const override { return lora_magnitude_vector.defined(); }
  const torch::nn::EmbeddingOptions& options() const { return options_; }

  std::vector<std::pair<std::string, torch::Tensor>> lora_tensors() const override;
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> lora_shapes(
      const LoraAdapterOptions& options) const override;
  const torch::Tensor& base_weight() const override { return weight; }
  const char* kind() const override { return "embedding"; }

  torch::Tensor weight;                 // the base [num_embeddings, embedding_dim]
  torch::Tensor lora_embedding_A;       // [r, num_embeddings]; undefined until armed
  torch::Tensor lora_embedding_B;       // [embedding_dim, r]
  torch::Tensor lora_magnitude_vector;  // DoRA's magnitude [embedding_dim]; undefined without DoRA

 private:
  // Over `weight`, shared: a named adapter's layer.
  LoraEmbeddingImpl(const torch::nn::EmbeddingOptions& options, const torch::Tensor& weight);
  std::shared_ptr<torch::nn::Module> new_layer_over_base() const override;
  torch::Tensor embed(const torch::Tensor& input, const torch::Tensor& table) const;
  torch::Tensor delta_f32_or_wider() const override;
  torch::Tensor dora_norms(const torch::Tensor& adapted) const override;
  torch::Tensor dora_factors(const torch::Tensor& norms) const override;

  torch::nn::EmbeddingOptions options_;
  std::shared_ptr<torch::nn::Module> base_layer_;
};
TORCH_MODULE(LoraEmbedding);

}  // namespace lorakeep
