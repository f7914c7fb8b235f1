// PEFT's adapter keys: built and parsed here, and nowhere else. A key is
// PEFT's prefix (kPeftPrefix), then a LoRA layer's module path and the suffix
// of its factor (spelled in peft_keys.cpp only), or the name of a tensor
// saved whole:
//
//   "base_model.model." + "q_proj" + the lora_A factor's suffix  <=>  {kLoraA, "q_proj"}
//   "base_model.model." + "q_proj" + the lora_B factor's suffix  <=>  {kLoraB, "q_proj"}
//   "base_model.model." + "q_proj" + DoRA's magnitude suffix      <=>  {kMagnitude, "q_proj"}
//   "base_model.model." + "q_proj" + lora_B's bias suffix          <=>  {kLoraBias, "q_proj"}
//   "base_model.model." + "embed" + lora_embedding_A's suffix      <=>  {kEmbeddingA, "embed"}
//   "base_model.model.classifier.weight"                         <=>  {kWhole, "classifier.weight"}
//
// The live model names a tensor as the key less PEFT's prefix (for a factor:
// the name of the layer's parameter, which LoraLayer::lora_tensors gives).
// PEFT strips its adapter name ("default") from the keys it saves (and
// ".weight" from DoRA's magnitude). Other LoRA tensors (lora_ in the name)
// are refused by name.
#pragma once

#include <string>
#include <vector>

#include "lorakeep/tensor_source.h"

namespace lorakeep::detail {

enum class PeftTensor {
  kLoraA,       // a LoRA layer's A factor [r, in]
  kLoraB,       // its B factor [out, r]
  kMagnitude,   // DoRA's magnitude [out]
  kLoraBias,    // lora_B's bias [out] (lora_bias)
  kWhole,       // a tensor saved whole (modules_to_save, task heads)
  kEmbeddingA,  // an embedding's A factor [r, num_embeddings]
  kEmbeddingB,  // its B factor [embedding_dim, r]
};

struct PeftKey {
  PeftTensor kind = PeftTensor::kWhole;
  std::string path;  // the layer's module path for a factor, the tensor's name for kWhole
};

// {kLoraA, "q_proj"} => "q_proj" + the lora_A factor's suffix: the tensor's
// name in the model.
std::string model_name(const PeftKey& key);

// {kLoraA, "q_proj"} => PEFT's prefix + model_name(key): its key in an
// adapter file.
std::string file_key(const PeftKey& key);

// The inverse of file_key. Throws Error(kCorruption) naming `file` for a key
// without PEFT's prefix, Error(kNotSupported) for a kind of LoRA tensor
// lorakeep does not implement.
PeftKey parse_file_key(const std::string& key, const std::string& file);

// What an adapter file holds.
struct AdapterLayout {
  std::vector<std::string> layers;      // module paths with both factors
  std::vector<std::string> dora;        // those of them with a DoRA magnitude
  std::vector<std::string> biased;      // those of them with lora_B.bias
  std::vector<std::string> embeddings;  // those of them whose factors are an embedding's
  std::vector<std::string> whole;       // names of whole tensors

  // The key of the A (or B) factor of the layer at `path`, of its kind.
  PeftKey factor_a(const std::string& path) const;
  PeftKey factor_b(const std::string& path) const;
  bool embedding(const std::string& path) const;
};

// Parses every key of `source`. Throws as parse_file_key, and
// Error(kCorruption) for a layer with one factor only, factors of two kinds
// (lora_A with lora_embedding_B), or a magnitude or a lora_B.bias without
// factors.
AdapterLayout classify_adapter_keys(const TensorSource& source);

// Throws Error(kCorruption) naming `file` unless every layer of `layout` has
// a DoRA magnitude when `use_dora` (adapter_config.json's) and none when not,
// and the same for lora_B.bias and `lora_bias`.
void check_optional_tensors(const AdapterLayout& layout, bool use_dora, bool lora_bias, const std::string& file);

}  // namespace lorakeep::detail
