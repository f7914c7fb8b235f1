// inject_lora, save_adapter, load_adapter: PEFT's adapter contract.
#include "lorakeep/adapter.h"

#include <set>

#include <ATen/ATen.h>
#include <boost/filesystem.hpp>

#include "lorakeep/error.h"
#include "base/file_names.h"
#include "io/atomic_file.h"
#include "io/checksum.h"
#include "io/read_file.h"
#include "lora/adapter_load.h"
#include "lora/adapter_writer.h"
#include "lora/config_check.h"
#include "lora/injection.h"
#include "lora/peft_keys.h"

namespace lorakeep {

namespace fs = boost::filesystem;

std::vector<std::string> inject_lora(torch::nn::Module& module, const LoraConfig& config) {
  const std::vector<detail::PlannedLayer> planned = detail::plan_injection(module, config);
  if (const auto wrong = detail::layout_mismatches(planned, config); !wrong.empty()) {
    std::string msg = "cannot inject LoRA: the weight layout contradicts fan_in_fan_out";
    for (const std::string& w : wrong) msg += "\n  " + w;
    throw Error(ErrorCode::kInvalidArgument, msg + "\n(hint: set fan_in_fan_out to the layers' layout, as PEFT "
                                                   "corrects it; merges transpose by it) (nothing was armed)");
  }
  return detail::arm(module, config, planned);
}

NamedTensors adapter_tensors(torch::nn::Module& module, const LoraConfig& config) {
  detail::check_config_matches_layers(module, config);
  NamedTensors out;
  for (auto& [name, factor] : detail::live_factors(detail::armed_layers(module))) {
    out.emplace_back(detail::kPeftPrefix + name, factor);
  }
  if (!config.modules_to_save.empty()) {
    std::set<std::string> saved;
    for (const auto& item : module.named_modules("", /*include_self=*/false)) {
      if (!is_module_to_save(config, item.key())) continue;
      for (const auto& p : item.value()->named_parameters(/*recurse=*/true)) {
        const std::string name = item.key() + "." + p.key();
        if (saved.insert(name).second)
          out.emplace_back(detail::file_key({detail::PeftTensor::kWhole, name}), p.value());
      }
    }
  }
  return out;
}

std::uint64_t adapter_digest(torch::nn::Module& module, const LoraConfig& config) {
  detail::Xxh3Stream hash;
  for (const auto& [name, tensor] : adapter_tensors(module, config)) {
    hash.update(name.data(), name.size());
    const at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
    const auto dtype = static_cast<std::int64_t>(t.scalar_type());
    hash.update(&dtype, sizeof dtype);
    for (const std::int64_t d : t.sizes()) hash.update(&d, sizeof d);
    hash.update(t.data_ptr(), t.nbytes());
  }
  return hash.digest();
}

AdapterSaveReport save_adapter(const std::string& dir, torch::nn::Module& module, const LoraConfig& config) {
  const LoraConfig saved = resolve_target_modules(module, config);
  const NamedTensors tensors = adapter_tensors(module, saved);
  boost::system::error_code ec;
  AdapterSaveReport report;
  if (fs::is_directory(dir, ec)) {
    const detail::WrittenAdapter written = detail::write_adapter(dir, tensors, saved, /*direct=*/false);
    report.weights = written.weights;
  } else {
    detail::StagedDirectory staged(dir);
    report.weights = detail::write_adapter(staged.path(), tensors, saved, /*direct=*/true).weights;
    staged.publish(/*replace=*/false);
  }
  report.weights.path = (fs::path(dir) / detail::kAdapterWeightsFile).string();
  report.config_path = (fs::path(dir) / detail::kAdapterConfigFile).string();
  return report;
}

LoraConfig read_adapter_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / detail::kAdapterConfigFile).string();
  return parse_adapter_config(detail::read_small_file(path, 16ull << 20), path);
}

TransferReport load_adapter(const std::string& dir, torch::nn::Module& module, const AdapterLoadOptions& options) {
  LoadOptions transfer;
  transfer.chunk_bytes = options.chunk_bytes;
  LoraConfig config = read_adapter_config(dir);  // refuses other PEFT types before any tensor is read
  return detail::AdapterLoad(dir, std::move(config), open_tensor_source(detail::adapter_weights_path(dir)), module,
                             transfer)
      .apply();
}

int merge_lora(torch::nn::Module& module, bool safe) {
  int n = 0;
  for (auto& [path, layer] : detail::armed_layers(module)) {
    layer->merge(safe);
    ++n;
  }
  return n;
}

int unmerge_lora(torch::nn::Module& module) {
  int n = 0;
  for (auto& [path, layer] : detail::armed_layers(module)) {
    layer->unmerge();
    ++n;
  }
  return n;
}

}  // namespace lorakeep
