#include "model.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "lorakeep/error.h"
#include "lorakeep/tensor_source.h"

namespace bert {
namespace {

using json = nlohmann::json;
using lorakeep::Error;
using lorakeep::ErrorCode;

[[noreturn]] void fail(ErrorCode code, const std::string& path, const std::string& key, const std::string& what) {
  throw Error(code, "'" + path + "': " + (key.empty() ? "" : "key '" + key + "' ") + what);
}

std::int64_t size_field(const json& root, const std::string& path, const char* key, std::optional<std::int64_t> dflt) {
  auto it = root.find(key);
  if (it == root.end() || it->is_null()) {
    if (dflt) return *dflt;
    fail(ErrorCode::kCorruption, path, key, "is missing (hint: is this a Hugging Face BERT config.json?)");
  }
  if (!it->is_number_integer()) fail(ErrorCode::kCorruption, path, key, "is not an integer: " + it->dump());
  const std::int64_t v = it->get<std::int64_t>();
  if (v < 1) fail(ErrorCode::kInvalidArgument, path, key, "is " + std::to_string(v) + ", must be at least 1");
  return v;
}

double real_field(const json& root, const std::string& path, const char* key, double dflt) {
  auto it = root.find(key);
  if (it == root.end() || it->is_null()) return dflt;
  if (!it->is_number()) fail(ErrorCode::kCorruption, path, key, "is not a number: " + it->dump());
  return it->get<double>();
}

std::string string_field(const json& root, const std::string& path, const char* key, const std::string& dflt) {
  auto it = root.find(key);
  if (it == root.end() || it->is_null()) return dflt;
  if (!it->is_string()) fail(ErrorCode::kCorruption, path, key, "is not a string: " + it->dump());
  return it->get<std::string>();
}

lorakeep::LoraLinear linear(torch::nn::Module& parent, const char* name, std::int64_t in, std::int64_t out) {
  return parent.register_module(name, lorakeep::LoraLinear(in, out));
}

torch::nn::LayerNorm layer_norm(torch::nn::Module& parent, const BertConfig& c) {
  return parent.register_module(
      "LayerNorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps)));
}

}  // namespace

BertConfig read_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    fail(err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIOError, path, "",
         std::string("cannot be opened: ") + std::strerror(err) +
             " (hint: a model directory holds config.json, model.safetensors and tokenizer.json)");
  }
  std::ostringstream bytes;
  bytes << in.rdbuf();
  json root;
  try {
    root = json::parse(bytes.str());
  } catch (const json::exception& e) {
    fail(ErrorCode::kCorruption, path, "", std::string("is not valid JSON: ") + e.what());
  }
  if (!root.is_object()) fail(ErrorCode::kCorruption, path, "", "is not a JSON object");
  const std::string type = string_field(root, path, "model_type", "");
  if (type != "bert") {
    fail(ErrorCode::kNotSupported, path, "model_type",
         "is '" + type + "': this example reads BERT models only (model_type \"bert\")");
  }
  const std::string pos = string_field(root, path, "position_embedding_type", "absolute");
  if (pos != "absolute") {
    fail(ErrorCode::kNotSupported, path, "position_embedding_type", "is '" + pos + "': only \"absolute\" is supported");
  }
  BertConfig c;
  c.vocab_size = size_field(root, path, "vocab_size", std::nullopt);
  c.hidden_size = size_field(root, path, "hidden_size", std::nullopt);
  c.num_hidden_layers = size_field(root, path, "num_hidden_layers", std::nullopt);
  c.num_attention_heads = size_field(root, path, "num_attention_heads", std::nullopt);
  c.intermediate_size = size_field(root, path, "intermediate_size", std::nullopt);
  c.max_position_embeddings = size_field(root, path, "max_position_embeddings", 512);
  c.type_vocab_size = size_field(root, path, "type_vocab_size", 2);
  c.layer_norm_eps = real_field(root, path, "layer_norm_eps", 1e-12);
  c.hidden_dropout_prob = real_field(root, path, "hidden_dropout_prob", 0.1);
  c.attention_probs_dropout_prob = real_field(root, path, "attention_probs_dropout_prob", 0.1);
  if (auto it = root.find("classifier_dropout"); it != root.end() && !it->is_null()) {
    c.classifier_dropout = real_field(root, path, "classifier_dropout", 0.1);
  }
  c.initializer_range = real_field(root, path, "initializer_range", 0.02);
  c.hidden_act = string_field(root, path, "hidden_act", "gelu");
  if (c.hidden_act != "gelu" && c.hidden_act != "gelu_new" && c.hidden_act != "gelu_pytorch_tanh" &&
      c.hidden_act != "relu") {
    fail(ErrorCode::kNotSupported, path, "hidden_act",
         "is '" + c.hidden_act + "': supported are gelu, gelu_new, gelu_pytorch_tanh and relu");
  }
  if (c.hidden_size % c.num_attention_heads != 0) {
    fail(ErrorCode::kInvalidArgument, path, "hidden_size",
         "is " + std::to_string(c.hidden_size) + ", not a multiple of num_attention_heads (" +
             std::to_string(c.num_attention_heads) + ")");
  }
  return c;
}

EmbeddingsImpl::EmbeddingsImpl(const BertConfig& c) {
  word_embeddings = register_module("word_embeddings", torch::nn::Embedding(c.vocab_size, c.hidden_size));
  position_embeddings = register_module("position_embeddings",
                                        torch::nn::Embedding(c.max_position_embeddings, c.hidden_size));
  token_type_embeddings = register_module("token_type_embeddings",
                                          torch::nn::Embedding(c.type_vocab_size, c.hidden_size));
  LayerNorm = layer_norm(*this, c);
  dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
  position_ids = register_buffer("position_ids", torch::arange(c.max_position_embeddings).unsqueeze(0));
}

torch::Tensor EmbeddingsImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& token_type_ids) {
  const std::int64_t t = input_ids.size(1);
  if (t > position_ids.size(1)) {
    throw Error(ErrorCode::kInvalidArgument, "a sequence of " + std::to_string(t) +
                                                 " tokens is longer than max_position_embeddings (" +
                                                 std::to_string(position_ids.size(1)) + ")");
  }
  torch::Tensor x = word_embeddings(input_ids) + token_type_embeddings(token_type_ids) +
                    position_embeddings(position_ids.narrow(1, 0, t));
  return dropout(LayerNorm(x));
}

SelfAttentionImpl::SelfAttentionImpl(const BertConfig& c) : heads(c.num_attention_heads) {
  query = linear(*this, "query", c.hidden_size, c.hidden_size);
  key = linear(*this, "key", c.hidden_size, c.hidden_size);
  value = linear(*this, "value", c.hidden_size, c.hidden_size);
  dropout = register_module("dropout", torch::nn::Dropout(c.attention_probs_dropout_prob));
}

torch::Tensor SelfAttentionImpl::forward(const torch::Tensor& hidden, const torch::Tensor& mask_bias) {
  const std::int64_t b = hidden.size(0), t = hidden.size(1), d = hidden.size(2) / heads;
  auto split = [&](const torch::Tensor& x) { return x.view({b, t, heads, d}).transpose(1, 2); };
  const torch::Tensor q = split(query(hidden)), k = split(key(hidden)), v = split(value(hidden));
  torch::Tensor scores = torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(d)) + mask_bias;
  torch::Tensor probs = dropout(torch::softmax(scores, -1));
  return torch::matmul(probs, v).transpose(1, 2).reshape({b, t, heads * d});
}

ResidualOutputImpl::ResidualOutputImpl(const BertConfig& c, std::int64_t in_features) {
  dense = linear(*this, "dense", in_features, c.hidden_size);
  LayerNorm = layer_norm(*this, c);
  dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
}

torch::Tensor ResidualOutputImpl::forward(const torch::Tensor& x, const torch::Tensor& residual) {
  return LayerNorm(dropout(dense(x)) + residual);
}

AttentionImpl::AttentionImpl(const BertConfig& c) {
  self = register_module("self", SelfAttention(c));
  output = register_module("output", ResidualOutput(c, c.hidden_size));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& hidden, const torch::Tensor& mask_bias) {
  return output(self(hidden, mask_bias), hidden);
}

IntermediateImpl::IntermediateImpl(const BertConfig& c) : act(c.hidden_act) {
  dense = linear(*this, "dense", c.hidden_size, c.intermediate_size);
}

torch::Tensor IntermediateImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = dense(x);
  if (act == "relu") return torch::relu(h);
  return torch::gelu(h, act == "gelu" ? "none" : "tanh");
}

LayerImpl::LayerImpl(const BertConfig& c) {
  attention = register_module("attention", Attention(c));
  intermediate = register_module("intermediate", Intermediate(c));
  output = register_module("output", ResidualOutput(c, c.intermediate_size));
}

torch::Tensor LayerImpl::forward(const torch::Tensor& hidden, const torch::Tensor& mask_bias) {
  const torch::Tensor a = attention(hidden, mask_bias);
  return output(intermediate(a), a);
}

EncoderImpl::EncoderImpl(const BertConfig& c) {
  layer = register_module("layer", torch::nn::ModuleList());
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) layer->push_back(Layer(c));
}

torch::Tensor EncoderImpl::forward(torch::Tensor hidden, const torch::Tensor& mask_bias) {
  for (const auto& l : *layer) hidden = l->as<LayerImpl>()->forward(hidden, mask_bias);
  return hidden;
}

PoolerImpl::PoolerImpl(const BertConfig& c) { dense = linear(*this, "dense", c.hidden_size, c.hidden_size); }

torch::Tensor PoolerImpl::forward(const torch::Tensor& hidden) { return torch::tanh(dense(hidden.select(1, 0))); }

BertModelImpl::BertModelImpl(const BertConfig& c) {
  embeddings = register_module("embeddings", Embeddings(c));
  encoder = register_module("encoder", Encoder(c));
  pooler = register_module("pooler", Pooler(c));
}

Encoded BertModelImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                               const torch::Tensor& token_type_ids) {
  const torch::Tensor h = embeddings(input_ids, token_type_ids);
  // Hugging Face's extended mask: (1 - mask) * the dtype's lowest value, added to the scores.
  const torch::Tensor mask_bias = (1.0 - attention_mask.to(h.scalar_type()).unsqueeze(1).unsqueeze(2)) *
                                  std::numeric_limits<float>::lowest();
  Encoded out;
  out.last_hidden_state = encoder(h, mask_bias);
  out.pooled = pooler(out.last_hidden_state);
  return out;
}

BertForSequenceClassificationImpl::BertForSequenceClassificationImpl(const BertConfig& c, std::int64_t labels)
    : config(c), num_labels(labels) {
  if (labels < 1) throw Error(ErrorCode::kInvalidArgument, "num_labels must be at least 1");
  bert = register_module("bert", BertModel(c));
  dropout = register_module("dropout", torch::nn::Dropout(c.classifier_dropout.value_or(c.hidden_dropout_prob)));
  classifier = register_module("classifier", torch::nn::Linear(c.hidden_size, labels));
  torch::NoGradGuard no_grad;
  classifier->weight.normal_(0, c.initializer_range);
  classifier->bias.zero_();
}

torch::Tensor BertForSequenceClassificationImpl::forward(const torch::Tensor& input_ids,
                                                         const torch::Tensor& attention_mask,
                                                         const torch::Tensor& token_type_ids) {
  return classifier(dropout(bert(input_ids, attention_mask, token_type_ids).pooled));
}

PretrainedLoad load_pretrained(BertForSequenceClassification& model, const std::string& weights,
                               std::uint64_t chunk_bytes) {
  const auto source = lorakeep::open_tensor_source(weights);
  PretrainedLoad out;
  out.bert_prefix_in_file = source->contains("bert.embeddings.word_embeddings.weight");
  const std::string file_prefix = out.bert_prefix_in_file ? "bert." : "";
  out.classifier_loaded = out.bert_prefix_in_file && source->contains("classifier.weight");

  // The targets: every parameter of the encoder, the position ids if the
  // file has them, the head if the file has one.
  lorakeep::NamedTensors targets;
  for (const auto& p : model->bert->named_parameters()) targets.emplace_back("bert." + p.key(), p.value());
  const std::string position_ids = "embeddings.position_ids";
  if (source->contains(file_prefix + position_ids)) {
    targets.emplace_back("bert." + position_ids, model->bert->embeddings->position_ids);
  }
  if (out.classifier_loaded) {
    for (const auto& p : model->classifier->named_parameters())
      targets.emplace_back("classifier." + p.key(), p.value());
  }
  lorakeep::LoadOptions options;
  options.add_prefix = out.bert_prefix_in_file ? "" : "bert.";
  options.chunk_bytes = chunk_bytes;
  out.report = lorakeep::load_into(targets, *source, options);
  return out;
}

}  // namespace bert
