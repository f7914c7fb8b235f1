// The BERT example's model: Hugging Face's BertForSequenceClassification in
// the LibTorch C++ API, read from any local Hugging Face directory of
// `model_type: bert` (config.json + model.safetensors), every size from the
// config.
//
// The module tree, and so every parameter name, is Hugging Face's
// (bert.embeddings.word_embeddings.weight, ...,
// bert.encoder.layer.<i>.attention.self.query.weight, ..., bert.pooler.dense.*,
// classifier.*), so an adapter saved by lorakeep::save_adapter has PEFT's keys
// for this model and PEFT's adapters load into it. Every linear layer of the
// encoder is a lorakeep::LoraLinear (a plain linear layer until inject_lora
// arms it; PEFT's defaults for BERT arm `query` and `value`).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "lorakeep/lora.h"
#include "lorakeep/transfer.h"

namespace bert {

// config.json's fields that the model uses.
struct BertConfig {
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t num_hidden_layers = 0;
  std::int64_t num_attention_heads = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t max_position_embeddings = 512;
  std::int64_t type_vocab_size = 2;
  double layer_norm_eps = 1e-12;
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  std::optional<double> classifier_dropout;  // null: hidden_dropout_prob, as Hugging Face
  double initializer_range = 0.02;
  std::string hidden_act = "gelu";  // gelu (erf) or gelu_new / gelu_pytorch_tanh (tanh) or relu
};

// Reads a Hugging Face config.json of model_type "bert" (absolute position
// embeddings). Throws lorakeep::Error naming the file and key: kNotFound,
// kCorruption (not JSON, a field missing or of the wrong type),
// kNotSupported (another model_type, position_embedding_type or activation),
// kInvalidArgument (sizes that do not fit: hidden_size not a multiple of
// num_attention_heads, a size < 1).
BertConfig read_config(const std::string& path);

struct EmbeddingsImpl : torch::nn::Module {
  explicit EmbeddingsImpl(const BertConfig& c);
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& token_type_ids);

  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr}, token_type_embeddings{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
  torch::Tensor position_ids;  // buffer [1, max_position_embeddings]: 0, 1, 2, ...
};
TORCH_MODULE(Embeddings);

struct SelfAttentionImpl : torch::nn::Module {
  explicit SelfAttentionImpl(const BertConfig& c);
  // `mask_bias`: [B, 1, 1, T], 0 for tokens and the dtype's lowest value for padding.
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& mask_bias);

  std::int64_t heads;
  lorakeep::LoraLinear query{nullptr}, key{nullptr}, value{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(SelfAttention);

// dense, then LayerNorm(dropout(x) + residual): BertSelfOutput and BertOutput.
struct ResidualOutputImpl : torch::nn::Module {
  ResidualOutputImpl(const BertConfig& c, std::int64_t in_features);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& residual);

  lorakeep::LoraLinear dense{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(ResidualOutput);

struct AttentionImpl : torch::nn::Module {
  explicit AttentionImpl(const BertConfig& c);
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& mask_bias);

  SelfAttention self{nullptr};  // Hugging Face's name: attention.self.query, ...
  ResidualOutput output{nullptr};
};
TORCH_MODULE(Attention);

// dense, then the activation.
struct IntermediateImpl : torch::nn::Module {
  explicit IntermediateImpl(const BertConfig& c);
  torch::Tensor forward(const torch::Tensor& x);

  std::string act;
  lorakeep::LoraLinear dense{nullptr};
};
TORCH_MODULE(Intermediate);

struct LayerImpl : torch::nn::Module {
  explicit LayerImpl(const BertConfig& c);
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& mask_bias);

  Attention attention{nullptr};
  Intermediate intermediate{nullptr};
  ResidualOutput output{nullptr};
};
TORCH_MODULE(Layer);

struct EncoderImpl : torch::nn::Module {
  explicit EncoderImpl(const BertConfig& c);
  torch::Tensor forward(torch::Tensor hidden, const torch::Tensor& mask_bias);

  torch::nn::ModuleList layer{nullptr};  // of Layer
};
TORCH_MODULE(Encoder);

// tanh(dense(hidden state of the first token)).
struct PoolerImpl : torch::nn::Module {
  explicit PoolerImpl(const BertConfig& c);
  torch::Tensor forward(const torch::Tensor& hidden);

  lorakeep::LoraLinear dense{nullptr};
};
TORCH_MODULE(Pooler);

// What the encoder computes for a batch.
struct Encoded {
  torch::Tensor last_hidden_state;  // [B, T, hidden]
  torch::Tensor pooled;             // [B, hidden]: tanh(pooler.dense([CLS]))
};

struct BertModelImpl : torch::nn::Module {
  explicit BertModelImpl(const BertConfig& c);
  // input_ids, attention_mask (1 token, 0 padding), token_type_ids: [B, T] int64.
  Encoded forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                  const torch::Tensor& token_type_ids);

  Embeddings embeddings{nullptr};
  Encoder encoder{nullptr};
  Pooler pooler{nullptr};
};
TORCH_MODULE(BertModel);

struct BertForSequenceClassificationImpl : torch::nn::Module {
  BertForSequenceClassificationImpl(const BertConfig& c, std::int64_t num_labels);
  // [B, num_labels] logits.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                        const torch::Tensor& token_type_ids);

  BertConfig config;
  std::int64_t num_labels;
  BertModel bert{nullptr};
  torch::nn::Dropout dropout{nullptr};
  torch::nn::Linear classifier{nullptr};  // initialised as Hugging Face does: normal(0, initializer_range), zero bias
};
TORCH_MODULE(BertForSequenceClassification);

// How load_pretrained read the weights file.
struct PretrainedLoad {
  lorakeep::TransferReport report;
  bool bert_prefix_in_file = false;  // the file names tensors bert.* (a model with a head), not as BertModel
  bool classifier_loaded = false;    // the file had classifier.* (else it keeps its initialisation)
};

// Loads the weights at `weights` (a model directory, a .safetensors file or a
// sharded index: lorakeep::open_tensor_source) into `model` through lorakeep::load_into
// (CPU-first, everything validated before a parameter changes): a BertModel
// file (names without "bert.", Hugging Face's base model) through the prefix
// mapping add_prefix = "bert."; a BertForSequenceClassification file (bert.*
// and classifier.*) as it is. Every parameter of `model.bert` must be in the
// file with its shape; the buffer embeddings.position_ids is loaded when the
// file has it (transformers >= 4.31 no longer saves it); anything else in the
// file is an error. Call before inject_lora. Throws as load_into, naming the
// tensors.
PretrainedLoad load_pretrained(BertForSequenceClassification& model, const std::string& weights,
                               std::uint64_t chunk_bytes = 64ull << 20);

}  // namespace bert
