#include "lora/peft_keys.h"

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
  std::map<std::string, int> halves;  // layer path -> bit 1: A, bit 2: B
  for (const std::string& key : source.names()) {
    const PeftKey k = parse_file_key(key, source.path());
    if (k.kind == PeftTensor::kWhole) layout.whole.push_back(k.path);
    else halves[k.path] |= k.kind == PeftTensor::kLoraA ? 1 : 2;
  }
  for (const auto& [path, bits] : halves) {
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

}  // namespace lorakeep::detail
