// A small character-level (byte-level) transformer language model in the
// LibTorch C++ API, with its attention projections declared LoRA-capable
// (lorakeep::LoraLinear behaves exactly as torch::nn::Linear until
// inject_lora arms it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "lorakeep/lora.h"
#include "settings.h"

namespace char_lm {

constexpr int kVocab = 256;  // bytes

struct AttentionImpl : torch::nn::Module {
  AttentionImpl(int n_embd, int n_head, double dropout);
  torch::Tensor forward(const torch::Tensor& x);

  int n_head;
  lorakeep::LoraLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  torch::nn::Dropout drop{nullptr};
};
TORCH_MODULE(Attention);

struct BlockImpl : torch::nn::Module {
  BlockImpl(int n_embd, int n_head, double dropout);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  Attention attn{nullptr};
  torch::nn::Linear fc{nullptr}, proj{nullptr};
  torch::nn::Dropout drop{nullptr};
};
TORCH_MODULE(Block);

// Parameter names: tok_emb.weight, pos_emb.weight, blocks.<i>.attn.q_proj.weight, ..., ln_f.weight, lm_head.weight.
struct CharLMImpl : torch::nn::Module {
  explicit CharLMImpl(const ModelSettings& settings);
  // [B, T] bytes => [B, T, kVocab] logits.
  torch::Tensor forward(const torch::Tensor& idx);
  // Samples `count` bytes after `prompt`.
  std::string generate(const std::string& prompt, int count, double temperature);

  ModelSettings settings;
  torch::nn::Embedding tok_emb{nullptr}, pos_emb{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm ln_f{nullptr};
  torch::nn::Linear lm_head{nullptr};
};
TORCH_MODULE(CharLM);

// Bytes of the texts, split into a training head and a validation tail of
// each file. Throws lorakeep::Error(kNotFound) naming a missing file (with a
// hint to run scripts/install-deps.sh).
struct Corpus {
  torch::Tensor train;  // uint8 -> int64 byte ids
  torch::Tensor val;
  std::int64_t bytes = 0;
};
Corpus load_corpus(const std::vector<std::string>& paths, double validation_fraction);

// A random training batch: (inputs, targets), each [batch, block].
std::pair<torch::Tensor, torch::Tensor> random_batch(const torch::Tensor& data, int batch, int block);

// Mean cross-entropy over `batches` fixed validation batches: the same
// windows every time, so that the same weights give the same loss.
double evaluate(CharLM& model, const torch::Tensor& data, int batches, int batch, int block);

}  // namespace char_lm
