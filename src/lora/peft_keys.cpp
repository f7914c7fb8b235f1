#include "lora/peft_keys.h"

#include <algorithm>
#include <map>

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

AdapterLayout classify_adapter_keys(const TensorSource& source) {
  AdapterLayout layout;
  std::map<std::string, int> halves;  // layer path -> bit 1: A, bit 2: B, bit 4: magnitude
  for (const std::string& key : source.names()) {
    const PeftKey k = parse_file_key(key, source.path());
    if (k.kind == PeftTensor::kWhole) layout.whole.push_back(k.path);
    else halves[k.path] |= k.kind == PeftTensor::kLoraA ? 1 : k.kind == PeftTensor::kLoraB ? 2 : 4;
  }
  for (auto [path, bits] : halves) {
    if (bits & 4) {
      if ((bits & 3) == 0) {
        throw Error(ErrorCode::kCorruption, "'" + source.path() + "' has '" + file_key({PeftTensor::kMagnitude, path}) +
                                                "' but no LoRA factors for '" + path + "'");
      }
      layout.dora.push_back(path);
      bits &= 3;
    }
    if (bits != 3) {
      const PeftTensor has = bits == 1 ? PeftTensor::kLoraA : PeftTensor::kLoraB;
      const PeftTensor lacks = bits == 1 ? PeftTensor::kLoraB : PeftTensor::kLoraA;
      throw Error(ErrorCode::kCorruption, "'" + source.path() + "' has '" + file_key({has, path}) + "' but not '" +
                                              file_key({lacks, path}) + "'");
    }
    layout.layers.push_back(path);
  }
  return layout;
}

void check_magnitudes(const AdapterLayout& layout, bool use_dora, const std::string& file) {
  if (!use_dora && !layout.dora.empty()) {
    throw Error(ErrorCode::kCorruption, "'" + file + "' holds DoRA magnitudes (" +
                                            file_key({PeftTensor::kMagnitude, layout.dora.front()}) +
                                            ", ...) but its adapter_config.json says use_dora is false");
  }
  if (use_dora && layout.dora.size() != layout.layers.size()) {
    std::vector<std::string> lacking;
    for (const std::string& path : layout.layers) {
      if (std::find(layout.dora.begin(), layout.dora.end(), path) == layout.dora.end()) {
        lacking.push_back(file_key({PeftTensor::kMagnitude, path}));
      }
    }
    throw Error(ErrorCode::kCorruption, "'" + file + "' lacks the DoRA magnitude of " + std::to_string(lacking.size()) +
                                            " layer(s) (" + lacking.front() + (lacking.size() > 1 ? ", ..." : "") +
                                            ") though its adapter_config.json says use_dora is true");
  }
}

}  // namespace lorakeep::detail
