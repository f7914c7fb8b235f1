#include "lora/peft_keys.h"

#include <algorithm>
#include <map>
#include <set>

#include "lorakeep/error.h"
#include "base/file_names.h"
#include "base/text.h"

namespace lorakeep::detail {
namespace {

// The suffix of each factor kind after the module path.
struct FactorSuffix {
  PeftTensor kind;
  const char* suffix;
};
constexpr FactorSuffix kFactorSuffixes[] = {
    {PeftTensor::kLoraA, ".lora_A.weight"},
    {PeftTensor::kLoraB, ".lora_B.weight"},
    {PeftTensor::kMagnitude, ".lora_magnitude_vector"},
    {PeftTensor::kLoraBias, ".lora_B.bias"},
    {PeftTensor::kEmbeddingA, ".lora_embedding_A"},
    {PeftTensor::kEmbeddingB, ".lora_embedding_B"},
};

const char* suffix_of(PeftTensor kind) {
  for (const FactorSuffix& f : kFactorSuffixes) {
    if (f.kind == kind) return f.suffix;
  }
  return "";
}

}  // namespace

std::string model_name(const PeftKey& key) { return key.path + suffix_of(key.kind); }

std::string file_key(const PeftKey& key) { return kPeftPrefix + model_name(key); }

PeftKey parse_file_key(const std::string& key, const std::string& file) {
  const std::string prefix = kPeftPrefix;
  if (key.compare(0, prefix.size(), prefix) != 0) {
    throw Error(ErrorCode::kCorruption, "'" + file + "' has the key '" + key +
                                            "', which is not a PEFT adapter key (they start with '" + prefix + "')");
  }
  const std::string rest = key.substr(prefix.size());
  for (const FactorSuffix& f : kFactorSuffixes) {
    if (ends_with(rest, f.suffix)) return PeftKey{f.kind, rest.substr(0, rest.size() - std::string(f.suffix).size())};
  }
  if (rest.find("lora_") != std::string::npos) {
    throw Error(ErrorCode::kNotSupported,
                "'" + file + "' has the tensor '" + key + "', a kind of LoRA tensor lorakeep does not implement");
  }
  return PeftKey{PeftTensor::kWhole, rest};
}

bool AdapterLayout::embedding(const std::string& path) const {
  return std::find(embeddings.begin(), embeddings.end(), path) != embeddings.end();
}

PeftKey AdapterLayout::factor_a(const std::string& path) const {
  return {embedding(path) ? PeftTensor::kEmbeddingA : PeftTensor::kLoraA, path};
}

PeftKey AdapterLayout::factor_b(const std::string& path) const {
  return {embedding(path) ? PeftTensor::kEmbeddingB : PeftTensor::kLoraB, path};
}

AdapterLayout classify_adapter_keys(const TensorSource& source) {
  AdapterLayout layout;
  std::map<std::string, std::set<PeftTensor>> parts;  // layer path -> the kinds of tensor it has
  for (const std::string& key : source.names()) {
    const PeftKey k = parse_file_key(key, source.path());
    if (k.kind == PeftTensor::kWhole) layout.whole.push_back(k.path);
    else parts[k.path].insert(k.kind);
  }
  for (auto& [path, kinds] : parts) {
    auto has = [&kinds = kinds](PeftTensor kind) { return kinds.count(kind) > 0; };
    const bool linear = has(PeftTensor::kLoraA) || has(PeftTensor::kLoraB);
    const bool embedding = has(PeftTensor::kEmbeddingA) || has(PeftTensor::kEmbeddingB);
    if (linear && embedding) {
      throw Error(ErrorCode::kCorruption, "'" + source.path() + "' has both lora_A/lora_B and lora_embedding_A/B " +
                                              "factors for '" + path + "'");
    }
    for (const PeftTensor extra : {PeftTensor::kMagnitude, PeftTensor::kLoraBias}) {
      if (!has(extra)) continue;
      if (!linear && !embedding) {
        throw Error(ErrorCode::kCorruption, "'" + source.path() + "' has '" + file_key({extra, path}) +
                                                "' but no LoRA factors for '" + path + "'");
      }
      (extra == PeftTensor::kMagnitude ? layout.dora : layout.biased).push_back(path);
    }
    const PeftTensor a = embedding ? PeftTensor::kEmbeddingA : PeftTensor::kLoraA;
    const PeftTensor b = embedding ? PeftTensor::kEmbeddingB : PeftTensor::kLoraB;
    if (has(a) != has(b)) {
      const PeftTensor present = has(a) ? a : b, lacking = has(a) ? b : a;
      throw Error(ErrorCode::kCorruption, "'" + source.path() + "' has '" + file_key({present, path}) + "' but not '" +
                                              file_key({lacking, path}) + "'");
    }
    layout.layers.push_back(path);
    if (embedding) layout.embeddings.push_back(path);
  }
  return layout;
}

void check_optional_tensors(const AdapterLayout& layout, bool use_dora, bool lora_bias, const std::string& file) {
  struct Optional {
    PeftTensor kind;
    const std::vector<std::string>* have;
    bool wanted;
    const char* what;
    const char* field;
  };
  for (const Optional& o : {Optional{PeftTensor::kMagnitude, &layout.dora, use_dora, "DoRA magnitude", "use_dora"},
                            Optional{PeftTensor::kLoraBias, &layout.biased, lora_bias, "lora_B bias", "lora_bias"}}) {
    const std::vector<std::string>& have = *o.have;
    if (!o.wanted && !have.empty()) {
      throw Error(ErrorCode::kCorruption, "'" + file + "' holds the " + o.what + " of " + std::to_string(have.size()) +
                                              " layer(s) (" + file_key({o.kind, have.front()}) +
                                              (have.size() > 1 ? ", ..." : "") + ") but its adapter_config.json says " +
                                              o.field + " is false");
    }
    if (o.wanted && have.size() != layout.layers.size()) {
      std::vector<std::string> lacking;
      for (const std::string& path : layout.layers) {
        if (std::find(have.begin(), have.end(), path) == have.end()) lacking.push_back(file_key({o.kind, path}));
      }
      throw Error(ErrorCode::kCorruption, "'" + file + "' lacks the " + o.what + " of " +
                                              std::to_string(lacking.size()) + " layer(s) (" + lacking.front() +
                                              (lacking.size() > 1 ? ", ..." : "") +
                                              ") though its adapter_config.json says " + o.field + " is true");
    }
  }
}

}  // namespace lorakeep::detail
